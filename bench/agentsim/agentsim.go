// Package agentsim runs many node agents in one process, to load a CA as a
// cluster of that many nodes would: each attests with a projected
// service-account token (PSAT) bound to an agent pod on its node, keeps
// its Sync stream, and mints its node's identities, with the agent's own
// code (agent/caclient and agent/rotation), not a copy of the protocol.
// What a simulated agent lacks is what does not load the CA: the Workload
// API socket, workload attestation and the CSI plugin.
package agentsim

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/agent/caclient"
	"github.com/signet-id/signet/agent/rotation"
	"github.com/signet-id/signet/internal/selector"
)

// Config is what every simulated agent shares.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// CAAddress is the CA's agent API (or a comma-separated list of
	// replicas).
	CAAddress   string
	TrustBundle []*x509.Certificate
	// Dir holds a directory per agent (its SVID and key, its token file).
	Dir string
	Log hclog.Logger
	// Observe, if set, is called (from the agent's own goroutine) when an
	// agent first holds an entry, and when it first holds an SVID for one.
	Observe func(Observation)
}

// Observation is one entry an agent came to hold, or its SVID.
type Observation struct {
	Node    string
	EntryID string
	// PodUID is the pod of a pod entry ("" otherwise).
	PodUID   string
	SPIFFEID spiffeid.ID
	// SVID is false when the agent first holds the entry, true when it
	// first holds an SVID for it.
	SVID bool
	At   time.Time
}

// Sim is a set of simulated agents.
type Sim struct {
	cfg Config

	mu     sync.Mutex
	agents map[string]*Agent
}

// New returns an empty Sim.
func New(cfg Config) *Sim {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	return &Sim{cfg: cfg, agents: map[string]*Agent{}}
}

// Agent is one simulated node agent.
type Agent struct {
	Node   string
	client *caclient.Client
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// Start attests an agent for node with token (a PSAT bound to an agent pod
// on node) and runs its sync and minting until Stop. It returns once the
// agent is attested.
func (s *Sim) Start(ctx context.Context, node, token string) (*Agent, error) {
	dir := filepath.Join(s.cfg.Dir, node)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		return nil, err
	}
	log := s.cfg.Log.Named(node)
	c, err := caclient.New(caclient.Config{
		TrustDomain: s.cfg.TrustDomain, CAAddress: s.cfg.CAAddress, DataDir: dir,
		PSATTokenFile: tokenFile, NodeName: node, TrustBundle: s.cfg.TrustBundle, Log: log,
	})
	if err != nil {
		return nil, err
	}
	if err := c.Attest(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("agent %s: %w", node, err)
	}
	actx, cancel := context.WithCancel(context.Background())
	a := &Agent{Node: node, client: c, cancel: cancel}
	rot := rotation.New(rotation.Config{CA: c, Cache: c.Cache(), Log: log})
	a.done.Add(3)
	go func() { defer a.done.Done(); c.Run(actx) }()
	go func() { defer a.done.Done(); rot.Run(actx) }()
	go func() { defer a.done.Done(); s.observe(actx, node, c.Cache()) }()
	s.mu.Lock()
	s.agents[node] = a
	s.mu.Unlock()
	return a, nil
}

// observe reports the entries and SVIDs the agent's cache comes to hold.
func (s *Sim) observe(ctx context.Context, node string, c *cache.Cache) {
	seen := map[string]bool{}
	withSVID := map[string]bool{}
	for {
		snap, changed := c.Snapshot()
		now := time.Now()
		for _, it := range snap.Items {
			id := it.Entry.ID
			if !seen[id] {
				seen[id] = true
				s.report(node, it, false, now)
			}
			if it.SVID != nil && !withSVID[id] {
				withSVID[id] = true
				s.report(node, it, true, now)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (s *Sim) report(node string, it *cache.Item, svid bool, at time.Time) {
	if s.cfg.Observe == nil {
		return
	}
	o := Observation{Node: node, EntryID: it.Entry.ID, SPIFFEID: it.Entry.SPIFFEID, SVID: svid, At: at}
	for _, sel := range it.Entry.Selectors {
		if uid, ok := selector.PodUIDOf(sel); ok {
			o.PodUID = uid
		}
	}
	s.cfg.Observe(o)
}

// Held is what an agent's cache holds now: its entries, and of those the
// ones with an SVID, by SPIFFE ID.
func (a *Agent) Held() (entries int, svids map[spiffeid.ID]int) {
	snap, _ := a.client.Cache().Snapshot()
	svids = map[spiffeid.ID]int{}
	for _, it := range snap.Items {
		if it.SVID != nil {
			svids[it.Entry.SPIFFEID]++
		}
	}
	return len(snap.Items), svids
}

// Ready says whether the agent is attested and its Sync stream serves.
func (a *Agent) Ready() (bool, string) { return a.client.Status() }

// Stop stops the agent.
func (a *Agent) Stop() {
	a.cancel()
	a.done.Wait()
	a.client.Close()
}

// Agents returns the running agents.
func (s *Sim) Agents() []*Agent {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Agent, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, a)
	}
	return out
}

// Stop stops every agent.
func (s *Sim) Stop() {
	var wg sync.WaitGroup
	for _, a := range s.Agents() {
		wg.Add(1)
		go func() { defer wg.Done(); a.Stop() }()
	}
	wg.Wait()
}
