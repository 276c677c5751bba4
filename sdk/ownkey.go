package sdk

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
)

// WithWorkloadKey makes the Source generate its private key in this
// process and have the Signet agent get a certificate for it
// (signet.workload.v1.Keys), again at half of each SVID's life with a new
// key: the service's key never leaves its process. Only Signet agents
// serve this; bundles still come from the Workload API.
func WithWorkloadKey() Option { return optionFunc(func(c *config) { c.workloadKey = true }) }

// ownKey keeps an SVID whose key this process made.
type ownKey struct {
	id      string // wanted identity, "" for the first
	keys    workloadv1.KeysClient
	conn    *grpc.ClientConn
	client  *workloadapi.Client
	svid    atomic.Pointer[x509svid.SVID]
	bundles atomic.Pointer[x509bundle.Set]
	updated chan struct{}
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

func newOwnKey(ctx context.Context, addr, id string) (*ownKey, error) {
	if addr == "" {
		addr = os.Getenv("SPIFFE_ENDPOINT_SOCKET")
	}
	if addr == "" {
		return nil, errors.New("sdk: no Workload API address (SPIFFE_ENDPOINT_SOCKET)")
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		conn.Close()
		return nil, err
	}
	o := &ownKey{id: id, keys: workloadv1.NewKeysClient(conn), conn: conn, client: client, updated: make(chan struct{}, 1)}
	runCtx, stop := context.WithCancel(context.Background())
	o.stop = stop
	first := make(chan struct{})
	var once sync.Once
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		client.WatchX509Bundles(runCtx, bundleWatcher{o: o, first: func() { once.Do(func() { close(first) }) }})
	}()
	select {
	case <-first:
	case <-ctx.Done():
		o.Close()
		return nil, fmt.Errorf("sdk: no trust bundle from the Workload API: %w", ctx.Err())
	}
	notAfter, err := o.sign(ctx)
	if err != nil {
		o.Close()
		return nil, err
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.rotate(runCtx, notAfter)
	}()
	return o, nil
}

type bundleWatcher struct {
	o     *ownKey
	first func()
}

func (w bundleWatcher) OnX509BundlesUpdate(s *x509bundle.Set) {
	w.o.bundles.Store(s)
	w.o.notify()
	w.first()
}

func (w bundleWatcher) OnX509BundlesWatchError(error) {}

func (o *ownKey) notify() {
	select {
	case o.updated <- struct{}{}:
	default:
	}
}

// sign makes a key and has the agent sign it.
func (o *ownKey) sign(ctx context.Context) (time.Time, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return time.Time{}, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return time.Time{}, err
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	resp, err := o.keys.SignX509SVID(ctx, &workloadv1.SignX509SVIDRequest{Csr: csr, SpiffeId: o.id})
	if err != nil {
		return time.Time{}, fmt.Errorf("sdk: signing the workload's key: %w", err)
	}
	var certs []*x509.Certificate
	for _, der := range resp.GetCertChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return time.Time{}, fmt.Errorf("sdk: certificate from the agent: %w", err)
		}
		certs = append(certs, c)
	}
	id, err := spiffeid.FromString(resp.GetSpiffeId())
	if err != nil || len(certs) == 0 {
		return time.Time{}, errors.New("sdk: the agent sent no SVID")
	}
	o.svid.Store(&x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key})
	o.notify()
	return certs[0].NotAfter, nil
}

// rotate signs a new key at half of each SVID's remaining life.
func (o *ownKey) rotate(ctx context.Context, notAfter time.Time) {
	for {
		wait := time.Until(notAfter) / 2
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		na, err := o.sign(sctx)
		cancel()
		if err == nil {
			notAfter = na
			continue
		}
		// Try again soon; the current SVID stays in use meanwhile.
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(5*time.Second, max(time.Until(notAfter)/4, time.Second))):
		}
	}
}

// Close implements svids.
func (o *ownKey) Close() error {
	o.stop()
	err := o.client.Close()
	o.wg.Wait()
	o.conn.Close()
	return err
}

// GetX509SVID implements svids.
func (o *ownKey) GetX509SVID() (*x509svid.SVID, error) {
	s := o.svid.Load()
	if s == nil {
		return nil, errors.New("sdk: no SVID yet")
	}
	return s, nil
}

// GetX509BundleForTrustDomain implements svids.
func (o *ownKey) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	set := o.bundles.Load()
	if set == nil {
		return nil, errors.New("sdk: no bundles yet")
	}
	return set.GetX509BundleForTrustDomain(td)
}

// Updated implements svids.
func (o *ownKey) Updated() <-chan struct{} { return o.updated }
