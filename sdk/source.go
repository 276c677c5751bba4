package sdk

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/signet-id/signet/sdk/revocation"
)

// Option configures a Source.
type Option interface{ apply(*config) }

type config struct {
	addr        string
	id          string
	workloadKey bool
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithAddr sets the Workload API address ("unix:///run/signet/agent.sock").
// Without it, SPIFFE_ENDPOINT_SOCKET is used.
func WithAddr(addr string) Option { return optionFunc(func(c *config) { c.addr = addr }) }

// WithID picks, for a workload that has several identities, the one to
// serve and call as. Without it the first the agent sends is used.
func WithID(id string) Option { return optionFunc(func(c *config) { c.id = id }) }

// Source is the service's rotating X.509-SVID and trust bundles, kept
// current from the Workload API. One per process is enough; it is safe
// for concurrent use. It implements go-spiffe's x509svid.Source and
// x509bundle.Source.
type Source struct {
	svids svids
	td    spiffeid.TrustDomain
	addr  string

	// revs are the revocations in force (from the agent's extension);
	// conns the connections to close when their peer becomes revoked.
	revs       atomic.Pointer[revocation.Set]
	conns      conns
	revUpdates atomic.Int64
	// traffic counts what this source's servers serve; now stamps the
	// minute of each count (SetClock).
	traffic traffic
	now     atomic.Pointer[func() time.Time]
	stop    context.CancelFunc
	stopped chan struct{}
}

// svids is where a Source's SVID and bundles come from: go-spiffe's
// X509Source, or, with WithWorkloadKey, an SVID for a key of this
// process (ownKey).
type svids interface {
	GetX509SVID() (*x509svid.SVID, error)
	GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error)
	Updated() <-chan struct{}
	Close() error
}

// NewSource connects to the Workload API and blocks until the first SVID
// and bundle arrive or ctx ends. Close it when done.
func NewSource(ctx context.Context, opts ...Option) (*Source, error) {
	var c config
	for _, o := range opts {
		o.apply(&c)
	}
	if c.workloadKey {
		own, err := newOwnKey(ctx, c.addr, c.id)
		if err != nil {
			return nil, err
		}
		svid, _ := own.GetX509SVID()
		return newSource(own, svid.ID.TrustDomain(), c.addr), nil
	}
	var clientOpts []workloadapi.ClientOption
	if c.addr != "" {
		clientOpts = append(clientOpts, workloadapi.WithAddr(c.addr))
	}
	sourceOpts := []workloadapi.X509SourceOption{workloadapi.WithClientOptions(clientOpts...)}
	if c.id != "" {
		sourceOpts = append(sourceOpts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID.String() == c.id {
					return s
				}
			}
			return svids[0]
		}))
	}
	x, err := workloadapi.NewX509Source(ctx, sourceOpts...)
	if err != nil {
		return nil, fmt.Errorf("sdk: workload API: %w", err)
	}
	svid, err := x.GetX509SVID()
	if err != nil {
		x.Close()
		return nil, fmt.Errorf("sdk: %w", err)
	}
	// A workload's identities may arrive one after another: wait for the
	// one asked for.
	for c.id != "" && svid.ID.String() != c.id {
		select {
		case <-ctx.Done():
			x.Close()
			return nil, fmt.Errorf("sdk: the workload has no identity %s (it is %s)", c.id, svid.ID)
		case <-x.Updated():
		}
		if svid, err = x.GetX509SVID(); err != nil {
			x.Close()
			return nil, fmt.Errorf("sdk: %w", err)
		}
	}
	return newSource(x, svid.ID.TrustDomain(), c.addr), nil
}

// newSource starts following the agent's revocations.
func newSource(svids svids, td spiffeid.TrustDomain, addr string) *Source {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Source{svids: svids, td: td, addr: addr, stop: cancel, stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.ackBundles(ctx)
		}()
		s.followRevocations(ctx)
		<-done
	}()
	return s
}

// Close stops following the Workload API.
func (s *Source) Close() error {
	s.stop()
	<-s.stopped
	return s.svids.Close()
}

// ID returns the service's SPIFFE ID now.
func (s *Source) ID() (spiffeid.ID, error) {
	svid, err := s.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, err
	}
	return svid.ID, nil
}

// TrustDomain returns the service's trust domain.
func (s *Source) TrustDomain() spiffeid.TrustDomain { return s.td }

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) { return s.svids.GetX509SVID() }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.svids.GetX509BundleForTrustDomain(td)
}

// Updated returns a channel that receives when the SVID or bundles change.
func (s *Source) Updated() <-chan struct{} { return s.svids.Updated() }

// errDenied is the handshake error of a peer no rule allows.
var errDenied = errors.New("sdk: peer not allowed by policy")
