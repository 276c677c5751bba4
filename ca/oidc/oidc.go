// Package oidc publishes the trust domain's JWT-SVID keys as an OpenID
// Connect issuer: the discovery document at
// <issuer>/.well-known/openid-configuration and the key set it names at
// <issuer>/keys. Relying parties that accept OIDC identity tokens (AWS
// STS, GCP and Azure workload identity federation, Vault's JWT auth, the
// Kubernetes API server's JWT authenticator) then accept JWT-SVIDs whose
// iss is the issuer.
package oidc

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/internal/publicweb"
)

// Paths under the issuer.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	KeysPath      = "/keys"
)

// MaxAge is how long relying parties may cache the documents. A JWT key
// is published well before it signs anything, so this only delays how
// soon a revoked key stops being trusted elsewhere.
const MaxAge = 60 * time.Second

// ParseIssuer checks an issuer URL as relying parties require it: https,
// a host, no query, fragment or user, and no trailing slash (iss is
// compared as a string).
func ParseIssuer(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%q is not a URL", s)
	case u.Scheme != "https":
		return nil, fmt.Errorf("%q: an issuer is an https URL", s)
	case u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return nil, fmt.Errorf("%q: an issuer is https://HOST[/PATH], with nothing else", s)
	case strings.HasSuffix(s, "/"):
		return nil, fmt.Errorf("%q: drop the trailing slash (relying parties compare iss as a string)", s)
	}
	return u, nil
}

// Discovery is the OpenID Connect discovery document: what relying
// parties read, nothing more.
type Discovery struct {
	Issuer                string   `json:"issuer"`
	JWKSURI               string   `json:"jwks_uri"`
	AuthorizationEndpoint string   `json:"authorization_endpoint"`
	ResponseTypes         []string `json:"response_types_supported"`
	SubjectTypes          []string `json:"subject_types_supported"`
	SigningAlgs           []string `json:"id_token_signing_alg_values_supported"`
	Claims                []string `json:"claims_supported"`
}

// Documents returns the issuer's two documents for publicweb.Handler,
// keyed by path. bundle returns the trust bundle now; the key set holds
// its JWT keys (prepared, active, and old until their last token
// expires), and is re-encoded only when the bundle changes.
func Documents(issuer *url.URL, bundle func() authority.Bundle) (map[string]publicweb.Document, error) {
	iss := issuer.String()
	get := func() (authority.Bundle, uint64) { b := bundle(); return b, b.Sequence }
	// The algorithms are those of the keys in the bundle, which change
	// with them (a change of --jwt-key-type).
	disc := publicweb.Versioned(get, func(b authority.Bundle) ([]byte, error) {
		algs, err := signingAlgs(b.JWTKeys)
		if err != nil {
			return nil, err
		}
		return json.Marshal(Discovery{
			Issuer: iss, JWKSURI: iss + KeysPath,
			// No authorization endpoint: tokens come from the Workload
			// API. The field is required by the specification, so it is
			// empty.
			AuthorizationEndpoint: "",
			ResponseTypes:         []string{"id_token"},
			SubjectTypes:          []string{"public"},
			SigningAlgs:           algs,
			Claims:                []string{"sub", "aud", "exp", "iat", "iss"},
		})
	}, "application/json")
	keys := publicweb.Versioned(get, func(b authority.Bundle) ([]byte, error) { return JWKS(b.JWTKeys) }, "application/json")
	prefix := strings.TrimSuffix(issuer.EscapedPath(), "/")
	return map[string]publicweb.Document{
		prefix + DiscoveryPath: disc,
		prefix + KeysPath:      keys,
	}, nil
}

// signingAlgs are the algorithms of keys, sorted, ES256 if there are none
// (a bundle always has a JWT key once the CA has started).
func signingAlgs(keys []authority.PublicJWTKey) ([]string, error) {
	var algs []string
	for _, k := range keys {
		alg, err := authority.JWTAlgorithm(k.PublicKey)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(algs, alg) {
			algs = append(algs, alg)
		}
	}
	if len(algs) == 0 {
		return []string{string(jose.ES256)}, nil
	}
	slices.Sort(algs)
	return algs, nil
}

// JWKS encodes keys as a JSON Web Key Set of signing keys.
func JWKS(keys []authority.PublicJWTKey) ([]byte, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, k := range keys {
		alg, err := authority.JWTAlgorithm(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("oidc: JWT key %s: %w", k.ID, err)
		}
		jwk := jose.JSONWebKey{Key: k.PublicKey, KeyID: k.ID, Use: "sig", Algorithm: alg}
		if !jwk.Valid() {
			return nil, errors.New("oidc: a JWT key is not a valid public key")
		}
		set.Keys = append(set.Keys, jwk)
	}
	return json.Marshal(set)
}
