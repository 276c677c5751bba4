package authority_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/clock"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func openStore(t *testing.T, dir string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), filepath.Join(dir, "signet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func csr(t testing.TB) *x509.CertificateRequest {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := signer.ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func x509Bundle(b authority.Bundle) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(b.TrustDomain, b.X509Roots)
}

func TestNewPersistsRoot(t *testing.T) {
	dir := t.TempDir()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	s := openStore(t, dir)
	a, err := authority.New(context.Background(), authority.Config{TrustDomain: td, Store: s, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := a.Bundle()
	if len(b1.X509Roots) != 1 || len(b1.JWTKeys) != 1 {
		t.Fatalf("bundle has %d roots, %d JWT keys; want 1 and 1", len(b1.X509Roots), len(b1.JWTKeys))
	}
	root := b1.X509Roots[0]
	if len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("root URIs = %v; want [spiffe://example.org]", root.URIs)
	}
	if got := root.NotAfter.Sub(root.NotBefore); got < 365*24*time.Hour {
		t.Errorf("root lifetime = %s; want a year", got)
	}
	inter := a.X509CA().Certificate
	if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://example.org" || !inter.IsCA {
		t.Errorf("intermediate URIs = %v, IsCA = %v", inter.URIs, inter.IsCA)
	}

	// A second authority on the same store (a restart) keeps the root.
	a2, err := authority.New(context.Background(), authority.Config{TrustDomain: td, Store: s, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := a2.Bundle()
	if len(b2.X509Roots) != 1 || !b2.X509Roots[0].Equal(root) {
		t.Fatal("root changed across restart")
	}
	if !a2.X509CA().Certificate.Equal(inter) {
		t.Fatal("intermediate changed across restart")
	}
	if b2.Sequence != b1.Sequence {
		t.Errorf("bundle sequence %d after restart; want %d", b2.Sequence, b1.Sequence)
	}

	// Another trust domain refuses the data.
	if _, err := authority.New(context.Background(), authority.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("other.org"), Store: s, Now: clk.Now}); err == nil {
		t.Fatal("New with another trust domain on the same store succeeded")
	}
}

func TestIntermediateRotatesAtHalfLifeWithoutBundleChange(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	a, err := authority.New(context.Background(), authority.Config{TrustDomain: td, Store: openStore(t, t.TempDir()), Now: clk.Now, JWTKeyTTL: 7 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b0, changed := a.Bundle()
	first := a.X509CA().Certificate
	clk.Add(11 * time.Hour)
	if _, err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !a.X509CA().Certificate.Equal(first) {
		t.Fatal("intermediate replaced before half life")
	}
	clk.Add(2 * time.Hour)
	bundleChanged, err := a.Rotate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	second := a.X509CA().Certificate
	if second.Equal(first) {
		t.Fatal("intermediate not replaced after half life")
	}
	if bundleChanged {
		t.Error("Rotate reported a bundle change for an intermediate rotation")
	}
	select {
	case <-changed:
		t.Error("bundle change channel closed by an intermediate rotation")
	default:
	}
	b1, _ := a.Bundle()
	if b1.Sequence != b0.Sequence || len(b1.X509Roots) != 1 || !b1.X509Roots[0].Equal(b0.X509Roots[0]) {
		t.Error("bundle changed on intermediate rotation")
	}
	if err := second.CheckSignatureFrom(b0.X509Roots[0]); err != nil {
		t.Errorf("new intermediate does not chain to the root: %v", err)
	}
}

// TestRootAndJWTRotationNeverBreaksVerification walks the clock through
// three root lifetimes. At every step, each SVID issued so far that has not
// expired must verify against the current bundle and against the bundle a
// slow peer fetched one step earlier.
func TestRootAndJWTRotationNeverBreaksVerification(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	const (
		rootTTL  = 60 * time.Hour
		interTTL = 10 * time.Hour
		svidTTL  = time.Hour
		step     = 20 * time.Minute
	)
	a, err := authority.New(context.Background(), authority.Config{
		TrustDomain: td, Store: openStore(t, t.TempDir()), Now: clk.Now,
		RootTTL: rootTTL, IntermediateTTL: interTTL, JWTKeyTTL: 6 * time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/w")
	type issued struct {
		chain []*x509.Certificate
		jwt   string
		exp   time.Time
	}
	var svids []issued
	prev, _ := a.Bundle()
	roots := map[string]bool{}
	jwtKeys := map[string]bool{}
	for end := clk.Now().Add(3 * rootTTL); clk.Now().Before(end); {
		clk.Add(step)
		if _, err := a.Rotate(context.Background()); err != nil {
			t.Fatal(err)
		}
		cur, _ := a.Bundle()
		if len(cur.X509Roots) == 0 || len(cur.JWTKeys) == 0 {
			t.Fatalf("%s: empty bundle", clk.Now())
		}
		for _, r := range cur.X509Roots {
			roots[string(r.Raw)] = true
		}
		for _, k := range cur.JWTKeys {
			jwtKeys[k.ID] = true
		}
		chain, err := signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: csr(t), SPIFFEID: id, TTL: svidTTL, Now: clk.Now()})
		if err != nil {
			t.Fatal(err)
		}
		tok, exp, err := signer.SignJWTSVID(a.JWTKey(), signer.JWTParams{SPIFFEID: id, Audience: []string{"a"}, TTL: 5 * time.Minute, Now: clk.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if exp.After(clk.Now().Add(5 * time.Minute)) {
			t.Fatalf("JWT exp %s beyond TTL", exp)
		}
		svids = append(svids, issued{chain: chain, jwt: tok, exp: chain[0].NotAfter})
		for i, s := range svids {
			if !clk.Now().Before(s.exp) {
				continue
			}
			for name, b := range map[string]authority.Bundle{"current": cur, "previous": prev} {
				if _, _, err := x509svid.Verify(s.chain, x509Bundle(b), x509svid.WithTime(clk.Now())); err != nil {
					t.Fatalf("%s: X509-SVID %d no longer verifies against the %s bundle: %v", clk.Now(), i, name, err)
				}
			}
		}
		// The newest JWT-SVID verifies against the current bundle and the one
		// a peer fetched a step ago. (jwtsvid.ParseAndValidate checks expiry
		// against the wall clock, so check the signature by the kid.)
		for name, b := range map[string]authority.Bundle{"current": cur, "previous": prev} {
			if err := verifyJWT(b, tok); err != nil {
				t.Fatalf("%s: JWT-SVID does not verify against the %s bundle: %v", clk.Now(), name, err)
			}
		}
		prev = cur
	}
	if len(roots) < 3 {
		t.Errorf("saw %d roots over three root lifetimes; want at least 3", len(roots))
	}
	if len(jwtKeys) < 10 {
		t.Errorf("saw %d JWT keys over 30 key lifetimes; want at least 10", len(jwtKeys))
	}
	final, _ := a.Bundle()
	if len(final.X509Roots) > 2 {
		t.Errorf("bundle holds %d roots; old roots are not retired", len(final.X509Roots))
	}
}

// TestKeyChangesReported: every stored key change reaches OnKeyChange, as
// the audit log needs it: creation, state changes and retirement.
func TestKeyChangesReported(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var got []string
	cfg := authority.Config{TrustDomain: td, Store: openStore(t, t.TempDir()), Now: clk.Now,
		OnKeyChange: func(c authority.KeyChange) { got = append(got, c.Change+" "+c.Kind+" "+c.State) }}
	a, err := authority.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := func(step string, changes ...string) {
		t.Helper()
		have := map[string]int{}
		for _, g := range got {
			have[g]++
		}
		for _, c := range changes {
			if have[c] == 0 {
				t.Errorf("%s: no %q among %q", step, c, got)
			}
			have[c]--
		}
		for c, n := range have {
			if n > 0 {
				t.Errorf("%s: unexpected %q", step, c)
			}
		}
		got = nil
	}
	want("start", "create x509_root active", "create x509_intermediate active", "create jwt active")
	first := a.X509CA().Certificate

	clk.Add(13 * time.Hour) // past half of the intermediate's and the JWT key's 24 h
	if _, err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	want("half life", "create x509_intermediate active", "state x509_intermediate old", "create jwt prepared")

	clk.Add(8 * time.Hour) // 21 h: the JWT key activates at five sixths
	if _, err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	want("five sixths", "state jwt active", "state jwt old")

	clk.Add(4 * time.Hour) // 25 h: the first intermediate and JWT key expired
	if _, err := a.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.X509CA().Certificate.Equal(first) {
		t.Fatal("still signing with the first intermediate")
	}
	want("expiry", "retire x509_intermediate old", "retire jwt old", "create x509_intermediate active", "state x509_intermediate old", "create jwt prepared")
}
