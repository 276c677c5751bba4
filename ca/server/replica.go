package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/signet-id/signet/ca/api"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/federation"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/tasks"
)

// replicaState is one of several CA replicas sharing a PostgreSQL store:
// every replica serves agents and admin calls; the one holding the store's
// leader lock also rotates the CA keys, fetches federated bundles and
// learns services' traffic (storeTraffic); each
// hears the others' commits through the store's notifications and wakes
// its agents' streams, reloads the keys or the federations.
type replicaState struct {
	leading atomic.Bool
	fetcher *federation.Fetcher
	traffic *storeTraffic

	mu sync.Mutex
	// listenError is why the replica is not listening (nil once it is).
	listenError error
	// deafCh is closed once the replica has not listened for deafAfter
	// (deafClosed); a fresh one replaces it when it listens again.
	deafCh     chan struct{}
	deafClosed bool
	deafTimer  *time.Timer
}

// deafAfter is how long a replica may miss the others' changes before its
// agents are sent elsewhere: longer than a reconnect to a restarting
// PostgreSQL, shorter than what agents notice by themselves.
const deafAfter = 10 * time.Second

func newReplicaState() *replicaState {
	return &replicaState{listenError: errors.New("not listening yet"), deafCh: make(chan struct{})}
}

// deaf implements api.Config.Deaf.
func (r *replicaState) deaf() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deafCh
}

// listening records the state of the listening connection, and makes the
// replica deaf after deafAfter without it.
func (r *replicaState) listening(ok bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok {
		r.listenError = nil
		if r.deafTimer != nil {
			r.deafTimer.Stop()
			r.deafTimer = nil
		}
		if r.deafClosed {
			r.deafCh, r.deafClosed = make(chan struct{}), false
		}
		return
	}
	r.listenError = err
	if r.deafTimer == nil && !r.deafClosed {
		r.deafTimer = time.AfterFunc(deafAfter, func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if r.listenError != nil && !r.deafClosed {
				close(r.deafCh)
				r.deafClosed = true
			}
			r.deafTimer = nil
		})
	}
}

func (r *replicaState) listenErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listenError
}

func (r *replicaState) start(p *tasks.Group, st *store.Store, auth *authority.Authority, apiCfg *api.Config, reg prometheus.Registerer, log hclog.Logger) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_ca_leader",
		Help: "1 if this replica holds the shared store's leader lock (it rotates the CA keys), else 0."}, func() float64 {
		if r.leading.Load() {
			return 1
		}
		return 0
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_ca_store_listening",
		Help: "1 if this replica hears the other replicas' changes (PostgreSQL LISTEN), else 0."}, func() float64 {
		if r.listenErr() == nil {
			return 1
		}
		return 0
	}))
	p.Add("leader election", func(ctx context.Context) error {
		var (
			stop context.CancelFunc
			wg   sync.WaitGroup
		)
		lose := func() {
			if stop != nil {
				stop()
				wg.Wait()
				stop = nil
			}
		}
		st.Lead(ctx, func(lead bool) {
			r.leading.Store(lead)
			if !lead {
				log.Warn("lost the lead (the leader lock's connection failed); another replica may rotate the CA keys now")
				lose()
				return
			}
			log.Info("leading: this replica rotates the CA keys")
			auth.Kick()
			if r.fetcher != nil {
				var lctx context.Context
				lctx, stop = context.WithCancel(ctx)
				wg.Add(1)
				go func() { defer wg.Done(); r.fetcher.Run(lctx) }()
			}
		}, func(err error) {
			log.Error("leader election on the store failed; retrying", "error", err)
		})
		lose()
		return nil
	}, nil)
	p.Add("store changes", func(ctx context.Context) error {
		st.Listen(ctx, func(kind string) {
			if kind == store.ChangedCAKeys || kind == store.ChangedUnknown {
				if _, err := auth.Reload(ctx); err != nil && ctx.Err() == nil {
					log.Error("could not reload the CA keys another replica stored", "error", err)
				}
			}
			if r.fetcher != nil && (kind == store.ChangedFederations || kind == store.ChangedUnknown) {
				// A relationship created on another replica is fetched
				// at once by the leader.
				r.fetcher.Reload(ctx)
				r.fetcher.Kick()
			}
			if r.traffic != nil {
				r.traffic.changed(kind)
			}
			if kind != store.ChangedCAKeys && kind != store.ChangedTraffic {
				apiCfg.Changes.Notify()
			}
		}, func(ok bool, err error) {
			r.listening(ok, err)
			if ok {
				log.Info("listening for the other replicas' changes")
			} else {
				log.Error("lost the store's notification connection: this replica misses other replicas' changes until it is back, and sends its agents to another after 10 s", "error", err)
			}
		})
		return nil
	}, nil)
}
