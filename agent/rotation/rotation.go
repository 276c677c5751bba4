// Package rotation keeps the workloads' SVIDs ahead of use: it mints an
// X.509-SVID for every entry in the cache that has none, rotates each at
// about half its life, and caches JWT-SVIDs to half their life. Keys are
// generated here, on the node; the CA sees CSRs only. The clock is
// injected, so that rotation timing can be tested without waiting.
package rotation

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/backoff"
	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/keygen"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// maxBatch is the most CSRs sent in one MintX509SVIDs call.
const maxBatch = 1000

// CA is what rotation needs of the agent's client of the CA
// (agent/caclient).
type CA interface {
	// Synced reports whether the agent has had its first sync.
	Synced() bool
	// Evicted reports whether the CA no longer accepts the agent.
	Evicted() bool
	MintX509SVIDs(ctx context.Context, reqs []*agentv1.X509SVIDRequest) ([]*agentv1.X509SVID, error)
	MintJWTSVID(ctx context.Context, entryID string, audience []string) (token string, expires time.Time, err error)
	// Pause waits d after a failed call, or less: until wake is closed or
	// the connection to the CA, having been down, is ready again.
	Pause(ctx context.Context, d time.Duration, wake <-chan struct{})
}

// Config configures a Rotator.
type Config struct {
	CA    CA
	Cache *cache.Cache
	// Clock tells the time and waits. If nil, clock.Real.
	Clock clock.Clock
	// Log receives the rotator's logs. If nil, discarded.
	Log hclog.Logger
}

// Rotator mints and rotates SVIDs into the cache.
type Rotator struct {
	cfg Config

	mu                 sync.Mutex
	jwts               map[string]jwtCached
	minted, mintErrors int64
}

type jwtCached struct {
	token              string
	refreshAt, expires time.Time
}

// New returns a Rotator; Run runs it.
func New(cfg Config) *Rotator {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	return &Rotator{cfg: cfg, jwts: map[string]jwtCached{}}
}

// Run mints SVIDs for entries that have none or are due for rotation, in
// batches, and sleeps until the next rotation or change of the cache,
// until ctx ends.
func (r *Rotator) Run(ctx context.Context) {
	bo := backoff.Backoff{Max: 2 * time.Second}
	for ctx.Err() == nil {
		_, changed := r.cfg.Cache.Snapshot()
		due, next := r.cfg.Cache.Due(r.cfg.Clock.Now())
		synced := r.cfg.CA.Synced()
		if len(due) > 0 && synced && !r.cfg.CA.Evicted() {
			if err := r.mint(ctx, due); err != nil {
				if ctx.Err() != nil {
					return
				}
				d := bo.Next()
				r.cfg.Log.Warn("minting SVIDs failed; keeping the cached ones", "due", len(due), "error", err, "retry_in", d)
				// A sync message after a reconnect, or the connection
				// coming back, wakes this early.
				r.cfg.CA.Pause(ctx, d, changed)
				continue
			}
			bo.Reset()
		}
		if synced {
			r.cfg.Cache.MarkSynced()
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = next.Sub(r.cfg.Clock.Now())
		}
		r.sleep(ctx, wait, changed)
	}
}

func (r *Rotator) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	t, stop := r.cfg.Clock.After(d)
	defer stop()
	select {
	case <-ctx.Done():
	case <-t:
	case <-wake:
	}
}

// mint gets SVIDs for entries from the CA, with keys generated here.
func (r *Rotator) mint(ctx context.Context, due []entry.Entry) error {
	for start := 0; start < len(due); start += maxBatch {
		batch := due[start:min(start+maxBatch, len(due))]
		keys, reqs, err := csrs(batch)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		svids, err := r.cfg.CA.MintX509SVIDs(cctx, reqs)
		cancel()
		if err != nil {
			r.mu.Lock()
			r.mintErrors++
			r.mu.Unlock()
			return err
		}
		now := r.cfg.Clock.Now()
		got := make(map[string]*cache.SVID, len(batch))
		for i, s := range svids {
			if i >= len(batch) || s.GetEntryId() != batch[i].ID {
				return errors.New("the CA answered out of order")
			}
			leaf, err := x509.ParseCertificate(firstDER(s.GetCertChain()))
			if err != nil {
				return fmt.Errorf("certificate from the CA: %w", err)
			}
			if len(leaf.URIs) != 1 {
				return errors.New("the CA sent no SVID")
			}
			id, err := spiffeid.FromURI(leaf.URIs[0])
			if err != nil {
				return fmt.Errorf("certificate from the CA: %w", err)
			}
			if id != batch[i].SPIFFEID {
				return fmt.Errorf("the CA signed %s for entry %s of %s", id, batch[i].ID, batch[i].SPIFFEID)
			}
			pkcs8, err := x509.MarshalPKCS8PrivateKey(keys[i])
			if err != nil {
				return err
			}
			var chain []byte
			for _, der := range s.GetCertChain() {
				chain = append(chain, der...)
			}
			got[batch[i].ID] = &cache.SVID{ChainDER: chain, KeyPKCS8: pkcs8, NotAfter: leaf.NotAfter, RotateAt: cache.RotationAfter(leaf.NotBefore, leaf.NotAfter, now)}
		}
		r.cfg.Cache.SetSVIDs(got)
		r.mu.Lock()
		r.minted += int64(len(got))
		r.mu.Unlock()
	}
	return nil
}

func firstDER(chain [][]byte) []byte {
	if len(chain) == 0 {
		return nil
	}
	return chain[0]
}

// csrs makes a key and CSR per entry, on every core.
func csrs(batch []entry.Entry) ([]crypto.Signer, []*agentv1.X509SVIDRequest, error) {
	keys := make([]crypto.Signer, len(batch))
	reqs := make([]*agentv1.X509SVIDRequest, len(batch))
	errs := make([]error, len(batch))
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(batch); i += workers {
				k, der, err := keygen.KeyAndCSR()
				keys[i], reqs[i], errs[i] = k, &agentv1.X509SVIDRequest{EntryId: batch[i].ID, Csr: der}, err
			}
		}()
	}
	wg.Wait()
	return keys, reqs, errors.Join(errs...)
}

// FetchJWTSVID returns a JWT-SVID for an entry, from cache while it is
// younger than half its life, else from the CA. If the CA is unreachable a
// cached token that has not expired is returned.
func (r *Rotator) FetchJWTSVID(ctx context.Context, entryID string, audience []string) (string, time.Time, error) {
	aud := append([]string(nil), audience...)
	sort.Strings(aud)
	key := entryID + "\x00" + strings.Join(aud, "\x00")
	now := r.cfg.Clock.Now()
	r.mu.Lock()
	c, ok := r.jwts[key]
	r.mu.Unlock()
	if ok && now.Before(c.refreshAt) {
		return c.token, c.expires, nil
	}
	tok, exp, err := r.cfg.CA.MintJWTSVID(ctx, entryID, audience)
	if err == nil {
		c = jwtCached{token: tok, expires: exp, refreshAt: now.Add(exp.Sub(now) / 2)}
		r.mu.Lock()
		if len(r.jwts) > 10000 {
			r.jwts = map[string]jwtCached{}
		}
		r.jwts[key] = c
		r.mu.Unlock()
		return c.token, c.expires, nil
	}
	if ok && now.Before(c.expires) {
		return c.token, c.expires, nil
	}
	return "", time.Time{}, err
}

// Counts returns the SVIDs minted and the failed mint calls.
func (r *Rotator) Counts() (minted, mintErrors int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.minted, r.mintErrors
}
