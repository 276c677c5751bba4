package cache

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func testBundle(t *testing.T, seq uint64) *Bundle {
	b, err := NewBundle(td, nil, nil, seq)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mkEntry(id, path string, sels ...string) entry.Entry {
	e := entry.Entry{ID: id, SPIFFEID: spiffeid.RequireFromPath(td, path)}
	for _, s := range sels {
		sel, err := selector.Parse(s)
		if err != nil {
			panic(err)
		}
		e.Selectors = append(e.Selectors, sel)
	}
	return e
}

func mkSVID(t *testing.T, id string, ttl time.Duration) *SVID {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(1), URIs: []*url.URL{u},
		NotBefore: now.Add(-10 * time.Second), NotAfter: now.Add(ttl)}, &x509.Certificate{}, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &SVID{ChainDER: der, NotAfter: cert.NotAfter, RotateAt: RotationTime(cert.NotAfter, now)}
}

func TestMatchNeedsEverySelectorAndAnSVID(t *testing.T) {
	c := New(testBundle(t, 0))
	_, changed := c.Snapshot()
	c.Apply(Update{Full: true, Entries: []entry.Entry{
		mkEntry("a", "/a", "unix:uid:1", "unix:path:/bin/a"),
		mkEntry("b", "/b", "unix:uid:1"),
		mkEntry("c", "/c", "unix:uid:2"),
	}})
	select {
	case <-changed:
	default:
		t.Fatal("Apply did not wake watchers")
	}
	caller := []selector.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "path:/bin/a"}, {Type: "unix", Value: "gid:0"}}
	snap, _ := c.Snapshot()
	if got := snap.Match(caller); len(got) != 0 {
		t.Fatalf("Match before minting = %d items; want 0", len(got))
	}
	if got := snap.MatchEntries(caller); len(got) != 2 {
		t.Fatalf("MatchEntries = %d; want a and b", len(got))
	}
	c.SetSVIDs(map[string]*SVID{"a": mkSVID(t, "spiffe://example.org/a", time.Hour), "b": mkSVID(t, "spiffe://example.org/b", time.Hour), "c": mkSVID(t, "spiffe://example.org/c", time.Hour)})
	snap, _ = c.Snapshot()
	got := snap.Match(caller)
	if len(got) != 2 || got[0].Entry.ID != "a" || got[1].Entry.ID != "b" {
		t.Fatalf("Match = %v; want a, b in SPIFFE ID order", got)
	}
	if got[0].Proto == nil || got[0].Proto.SpiffeId != "spiffe://example.org/a" {
		t.Fatalf("item has no Workload API form")
	}
	onlyUID := []selector.Selector{{Type: "unix", Value: "uid:1"}}
	if got := snap.Match(onlyUID); len(got) != 1 || got[0].Entry.ID != "b" {
		t.Fatalf("Match(uid:1 only) = %v; want only b (a also needs its path)", got)
	}
	if !snap.UsesKey("unix", "path") || snap.UsesKey("unix", "sha256") {
		t.Error("UsesKey is wrong")
	}
}

func TestApplyKeepsSVIDsUnlessTheIdentityChanges(t *testing.T) {
	c := New(testBundle(t, 0))
	a := mkEntry("a", "/a", "unix:uid:1")
	c.Apply(Update{Full: true, Entries: []entry.Entry{a}})
	s := mkSVID(t, "spiffe://example.org/a", time.Hour)
	c.SetSVIDs(map[string]*SVID{"a": s})

	// Same identity, other selectors: the SVID stays.
	a2 := mkEntry("a", "/a", "unix:uid:1", "unix:gid:1")
	c.Apply(Update{Entries: []entry.Entry{a2}})
	snap, _ := c.Snapshot()
	if snap.Items[0].SVID != s {
		t.Fatal("SVID dropped on a selector change")
	}
	// A new SPIFFE ID needs a new SVID.
	a3 := mkEntry("a", "/renamed", "unix:uid:1")
	c.Apply(Update{Entries: []entry.Entry{a3}})
	snap, _ = c.Snapshot()
	if snap.Items[0].SVID != nil {
		t.Fatal("SVID kept for a changed SPIFFE ID")
	}
	if due, _ := c.Due(time.Now()); len(due) != 1 {
		t.Fatalf("Due = %v; want the renamed entry", due)
	}
	// A full sync without the entry drops it; a deletion too.
	c.Apply(Update{Full: true})
	snap, _ = c.Snapshot()
	if len(snap.Items) != 0 {
		t.Fatal("full sync kept an entry it did not list")
	}
}

func TestDueAndRotation(t *testing.T) {
	c := New(testBundle(t, 0))
	c.Apply(Update{Full: true, Entries: []entry.Entry{mkEntry("a", "/a", "unix:uid:1")}})
	s := mkSVID(t, "spiffe://example.org/a", 10*time.Second)
	c.SetSVIDs(map[string]*SVID{"a": s})
	due, next := c.Due(time.Now())
	if len(due) != 0 || next.IsZero() {
		t.Fatalf("Due right after minting = %v, next %v", due, next)
	}
	// Rotation is at half the remaining life, within 5% jitter.
	if d := time.Until(next); d < 4*time.Second || d > 6*time.Second {
		t.Fatalf("next rotation in %s; want about 5s for a 10s SVID", d)
	}
	if due, _ := c.Due(next); len(due) != 1 {
		t.Fatal("entry not due at its rotation time")
	}
}

func TestBundleChangeRebuildsProtos(t *testing.T) {
	c := New(testBundle(t, 1))
	c.Apply(Update{Full: true, Entries: []entry.Entry{mkEntry("a", "/a", "unix:uid:1")}})
	c.SetSVIDs(map[string]*SVID{"a": mkSVID(t, "spiffe://example.org/a", time.Hour)})
	root, _ := x509.ParseCertificate(mkSVID(t, "spiffe://example.org", time.Hour).ChainDER)
	b2, err := NewBundle(td, []*x509.Certificate{root}, nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	c.Apply(Update{Bundle: b2})
	snap, _ := c.Snapshot()
	if string(snap.Items[0].Proto.Bundle) != string(root.Raw) {
		t.Fatal("the SVID's Workload API form kept the old bundle")
	}
}

// TestFederatedFor: a workload gets the federated bundles its entries name
// and the agent holds, once each, sorted; a trust domain without a bundle
// is left out.
func TestFederatedFor(t *testing.T) {
	tdOf := func(s string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(s) }
	bundle := func(s string) *Bundle {
		b, err := NewBundle(tdOf(s), nil, nil, 1)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c := New(bundle("example.org"))
	c.Apply(Update{FederatedSet: true, Federated: map[spiffeid.TrustDomain]*Bundle{tdOf("b.test"): bundle("b.test"), tdOf("a.test"): bundle("a.test")}})
	snap, _ := c.Snapshot()
	got := snap.FederatedFor([]entry.Entry{
		{FederatesWith: []spiffeid.TrustDomain{tdOf("b.test"), tdOf("missing.test")}},
		{FederatesWith: []spiffeid.TrustDomain{tdOf("a.test"), tdOf("b.test")}},
		{},
	})
	var names []string
	for _, b := range got {
		names = append(names, b.TrustDomain.Name())
	}
	if strings.Join(names, ",") != "a.test,b.test" {
		t.Fatalf("federated bundles %v, want a.test,b.test", names)
	}
	if len(snap.FederatedFor([]entry.Entry{{}})) != 0 {
		t.Fatal("an entry that federates with nothing got bundles")
	}
}

// TestRotationAfterIgnoresClockSkew: an SVID's rotation is half its life
// after it arrived, whatever this host's clock says against the CA's.
func TestRotationAfterIgnoresClockSkew(t *testing.T) {
	issued := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) // by the CA's clock
	nb, na := issued.Add(-clock.Backdate), issued.Add(time.Minute)
	for _, skew := range []time.Duration{-5 * time.Minute, 0, 5 * time.Minute} {
		received := issued.Add(skew)
		at := RotationAfter(nb, na, received)
		// Half the minute, moved by the jitter of up to 5 % of it.
		if d := at.Sub(received); d < 27*time.Second || d > 33*time.Second {
			t.Errorf("skew %s: rotation %s after receipt; want 30 s ± 3 s", skew, d)
		}
	}
}
