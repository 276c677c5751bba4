// Package federation is SPIFFE federation for the CA: it serves this trust
// domain's bundle at a SPIFFE bundle endpoint (Endpoint), and fetches the
// bundles of the trust domains it federates with from theirs (Fetcher),
// following each bundle's refresh hint. The fetched bundles go to agents,
// which serve them to the workloads whose entries federate with them.
package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Bundle endpoint profiles (SPIFFE Trust Domain and Bundle, section 5).
const (
	ProfileWeb    = "https_web"
	ProfileSPIFFE = "https_spiffe"
)

// Limits of fetching.
const (
	// DefaultRefresh is how often a bundle without a refresh hint is
	// fetched.
	DefaultRefresh = 5 * time.Minute
	// MinRefresh and MaxRefresh bound a refresh hint: an endpoint cannot
	// make the CA fetch in a tight loop, nor so rarely that a rotation on
	// its side goes unseen for long.
	MinRefresh = 5 * time.Second
	MaxRefresh = time.Hour
	// MaxBundleBytes bounds a fetched bundle.
	MaxBundleBytes = 1 << 20
	// FetchTimeout bounds one fetch.
	FetchTimeout = 30 * time.Second
)

// Check validates a federation relationship an operator gives for trust
// domain own, and fills in the profile's default (https_web).
func Check(own spiffeid.TrustDomain, f *typesv1.FederatedTrustDomain) error {
	td, err := spiffeid.TrustDomainFromString(f.GetTrustDomain())
	if err != nil {
		return fmt.Errorf("trust_domain: %q: %v", f.GetTrustDomain(), err)
	}
	if td == own {
		return fmt.Errorf("trust_domain: %q is this trust domain", td.Name())
	}
	f.TrustDomain = td.Name()
	u, err := url.Parse(f.GetBundleEndpointUrl())
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("bundle_endpoint_url: %q: want an https URL", f.GetBundleEndpointUrl())
	}
	if f.GetProfile() == "" {
		f.Profile = ProfileWeb
	}
	switch f.GetProfile() {
	case ProfileWeb:
		if f.GetEndpointSpiffeId() != "" {
			return errors.New("endpoint_spiffe_id: only with profile https_spiffe")
		}
		if len(f.GetEndpointCa()) > 0 {
			if !x509.NewCertPool().AppendCertsFromPEM(f.GetEndpointCa()) {
				return errors.New("endpoint_ca: no PEM certificate")
			}
		}
	case ProfileSPIFFE:
		id, err := spiffeid.FromString(f.GetEndpointSpiffeId())
		if err != nil {
			return fmt.Errorf("endpoint_spiffe_id: %q: %v", f.GetEndpointSpiffeId(), err)
		}
		if id.TrustDomain() != td {
			return fmt.Errorf("endpoint_spiffe_id: %s is not in trust domain %s (its SVID is verified with that trust domain's bundle)", id, td.Name())
		}
		if len(f.GetEndpointCa()) > 0 {
			return errors.New("endpoint_ca: only with profile https_web")
		}
		// The first fetch is authenticated with a bundle the operator got
		// out of band; after that, with the one fetched last.
		if f.GetBundle() == nil {
			return errors.New("bundle: https_spiffe needs the trust domain's bundle to authenticate the first fetch")
		}
	default:
		return fmt.Errorf("profile: %q: want https_web or https_spiffe", f.GetProfile())
	}
	if f.GetBundle() != nil {
		if f.Bundle.TrustDomain == "" {
			f.Bundle.TrustDomain = td.Name()
		}
		b, err := FromProto(f.GetBundle())
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		if b.TrustDomain() != td {
			return fmt.Errorf("bundle: of trust domain %s, not %s", b.TrustDomain().Name(), td.Name())
		}
		if len(b.X509Authorities()) == 0 {
			return errors.New("bundle: no X.509 authority")
		}
	}
	return nil
}

// ToProto converts a SPIFFE bundle.
func ToProto(b *spiffebundle.Bundle) (*typesv1.Bundle, error) {
	pb := &typesv1.Bundle{TrustDomain: b.TrustDomain().Name()}
	if h, ok := b.RefreshHint(); ok {
		pb.RefreshHintSeconds = int64(h / time.Second)
	}
	if s, ok := b.SequenceNumber(); ok {
		pb.Sequence = s
	}
	for _, c := range b.X509Authorities() {
		pb.X509Authorities = append(pb.X509Authorities, c.Raw)
	}
	for id, k := range b.JWTAuthorities() {
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("JWT authority %s: %w", id, err)
		}
		pb.JwtAuthorities = append(pb.JwtAuthorities, &typesv1.JWTKey{KeyId: id, PublicKey: der})
	}
	sortKeys(pb.JwtAuthorities)
	return pb, nil
}

// FromProto converts a bundle to a SPIFFE bundle.
func FromProto(pb *typesv1.Bundle) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(pb.GetTrustDomain())
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %v", pb.GetTrustDomain(), err)
	}
	b := spiffebundle.New(td)
	for i, der := range pb.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("X.509 authority %d: %v", i, err)
		}
		b.AddX509Authority(c)
	}
	for _, k := range pb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q: %v", k.GetKeyId(), err)
		}
		if err := b.AddJWTAuthority(k.GetKeyId(), pub); err != nil {
			return nil, fmt.Errorf("JWT authority %q: %v", k.GetKeyId(), err)
		}
	}
	if pb.GetRefreshHintSeconds() > 0 {
		b.SetRefreshHint(time.Duration(pb.GetRefreshHintSeconds()) * time.Second)
	}
	if pb.GetSequence() > 0 {
		b.SetSequenceNumber(pb.GetSequence())
	}
	return b, nil
}

// Fetch gets f's bundle from its endpoint, authenticated by its profile,
// with a timeout and a size limit.
func Fetch(ctx context.Context, f *typesv1.FederatedTrustDomain) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(f.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	var tlsCfg *tls.Config
	switch f.GetProfile() {
	case ProfileSPIFFE:
		id, err := spiffeid.FromString(f.GetEndpointSpiffeId())
		if err != nil {
			return nil, err
		}
		cur, err := FromProto(f.GetBundle())
		if err != nil {
			return nil, fmt.Errorf("the bundle that authenticates the endpoint: %w", err)
		}
		tlsCfg = tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(td, cur.X509Authorities()), tlsconfig.AuthorizeID(id))
	default:
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if len(f.GetEndpointCa()) > 0 {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(f.GetEndpointCa())
			tlsCfg.RootCAs = pool
		}
	}
	client := &http.Client{
		Timeout: FetchTimeout,
		Transport: &http.Transport{TLSClientConfig: tlsCfg, TLSHandshakeTimeout: 10 * time.Second,
			ResponseHeaderTimeout: FetchTimeout, DisableKeepAlives: true, Proxy: http.ProxyFromEnvironment},
		// A bundle endpoint answers where it is asked.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.GetBundleEndpointUrl(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bundle endpoint answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read the bundle: %w", err)
	}
	if len(body) > MaxBundleBytes {
		return nil, fmt.Errorf("the bundle is larger than %d bytes", MaxBundleBytes)
	}
	b, err := spiffebundle.Parse(td, body)
	if err != nil {
		return nil, err
	}
	if len(b.X509Authorities()) == 0 {
		// Kept from replacing a good bundle: nothing would verify.
		return nil, errors.New("the bundle has no X.509 authority")
	}
	return b, nil
}

// ParseBundle reads a trust domain's bundle as an operator got it: the
// SPIFFE bundle format (JSON, as `spire-server bundle show -format spiffe`
// and `signet bundle show --format spiffe` print it), or PEM root
// certificates.
func ParseBundle(tdName string, raw []byte) (*typesv1.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		b, err := spiffebundle.Parse(td, t)
		if err != nil {
			return nil, err
		}
		return ToProto(b)
	}
	pb := &typesv1.Bundle{TrustDomain: td.Name()}
	for rest := raw; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return nil, err
		}
		pb.X509Authorities = append(pb.X509Authorities, blk.Bytes)
	}
	if len(pb.X509Authorities) == 0 {
		return nil, errors.New("neither a SPIFFE bundle nor PEM certificates")
	}
	return pb, nil
}

// RefreshAfter is when to fetch a bundle again: its refresh hint, within
// MinRefresh and MaxRefresh, or DefaultRefresh.
func RefreshAfter(b *spiffebundle.Bundle) time.Duration {
	h, ok := b.RefreshHint()
	if !ok || h <= 0 {
		return DefaultRefresh
	}
	return min(max(h, MinRefresh), MaxRefresh)
}
