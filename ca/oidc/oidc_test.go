package oidc

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/signer"
)

func TestParseIssuer(t *testing.T) {
	for _, ok := range []string{"https://oidc.example.com", "https://oidc.example.com/prod", "https://127.0.0.1:8443"} {
		if _, err := ParseIssuer(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "http://oidc.example.com", "https://", "https://oidc.example.com/", "https://u@oidc.example.com",
		"https://oidc.example.com?a=b", "https://oidc.example.com#x", "oidc.example.com", "https:oidc"} {
		if _, err := ParseIssuer(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

// TestDocumentsFollowTheKeys signs a JWT-SVID with the issuer, verifies it
// with the key set the documents publish, and checks that a rotation
// shows in the key set and the discovery document, here one from a P-256
// key to an RSA key (a change of --jwt-key-type).
func TestDocumentsFollowTheKeys(t *testing.T) {
	iss, err := ParseIssuer("https://oidc.example.com/prod")
	if err != nil {
		t.Fatal(err)
	}
	newKey := func(id string, k crypto.Signer) (authority.JWTKey, authority.PublicJWTKey) {
		exp := time.Now().Add(time.Hour)
		return authority.JWTKey{ID: id, Signer: k, NotAfter: exp}, authority.PublicJWTKey{ID: id, PublicKey: k.Public(), NotAfter: exp}
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k1, p1 := newKey("k1", ec)
	k2, p2 := newKey("k2", rs)
	bundle := authority.Bundle{JWTKeys: []authority.PublicJWTKey{p1}, Sequence: 1}
	docs, err := Documents(iss, func() authority.Bundle { return bundle })
	if err != nil {
		t.Fatal(err)
	}
	discovery := func() Discovery {
		raw, ctype, err := docs["/prod"+DiscoveryPath]()
		if err != nil || ctype != "application/json" {
			t.Fatal(err, ctype)
		}
		var disc Discovery
		if err := json.Unmarshal(raw, &disc); err != nil {
			t.Fatal(err)
		}
		return disc
	}
	if disc := discovery(); disc.Issuer != iss.String() || disc.JWKSURI != "https://oidc.example.com/prod/keys" {
		t.Fatalf("discovery %+v", disc)
	}
	keySet := func() jose.JSONWebKeySet {
		raw, _, err := docs["/prod"+KeysPath]()
		if err != nil {
			t.Fatal(err)
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(raw, &set); err != nil {
			t.Fatal(err)
		}
		return set
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")
	for _, step := range []struct {
		signWith authority.JWTKey
		bundle   []authority.PublicJWTKey
		verifies bool
		algs     []string
	}{
		{k1, []authority.PublicJWTKey{p1}, true, []string{"ES256"}},
		{k2, []authority.PublicJWTKey{p1}, false, []string{"ES256"}},             // a key the issuer never published
		{k1, []authority.PublicJWTKey{p1, p2}, true, []string{"ES256", "RS256"}}, // k2 prepared, k1 still signs
		{k2, []authority.PublicJWTKey{p1, p2}, true, []string{"ES256", "RS256"}}, // k2 active, k1 kept until its last token expires
		{k1, []authority.PublicJWTKey{p2}, false, []string{"RS256"}},             // k1 retired
	} {
		bundle = authority.Bundle{JWTKeys: step.bundle, Sequence: bundle.Sequence + 1}
		tok, _, err := signer.SignJWTSVID(step.signWith, signer.JWTParams{SPIFFEID: id, Audience: []string{"sts.amazonaws.com"}, TTL: time.Minute, Now: time.Now(), Issuer: iss.String()})
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256, jose.RS256})
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"k1": "ES256", "k2": "RS256"}[step.signWith.ID]; parsed.Headers[0].Algorithm != want {
			t.Fatalf("signed by %s: alg %s, want %s", step.signWith.ID, parsed.Headers[0].Algorithm, want)
		}
		set := keySet()
		for _, k := range set.Keys {
			if want := map[string]string{"k1": "ES256", "k2": "RS256"}[k.KeyID]; k.Algorithm != want {
				t.Fatalf("key set: %s with alg %s, want %s", k.KeyID, k.Algorithm, want)
			}
		}
		if got := discovery().SigningAlgs; !slices.Equal(got, step.algs) {
			t.Fatalf("bundle of %d keys: discovery algs %v, want %v", len(step.bundle), got, step.algs)
		}
		var claims jwt.Claims
		err = parsed.Claims(keySet(), &claims)
		if step.verifies != (err == nil) {
			t.Fatalf("signed by %s, key set of %d keys: verify error %v", step.signWith.ID, len(step.bundle), err)
		}
		if err == nil {
			if err := claims.Validate(jwt.Expected{Issuer: iss.String(), Subject: id.String(), AnyAudience: []string{"sts.amazonaws.com"}}); err != nil {
				t.Fatal(err)
			}
		}
	}
}
