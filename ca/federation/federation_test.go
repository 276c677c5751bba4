package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/publicweb"
	"github.com/signet-id/signet/internal/signetid"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var partnerTD = spiffeid.RequireTrustDomainFromString("partner.test")

// partner is a real authority of partner.test serving its bundle at a
// bundle endpoint, https_spiffe with an SVID of its own.
type partner struct {
	auth *authority.Authority
	url  string
}

func startPartner(t testing.TB) *partner {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "signet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	auth, err := authority.New(context.Background(), authority.Config{TrustDomain: partnerTD, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	cert := svidCert(t, auth, signetid.CA(partnerTD))
	docs := EndpointDocuments(func() authority.Bundle { b, _ := auth.Bundle(); return b }, 7*time.Second)
	srv, err := publicweb.Listen("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}}, publicweb.Handler(docs, 0))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(srv.Close)
	return &partner{auth: auth, url: "https://" + srv.Addr() + "/"}
}

// svidCert is an SVID for id signed by auth's intermediate.
func svidCert(t testing.TB, auth *authority.Authority, id spiffeid.ID) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := auth.X509CA()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id.URL()}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate, key.Public(), ca.Signer)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Certificate.Raw}, PrivateKey: key}
}

func (p *partner) bundle(t *testing.T) *typesv1.Bundle {
	b, _ := p.auth.Bundle()
	pb := &typesv1.Bundle{TrustDomain: partnerTD.Name()}
	for _, r := range b.X509Roots {
		pb.X509Authorities = append(pb.X509Authorities, r.Raw)
	}
	return pb
}

func TestFetchHTTPSSPIFFE(t *testing.T) {
	p := startPartner(t)
	rel := &typesv1.FederatedTrustDomain{TrustDomain: "partner.test", BundleEndpointUrl: p.url, Profile: ProfileSPIFFE,
		EndpointSpiffeId: "spiffe://partner.test/signet/ca", Bundle: p.bundle(t)}
	if err := Check(spiffeid.RequireTrustDomainFromString("example.org"), rel); err != nil {
		t.Fatal(err)
	}
	b, err := Fetch(context.Background(), rel)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := b.RefreshHint(); h != 7*time.Second || len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) == 0 {
		t.Fatalf("fetched bundle: hint %v, %d roots, %d JWT keys", h, len(b.X509Authorities()), len(b.JWTAuthorities()))
	}

	// The endpoint must present the SVID named, under the bundle given.
	for name, bad := range map[string]*typesv1.FederatedTrustDomain{
		"another endpoint ID": {TrustDomain: "partner.test", BundleEndpointUrl: p.url, Profile: ProfileSPIFFE, EndpointSpiffeId: "spiffe://partner.test/spire/server", Bundle: p.bundle(t)},
		"another bundle":      {TrustDomain: "partner.test", BundleEndpointUrl: p.url, Profile: ProfileSPIFFE, EndpointSpiffeId: "spiffe://partner.test/signet/ca", Bundle: startPartner(t).bundle(t)},
		"web PKI":             {TrustDomain: "partner.test", BundleEndpointUrl: p.url, Profile: ProfileWeb},
		"another trust domain": {TrustDomain: "other.test", BundleEndpointUrl: p.url, Profile: ProfileSPIFFE, EndpointSpiffeId: "spiffe://partner.test/signet/ca",
			Bundle: &typesv1.Bundle{TrustDomain: "other.test", X509Authorities: p.bundle(t).X509Authorities}},
	} {
		if _, err := Fetch(context.Background(), bad); err == nil {
			t.Errorf("%s: fetched", name)
		}
	}
}

// TestFetchLimits: an endpoint that answers too much, an error, a bundle
// without roots or something else is refused, and a failed fetch keeps
// the bundle the fetcher had.
func TestFetchLimits(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	var body string
	status := http.StatusOK
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status); w.Write([]byte(body)) })
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	rel := &typesv1.FederatedTrustDomain{TrustDomain: "partner.test", BundleEndpointUrl: "https://" + lis.Addr().String() + "/", Profile: ProfileWeb, EndpointCa: caPEM}
	if err := Check(spiffeid.RequireTrustDomainFromString("example.org"), rel); err != nil {
		t.Fatal(err)
	}
	p := startPartner(t)
	goodDoc, _, err := EndpointDocuments(func() authority.Bundle { b, _ := p.auth.Bundle(); return b }, time.Minute)[EndpointPath]()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		status int
		body   string
		ok     bool
	}{
		{"the bundle", 200, string(goodDoc), true},
		{"an error", 500, string(goodDoc), false},
		{"too large", 200, string(goodDoc) + strings.Repeat(" ", MaxBundleBytes), false},
		{"no root", 200, `{"keys": []}`, false},
		{"not a bundle", 200, "<html>", false},
	} {
		status, body = c.status, c.body
		_, err := Fetch(context.Background(), rel)
		if (err == nil) != c.ok {
			t.Errorf("%s: fetch error %v", c.name, err)
		}
	}

	// The fetcher stores the bundle, then keeps it through failures and
	// says why they failed.
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "signet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	auditLog, err := audit.Open(filepath.Join(t.TempDir(), "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer auditLog.Close()
	f := NewFetcher(st, hclog.NewNullLogger(), auditLog)
	if _, err := f.Put(context.Background(), rel); err != nil {
		t.Fatal(err)
	}
	status, body = 200, string(goodDoc)
	f.round(context.Background())
	bundles, bkey := f.Bundles()
	if len(bundles) != 1 || len(bundles[0].GetX509Authorities()) != 1 || bkey == "" {
		t.Fatalf("after a fetch: %v", bundles)
	}
	status = 503
	all, _ := st.ListFederations(context.Background())
	all[0].NextRefreshAt = 1 // due
	st.PutFederation(context.Background(), all[0])
	f.round(context.Background())
	all, _ = st.ListFederations(context.Background())
	if got, _ := f.Bundles(); len(got) != 1 || !strings.Contains(all[0].GetLastError(), "503") || all[0].GetBundle() == nil {
		t.Fatalf("after a failed fetch: bundles %v, stored %v", got, all[0])
	}
	if time.Until(time.Unix(all[0].GetNextRefreshAt(), 0)) > 11*time.Second {
		t.Errorf("retry in %s, want 10 s after the first failure", time.Until(time.Unix(all[0].GetNextRefreshAt(), 0)))
	}
}

func TestCheck(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("example.org")
	for name, f := range map[string]*typesv1.FederatedTrustDomain{
		"own trust domain":        {TrustDomain: "example.org", BundleEndpointUrl: "https://x"},
		"http":                    {TrustDomain: "p.test", BundleEndpointUrl: "http://x"},
		"no URL":                  {TrustDomain: "p.test"},
		"spiffe without bundle":   {TrustDomain: "p.test", BundleEndpointUrl: "https://x", Profile: ProfileSPIFFE, EndpointSpiffeId: "spiffe://p.test/s"},
		"spiffe ID elsewhere":     {TrustDomain: "p.test", BundleEndpointUrl: "https://x", Profile: ProfileSPIFFE, EndpointSpiffeId: "spiffe://q.test/s", Bundle: &typesv1.Bundle{}},
		"web with endpoint ID":    {TrustDomain: "p.test", BundleEndpointUrl: "https://x", EndpointSpiffeId: "spiffe://p.test/s"},
		"unknown profile":         {TrustDomain: "p.test", BundleEndpointUrl: "https://x", Profile: "ftp"},
		"bad CA":                  {TrustDomain: "p.test", BundleEndpointUrl: "https://x", EndpointCa: []byte("nope")},
		"bundle of another":       {TrustDomain: "p.test", BundleEndpointUrl: "https://x", Bundle: &typesv1.Bundle{TrustDomain: "q.test"}},
		"bundle without root":     {TrustDomain: "p.test", BundleEndpointUrl: "https://x", Bundle: &typesv1.Bundle{TrustDomain: "p.test"}},
		"not a trust domain name": {TrustDomain: "P T", BundleEndpointUrl: "https://x"},
	} {
		if err := Check(own, f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseBundle(f *testing.F) {
	p := startPartner(f)
	doc, _, _ := EndpointDocuments(func() authority.Bundle { b, _ := p.auth.Bundle(); return b }, time.Minute)[EndpointPath]()
	f.Add(doc)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"EC"}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := ParseBundle("partner.test", raw)
		if err != nil {
			return
		}
		// What parses converts back, and is of the trust domain asked.
		if _, err := FromProto(b); err != nil || b.GetTrustDomain() != "partner.test" {
			t.Fatalf("parsed %v, converts back: %v", b, err)
		}
	})
}
