package workloadapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
	"github.com/signet-id/signet/internal/unixsock"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// podAttestor says every caller is in pod "pod-1".
type podAttestor struct{}

func (a podAttestor) AttestEarly(ctx context.Context, c peercred.Creds) ([]selector.Selector, bool, error) {
	sels, err := a.Attest(ctx, c)
	return sels, false, err
}

func (podAttestor) Attest(context.Context, peercred.Creds) ([]selector.Selector, error) {
	return []selector.Selector{{Type: "k8s", Value: "pod-uid:pod-1"}}, nil
}

// caPuller stands in for the CA (the edge of this unit): a pull adds the
// pod's entry, and its SVID arrives 30 ms later, as from the mint loop.
type caPuller struct {
	c     *cache.Cache
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	mu    sync.Mutex
	pulls []string
	has   bool // whether the pod has an identity
	extra []selector.Selector
}

func (p *caPuller) PullPod(_ context.Context, uid string) error {
	p.mu.Lock()
	p.pulls = append(p.pulls, uid)
	p.mu.Unlock()
	if !p.has {
		return nil
	}
	id := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/web")
	e := entry.Entry{ID: "k8s:" + uid + ":default", SPIFFEID: id, ParentID: spiffeid.RequireFromString("spiffe://example.org/signet/agent/k8s/c/n"),
		Selectors: append([]selector.Selector{{Type: "k8s", Value: "pod-uid:" + uid}}, p.extra...)}
	p.c.Apply(cache.Update{PodEntries: []entry.Entry{e}})
	go func() {
		time.Sleep(30 * time.Millisecond)
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		u, _ := url.Parse(id.String())
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, p.ca, key.Public(), p.caKey)
		pk, _ := x509.MarshalPKCS8PrivateKey(key)
		p.c.SetSVIDs(map[string]*cache.SVID{e.ID: {ChainDER: der, KeyPKCS8: pk, NotAfter: tmpl.NotAfter, RotateAt: time.Now().Add(30 * time.Minute)}})
	}()
	return nil
}

func serve(t *testing.T, pods PodPuller, c *cache.Cache) string {
	t.Helper()
	return serveHandler(t, New(Config{Cache: c, Attestor: podAttestor{}, Pods: pods, SyncWait: 2 * time.Second}))
}

func serveHandler(t *testing.T, h *Handler) string {
	t.Helper()
	srv := grpc.NewServer(grpc.Creds(peercred.TransportCredentials(true)), ServerOption())
	workload.RegisterSpiffeWorkloadAPIServer(srv, h)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := unixsock.Listen(sock, 0o755, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return "unix://" + sock
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://example.org")
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, URIs: []*url.URL{u}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// TestPullsThePodsIdentity: a caller in a pod whose identity has not been
// pushed yet is not refused: the agent asks the CA for the pod and answers
// once the SVID is minted.
func TestPullsThePodsIdentity(t *testing.T) {
	ca, caKey := newCA(t)
	b, err := cache.NewBundle(td, []*x509.Certificate{ca}, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := cache.New(b)
	c.MarkSynced()
	p := &caPuller{c: c, ca: ca, caKey: caKey, has: true}
	addr := serve(t, p, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatalf("caller was refused: %v", err)
	}
	if svid.ID.String() != "spiffe://example.org/ns/shop/sa/web" {
		t.Fatalf("got %s", svid.ID)
	}
	if len(p.pulls) != 1 || p.pulls[0] != "pod-1" {
		t.Fatalf("pulls: %v", p.pulls)
	}
}

// TestPodWithoutIdentityIsRefused: a pod that no rule selects is refused
// after one pull.
func TestPodWithoutIdentityIsRefused(t *testing.T) {
	ca, caKey := newCA(t)
	b, _ := cache.NewBundle(td, []*x509.Certificate{ca}, nil, 1)
	c := cache.New(b)
	c.MarkSynced()
	p := &caPuller{c: c, ca: ca, caKey: caKey}
	addr := serve(t, p, c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.FetchJWTSVID(ctx, jwtParams()); err == nil {
		t.Fatal("a pod without identity got a JWT-SVID")
	}
	if len(p.pulls) != 1 {
		t.Fatalf("pulls: %v", p.pulls)
	}
}

func jwtParams() jwtsvid.Params { return jwtsvid.Params{Audience: "x"} }

// stagedAttestor answers like the K8s attestor for a container that the
// kubelet reports only on a second look.
type stagedAttestor struct {
	mu    sync.Mutex
	calls int
}

func (a *stagedAttestor) attest(early bool) ([]selector.Selector, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	pod := []selector.Selector{{Type: "k8s", Value: "pod-uid:pod-1"}}
	if a.calls == 1 && early {
		return pod, true, nil
	}
	return append(pod, selector.Selector{Type: "k8s", Value: "container-name:main"}), false, nil
}

func (a *stagedAttestor) Attest(context.Context, peercred.Creds) ([]selector.Selector, error) {
	sels, _, err := a.attest(false)
	return sels, err
}

func (a *stagedAttestor) AttestEarly(context.Context, peercred.Creds) ([]selector.Selector, bool, error) {
	return a.attest(true)
}

// TestPartialAttestationCompletes: an entry that selects on the container
// is found once the agent looks again, not refused on the pod-only answer.
func TestPartialAttestationCompletes(t *testing.T) {
	ca, caKey := newCA(t)
	b, _ := cache.NewBundle(td, []*x509.Certificate{ca}, nil, 1)
	c := cache.New(b)
	c.MarkSynced()
	p := &caPuller{c: c, ca: ca, caKey: caKey, has: true, extra: []selector.Selector{{Type: "k8s", Value: "container-name:main"}}}
	p.PullPod(context.Background(), "pod-1")
	waitSVID(t, c)
	p.has = false
	a := &stagedAttestor{}
	h := New(Config{Cache: c, Attestor: a, Pods: p, SyncWait: 2 * time.Second})
	addr := serveHandler(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	if svid.ID.String() != "spiffe://example.org/ns/shop/sa/web" || a.calls != 2 {
		t.Fatalf("got %s after %d attestations", svid.ID, a.calls)
	}
}

// waitSVID waits until the cache holds an SVID.
func waitSVID(t *testing.T, c *cache.Cache) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap, changed := c.Snapshot()
		for _, it := range snap.Items {
			if it.SVID != nil {
				return
			}
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
			t.Fatal("no SVID in the cache")
		}
	}
}

// lateAttestor answers with the pod's selectors first; the kubelet then
// does not report the container for a few attempts (as under load, past
// the attestor's patience), then does.
type lateAttestor struct {
	mu    sync.Mutex
	calls int
}

func (a *lateAttestor) attest(early bool) ([]selector.Selector, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	pod := []selector.Selector{{Type: "k8s", Value: "pod-uid:pod-1"}}
	switch {
	case a.calls == 1 && early:
		return pod, true, nil
	case a.calls < 4:
		return nil, false, errors.New("container 2d9be2b3cbd8 is not (yet) in pod shop/web-1's status")
	}
	return append(pod, selector.Selector{Type: "k8s", Value: "container-name:main"}), false, nil
}

func (a *lateAttestor) Attest(context.Context, peercred.Creds) ([]selector.Selector, error) {
	sels, _, err := a.attest(false)
	return sels, err
}

func (a *lateAttestor) AttestEarly(context.Context, peercred.Creds) ([]selector.Selector, bool, error) {
	return a.attest(true)
}

// TestLateContainerKeepsTheStream: a caller answered on its pod's
// selectors keeps its stream while the kubelet is slow to report its
// container, and its full attestation is audited once it does.
func TestLateContainerKeepsTheStream(t *testing.T) {
	ca, caKey := newCA(t)
	b, _ := cache.NewBundle(td, []*x509.Certificate{ca}, nil, 1)
	c := cache.New(b)
	c.MarkSynced()
	p := &caPuller{c: c, ca: ca, caKey: caKey, has: true}
	p.PullPod(context.Background(), "pod-1")
	waitSVID(t, c)
	var log lockedBuffer
	aud := NewAuditor(&log, 100)
	defer aud.Close()
	h := New(Config{Cache: c, Attestor: &lateAttestor{}, Pods: p, SyncWait: 2 * time.Second, Audit: aud})
	addr := serveHandler(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	errs := make(chan error, 1)
	go func() {
		errs <- client.WatchX509Context(ctx, watcherFunc(func(err error) { errs <- err }))
	}()
	for !strings.Contains(log.String(), "container-name:main") {
		select {
		case err := <-errs:
			t.Fatalf("the stream ended before the attestation completed: %v", err)
		case <-ctx.Done():
			t.Fatalf("no full attestation audited:\n%s", log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type watcherFunc func(error)

func (watcherFunc) OnX509ContextUpdate(*workloadapi.X509Context) {}
func (f watcherFunc) OnX509ContextWatchError(err error)          { f(err) }
