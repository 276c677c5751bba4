package rotation

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// fakeCA signs CSRs for the entries it knows, with SVIDs that live an
// hour of the fake clock, and can be told to fail.
type fakeCA struct {
	t     *testing.T
	clock *clock.Fake
	ids   map[string]spiffeid.ID
	key   *ecdsa.PrivateKey
	root  *x509.Certificate
	life  time.Duration // of the SVIDs it signs; an hour if zero

	mu     sync.Mutex
	fail   error
	mints  chan time.Time     // the fake time of each successful mint
	pauses chan time.Duration // each retry wait after a failure
}

func newFakeCA(t *testing.T, c *clock.Fake, ids map[string]spiffeid.ID) *fakeCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: c.Now().Add(-time.Hour), NotAfter: c.Now().Add(48 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &fakeCA{t: t, clock: c, ids: ids, key: key, root: root, mints: make(chan time.Time, 16), pauses: make(chan time.Duration, 16)}
}

func (f *fakeCA) Synced() bool  { return true }
func (f *fakeCA) Evicted() bool { return false }

func (f *fakeCA) MintX509SVIDs(_ context.Context, reqs []*agentv1.X509SVIDRequest) ([]*agentv1.X509SVID, error) {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	now := f.clock.Now()
	var out []*agentv1.X509SVID
	for i, r := range reqs {
		csr, err := x509.ParseCertificateRequest(r.GetCsr())
		if err != nil {
			return nil, err
		}
		id := f.ids[r.GetEntryId()]
		u, _ := url.Parse(id.String())
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano() + int64(i)), URIs: []*url.URL{u},
			NotBefore: now.Add(-clock.Backdate), NotAfter: now.Add(cmp.Or(f.life, time.Hour))}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, f.root, csr.PublicKey, f.key)
		if err != nil {
			return nil, err
		}
		out = append(out, &agentv1.X509SVID{EntryId: r.GetEntryId(), CertChain: [][]byte{der}})
	}
	f.mints <- now
	return out, nil
}

func (f *fakeCA) MintJWTSVID(context.Context, string, []string) (string, time.Time, error) {
	return "", time.Time{}, errors.New("not used")
}

func (f *fakeCA) Pause(_ context.Context, d time.Duration, _ <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pauses) < cap(f.pauses) {
		f.pauses <- d
	}
	if len(f.pauses) == 3 {
		f.fail = nil // the CA is back after the third retry
	}
}

// waitForSleep waits until the rotator waits on the clock, and returns
// when that wait ends.
func waitForSleep(t *testing.T, c *clock.Fake) time.Time {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		waits, changed := c.Waits()
		if len(waits) == 1 {
			return waits[0]
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the rotator never slept (waits %v)", waits)
		}
	}
}

func mintedAt(t *testing.T, ca *fakeCA) time.Time {
	t.Helper()
	select {
	case at := <-ca.mints:
		return at
	case <-time.After(10 * time.Second):
		t.Fatal("no mint")
		return time.Time{}
	}
}

// TestRotationAtHalfLife: an entry is minted at once, and again at half
// its SVID's life (within the 5% jitter), not before; a failed mint is
// retried with a growing backoff, and a success resets it.
func TestRotationAtHalfLife(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := clock.NewFake(t0)
	id := spiffeid.RequireFromString("spiffe://example.org/w/1")
	ca := newFakeCA(t, c, map[string]spiffeid.ID{"e1": id})
	b, err := cache.NewBundle(td, []*x509.Certificate{ca.root}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	cc := cache.New(b)
	cc.Apply(cache.Update{Full: true, Entries: []entry.Entry{{ID: "e1", SPIFFEID: id,
		ParentID: spiffeid.RequireFromString("spiffe://example.org/signet/agent/join/n"), Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}}}})
	r := New(Config{CA: ca, Cache: cc, Clock: c})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	if at := mintedAt(t, ca); !at.Equal(t0) {
		t.Fatalf("first mint at %s, want at once (%s)", at, t0)
	}
	wake := waitForSleep(t, c)
	// An SVID of one hour is rotated at 30 minutes, ± 5% of its life.
	if lo, hi := t0.Add(27*time.Minute), t0.Add(33*time.Minute); wake.Before(lo) || wake.After(hi) {
		t.Fatalf("next rotation at %s, want between %s and %s", wake, lo, hi)
	}
	if n, _ := r.Counts(); n != 1 {
		t.Fatalf("minted %d before the rotation time, want 1", n)
	}

	// The CA fails at the rotation time: retried with backoff.
	ca.mu.Lock()
	ca.fail = errors.New("CA away")
	ca.mu.Unlock()
	c.Add(wake.Sub(c.Now()))
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		select {
		case d := <-ca.pauses:
			if d != want {
				t.Fatalf("retry %d waited %s, want %s", i, d, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no retry %d", i)
		}
	}
	if _, errs := r.Counts(); errs < 3 {
		t.Fatalf("%d mint errors counted, want at least 3", errs)
	}
	at := mintedAt(t, ca)
	if at.Before(wake) {
		t.Fatalf("second mint at %s, before the rotation time %s", at, wake)
	}
	next := waitForSleep(t, c)
	if lo, hi := at.Add(27*time.Minute), at.Add(33*time.Minute); next.Before(lo) || next.After(hi) {
		t.Fatalf("rotation after the second mint at %s, want between %s and %s", next, lo, hi)
	}
}

// TestRotationHasAFloor: an SVID that lives two seconds is not re-minted
// at half its life but after cache.MinRotation: no tight loop of mints,
// whatever the lifetime.
func TestRotationHasAFloor(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := clock.NewFake(t0)
	id := spiffeid.RequireFromString("spiffe://example.org/w/brief")
	ca := newFakeCA(t, c, map[string]spiffeid.ID{"e1": id})
	ca.life = 2 * time.Second
	b, err := cache.NewBundle(td, []*x509.Certificate{ca.root}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	cc := cache.New(b)
	cc.Apply(cache.Update{Full: true, Entries: []entry.Entry{{ID: "e1", SPIFFEID: id,
		ParentID: spiffeid.RequireFromString("spiffe://example.org/signet/agent/join/n"), Selectors: []selector.Selector{{Type: "unix", Value: "uid:1"}}}}})
	r := New(Config{CA: ca, Cache: cc, Clock: c})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	mintedAt(t, ca)
	if wake := waitForSleep(t, c); wake.Sub(t0) < cache.MinRotation {
		t.Fatalf("a 2 s SVID is re-minted %s after the first mint, before the floor of %s", wake.Sub(t0), cache.MinRotation)
	}
}
