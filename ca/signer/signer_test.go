package signer_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.step.sm/crypto/jose"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/ca/store"
)

var (
	td = spiffeid.RequireTrustDomainFromString("example.org")
	id = spiffeid.RequireFromPath(td, "/ns/payments/sa/api")
)

func newAuthority(t testing.TB, now func() time.Time) *authority.Authority {
	t.Helper()
	return newAuthorityWith(t, authority.Config{Now: now})
}

// newAuthorityWith is an authority of td on a new store, with cfg's other
// settings.
func newAuthorityWith(t testing.TB, cfg authority.Config) *authority.Authority {
	t.Helper()
	s, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "signet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cfg.TrustDomain, cfg.Store = td, s
	a, err := authority.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func csrDER(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored", Organization: []string{"Evil"}}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignX509SVIDFollowsSpec(t *testing.T) {
	a := newAuthority(t, nil)
	c, err := signer.ParseCSR(csrDER(t, ecKey(t), nil))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	chain, err := signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: c, SPIFFEID: id, DNSNames: []string{"api.payments.svc"}, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || !chain[1].Equal(a.X509CA().Certificate) {
		t.Fatalf("chain has %d certificates; want the SVID and its intermediate", len(chain))
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("URIs = %v; want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "api.payments.svc" {
		t.Errorf("DNSNames = %v", leaf.DNSNames)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("SVID is a CA or lacks basic constraints")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v; want digitalSignature only", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 {
		t.Errorf("ExtKeyUsage = %v; want serverAuth, clientAuth", leaf.ExtKeyUsage)
	}
	if strings.Contains(leaf.Subject.String(), "Evil") {
		t.Errorf("subject %q copied from the CSR", leaf.Subject)
	}
	if got := leaf.NotAfter.Sub(now); got > time.Hour || got < time.Hour-time.Second {
		t.Errorf("lifetime %s; want 1h", got)
	}

	b, _ := a.Bundle()
	gotID, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, b.X509Roots))
	if err != nil || gotID != id {
		t.Fatalf("x509svid.Verify = %v, %v", gotID, err)
	}
	opensslVerify(t, b.X509Roots[0], chain)
}

// opensslVerify checks chain with the openssl command, a verifier that
// shares no code with Go's.
func opensslVerify(t *testing.T, root *x509.Certificate, chain []*x509.Certificate) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl not installed (make deps installs it)")
	}
	dir := t.TempDir()
	write := func(name string, certs ...*x509.Certificate) string {
		var buf []byte
		for _, c := range certs {
			buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	out, err := exec.Command("openssl", "verify", "-x509_strict", "-purpose", "sslclient",
		"-CAfile", write("root.pem", root), "-untrusted", write("inter.pem", chain[1:]...), write("leaf.pem", chain[0])).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

func TestSignX509SVIDCapsTTLByCA(t *testing.T) {
	a := newAuthority(t, nil)
	c, _ := signer.ParseCSR(csrDER(t, ecKey(t), nil))
	ca := a.X509CA()
	now := ca.Certificate.NotAfter.Add(-10 * time.Minute)
	chain, err := signer.SignX509SVID(ca, signer.X509Params{CSR: c, SPIFFEID: id, TTL: time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if !chain[0].NotAfter.Equal(ca.Certificate.NotAfter) {
		t.Errorf("NotAfter = %s; want capped at the CA's %s", chain[0].NotAfter, ca.Certificate.NotAfter)
	}
}

func TestKeyTypes(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	for _, tt := range []struct {
		name    string
		key     crypto.Signer
		wantErr string
	}{
		{"P-256", ecKey(t), ""},
		{"P-384", p384, ""},
		{"Ed25519", ed, ""},
		{"RSA-2048", rsa2048, ""},
		{"RSA-1024", rsa1024, "at least 2048"},
		{"P-224", p224, "P-224"},
		{"P-521", p521, "P-521"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := signer.ParseCSR(csrDER(t, tt.key, nil))
			if tt.wantErr == "" && err != nil {
				t.Fatalf("ParseCSR: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("ParseCSR error = %v; want %q", err, tt.wantErr)
			}
		})
	}
}

func TestCSRRefusals(t *testing.T) {
	a := newAuthority(t, nil)
	key := ecKey(t)
	bcExt := func(isCA bool) pkix.Extension {
		v, _ := asn1.Marshal(struct {
			IsCA bool `asn1:"optional"`
		}{isCA})
		return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v}
	}
	other := spiffeid.RequireFromPath(td, "/other")
	good := csrDER(t, key, nil)
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-5] ^= 0xff
	for _, tt := range []struct {
		name    string
		der     []byte
		wantErr string
	}{
		{"empty", nil, "empty"},
		{"garbage", []byte("not a csr"), "malformed"},
		{"bad signature", badSig, "bad signature"},
		{"CA bit", csrDER(t, key, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{bcExt(true)}}), "CA"},
		{"other SPIFFE ID", csrDER(t, key, &x509.CertificateRequest{URIs: []*url.URL{other.URL()}}), "URI SANs"},
		{"extra URI SAN", csrDER(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URL(), other.URL()}}), "URI SANs"},
		{"extra DNS SAN", csrDER(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, DNSNames: []string{"evil.com"}}), "DNS SANs"},
		{"DNS SAN only", csrDER(t, key, &x509.CertificateRequest{DNSNames: []string{"evil.com"}}), "URI SANs"},
		{"email SAN", csrDER(t, key, &x509.CertificateRequest{EmailAddresses: []string{"a@b.c"}}), "email"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := signer.ParseCSR(tt.der)
			if err == nil {
				_, err = signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: c, SPIFFEID: id, TTL: time.Hour, Now: time.Now()})
			}
			var ce *signer.CSRError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v; want a CSRError containing %q", err, tt.wantErr)
			}
		})
	}
	// A CA=false basic constraints extension and matching SANs are fine.
	for name, der := range map[string][]byte{
		"CA=false":      csrDER(t, key, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{bcExt(false)}}),
		"matching SANs": csrDER(t, key, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}, DNSNames: []string{"b", "a"}}),
	} {
		c, err := signer.ParseCSR(der)
		if err == nil {
			_, err = signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: c, SPIFFEID: id, DNSNames: []string{"a", "b"}, TTL: time.Hour, Now: time.Now()})
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestSignJWTSVID signs with each JWT key type and validates with
// go-spiffe, as a workload would.
func TestSignJWTSVID(t *testing.T) {
	for keyType, alg := range map[string]string{"ec-p256": "ES256", "ec-p384": "ES384", "rsa-2048": "RS256"} {
		t.Run(keyType, func(t *testing.T) {
			a := newAuthorityWith(t, authority.Config{JWTKeyType: keyType})
			tok, exp, err := signer.SignJWTSVID(a.JWTKey(), signer.JWTParams{SPIFFEID: id, Audience: []string{"billing", "audit"}, TTL: 5 * time.Minute, Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := a.Bundle()
			jb := jwtbundle.New(td)
			for _, k := range b.JWTKeys {
				jb.AddJWTAuthority(k.ID, k.PublicKey)
			}
			svid, err := jwtsvid.ParseAndValidate(tok, jb, []string{"billing"})
			if err != nil {
				t.Fatal(err)
			}
			if svid.ID != id || !svid.Expiry.Equal(exp) || len(svid.Audience) != 2 {
				t.Errorf("JWT-SVID = %v exp %s aud %v", svid.ID, svid.Expiry, svid.Audience)
			}
			jws, err := jose.ParseSigned(tok)
			if err != nil {
				t.Fatal(err)
			}
			if got := jws.Headers[0].Algorithm; got != alg {
				t.Errorf("alg %s, want %s", got, alg)
			}
			if _, err := jwtsvid.ParseAndValidate(tok, jb, []string{"other"}); err == nil {
				t.Error("JWT-SVID validated for an audience it lacks")
			}
			if _, _, err := signer.SignJWTSVID(a.JWTKey(), signer.JWTParams{SPIFFEID: id, TTL: time.Minute, Now: time.Now()}); err == nil {
				t.Error("JWT-SVID signed without an audience")
			}
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	f.Add(der)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Add([]byte{})
	a := newAuthority(f, nil)
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := signer.ParseCSR(der)
		if err != nil {
			var ce *signer.CSRError
			if !errors.As(err, &ce) {
				t.Fatalf("ParseCSR error %v is not a CSRError", err)
			}
			return
		}
		chain, err := signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: c, SPIFFEID: id, TTL: time.Hour, Now: time.Now()})
		if err != nil {
			return
		}
		if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id.String() || chain[0].IsCA {
			t.Fatalf("signed a non-conforming SVID from %x", der)
		}
	})
}
