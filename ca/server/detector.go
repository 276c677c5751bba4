package server

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/ca/traffic"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// maxPending bounds the counts a replica that does not lead holds for the
// leader between two publications.
const maxPending = 100_000

// detector runs the traffic engine beside the APIs: reports are queued
// (dropped, and counted, when the queue is full), so that neither the
// agents' reports nor issuance ever wait for it. Alone, it keeps its
// profiles in the store. With replicas (cluster set), only the leader
// learns: the others hand it their counts (in Kubernetes through the API
// server, and it keeps the profiles as TrafficProfile objects; on a shared
// PostgreSQL store through the store, storeTraffic), read back when
// another replica takes over. What it finds goes to the audit log and the
// store (and, in Kubernetes, Events on the profiles).
type detector struct {
	mu      sync.Mutex // guards engine
	engine  *traffic.Engine
	engCfg  traffic.Config
	in      chan []*typesv1.TrafficCount
	shards  chan []*typesv1.TrafficCount
	st      *store.Store
	cluster ClusterTraffic
	audit   *audit.Log
	log     hclog.Logger
	dropped atomic.Int64
	found   *prometheus.CounterVec
	pending []*typesv1.TrafficCount
	leading bool
}

func newDetector(ctx context.Context, cfg Config, st *store.Store, cluster ClusterTraffic, auditLog *audit.Log, reg prometheus.Registerer, log hclog.Logger) (*detector, error) {
	learn := cfg.TrafficLearn
	if learn == 0 {
		learn = -1 // none
	}
	d := &detector{engCfg: traffic.Config{Learn: learn}, in: make(chan []*typesv1.TrafficCount, 1024), shards: make(chan []*typesv1.TrafficCount, 64),
		st: st, cluster: cluster, audit: auditLog, log: log,
		found: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "signet_ca_anomalies_total", Help: "Anomalies found in services' traffic, by kind."}, []string{"kind"})}
	d.engine = traffic.New(d.engCfg)
	reg.MustRegister(d.found, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_ca_traffic_counts_dropped_total",
		Help: "Traffic counts the detector had no room for (its queue, a replica's hand-over to the leader)."}, func() float64 { return float64(d.dropped.Load()) }))
	if cluster != nil {
		return d, nil
	}
	stored, err := st.LoadTrafficProfiles(ctx)
	if err != nil {
		return nil, err
	}
	for server, raw := range stored {
		p := &traffic.Profile{}
		if err := json.Unmarshal(raw, p); err != nil || p.Server != server {
			log.Warn("ignoring a stored traffic profile that does not read", "server", server, "error", err)
			continue
		}
		d.engine.SetProfile(p)
	}
	d.leading = true
	return d, nil
}

// ReportTraffic implements api.TrafficSink.
func (d *detector) ReportTraffic(counts []*typesv1.TrafficCount) {
	select {
	case d.in <- counts:
	default:
		d.dropped.Add(int64(len(counts)))
	}
}

// run feeds the engine until ctx ends; every 10 s it looks at the
// leadership and hands counts over, every minute it folds the hours past,
// every five minutes it stores the profiles.
func (d *detector) run(ctx context.Context) {
	if d.cluster != nil {
		if err := d.cluster.Start(ctx, func(c []*typesv1.TrafficCount) {
			select {
			case d.shards <- c:
			default:
				d.dropped.Add(int64(len(c)))
			}
		}); err != nil {
			d.log.Error("the traffic detector cannot reach the other replicas' counts; learning from this replica's only", "error", err)
			d.cluster = nil
			d.leading = true
		}
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	lastAdvance, lastSave := time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			d.save(context.Background())
			return
		case counts := <-d.in:
			d.follow(ctx)
			if !d.leading {
				if len(d.pending)+len(counts) <= maxPending {
					d.pending = append(d.pending, counts...)
				} else {
					d.dropped.Add(int64(len(counts)))
				}
				continue
			}
			d.learn(ctx, counts)
		case counts := <-d.shards:
			d.follow(ctx)
			if d.leading {
				d.learn(ctx, counts)
			}
		case now := <-tick.C:
			d.follow(ctx)
			if len(d.pending) > 0 && d.cluster != nil {
				n, err := d.cluster.Publish(ctx, d.pending)
				d.dropped.Add(int64(n))
				if err != nil {
					d.log.Warn("could not hand traffic counts to the leader; keeping them", "error", err)
				} else {
					d.pending = d.pending[:0]
				}
			}
			if now.Sub(lastAdvance) >= time.Minute {
				d.mu.Lock()
				d.engine.Advance(now)
				d.mu.Unlock()
				lastAdvance = now
			}
			if now.Sub(lastSave) >= 5*time.Minute {
				d.save(ctx)
				lastSave = now
			}
		}
	}
}

// follow starts or stops learning as this replica gains or loses the
// lead: a new leader starts from the profiles in the cluster.
func (d *detector) follow(ctx context.Context) {
	if d.cluster == nil {
		return
	}
	leading := d.cluster.IsLeader()
	if leading == d.leading {
		return
	}
	e := traffic.New(d.engCfg)
	var backlog []*typesv1.TrafficCount
	if leading {
		profiles, err := d.cluster.LoadAll(ctx)
		if err != nil {
			d.log.Warn("could not read the traffic profiles; learning afresh", "error", err)
		}
		for _, p := range profiles {
			e.SetProfile(p)
		}
		// What the other replicas hold now, and what this one held for
		// the leader.
		backlog = append(d.cluster.Current(), d.pending...)
		d.pending = d.pending[:0]
		d.log.Info("leading: learning services' traffic", "profiles", len(profiles))
	}
	d.mu.Lock()
	d.engine, d.leading = e, leading
	d.mu.Unlock()
	if len(backlog) > 0 {
		d.learn(ctx, backlog)
	}
}

func (d *detector) learn(ctx context.Context, counts []*typesv1.TrafficCount) {
	var found []traffic.Anomaly
	d.mu.Lock()
	for _, tc := range counts {
		found = append(found, d.engine.Add(tc)...)
	}
	// The anomalies are in the audit log and the store before the counts
	// that showed them can be seen (Observations reads the engine under
	// d.mu): whoever sees a call in the observed calls also sees what it
	// set off.
	d.store(ctx, found)
	d.mu.Unlock()
	d.announce(ctx, found)
}

// store writes anomalies to the audit log and the store.
func (d *detector) store(ctx context.Context, found []traffic.Anomaly) {
	if len(found) == 0 {
		return
	}
	recs := make([]audit.Record, len(found))
	pbs := make([]*typesv1.Anomaly, len(found))
	for i, a := range found {
		recs[i] = audit.Record{Event: "anomaly." + a.Kind, Actor: "signet-ca", SPIFFEID: a.Server, Peer: a.Peer, Method: a.Method,
			Window: a.At, Result: "detected", Reason: a.Detail}
		pbs[i] = &typesv1.Anomaly{Kind: a.Kind, Server: a.Server, Peer: a.Peer, Method: a.Method, At: a.At.Unix(), Detail: a.Detail}
		d.found.WithLabelValues(a.Kind).Inc()
	}
	if err := d.audit.Write(recs...); err != nil {
		d.log.Error("could not write anomalies to the audit log", "error", err)
	}
	if err := d.st.PutAnomalies(ctx, pbs); err != nil {
		d.log.Error("could not store anomalies", "error", err)
	}
}

// announce saves the profiles of the servers with anomalies and records
// the anomalies as Events, in Kubernetes.
func (d *detector) announce(ctx context.Context, found []traffic.Anomaly) {
	if d.cluster == nil {
		return
	}
	saved := map[string]bool{}
	for _, a := range found {
		if !saved[a.Server] {
			d.mu.Lock()
			p := d.engine.Profiles()[a.Server]
			d.mu.Unlock()
			if p != nil {
				if err := d.saveProfile(ctx, p); err != nil {
					d.log.Warn("could not write a traffic profile", "server", a.Server, "error", err)
				}
			}
			saved[a.Server] = true
		}
		if err := d.cluster.Event(ctx, a); err != nil {
			d.log.Warn("could not record an anomaly as an Event", "server", a.Server, "error", err)
		}
	}
}

// saveProfile writes one profile to the cluster, under the engine's lock
// while it encodes.
func (d *detector) saveProfile(ctx context.Context, p *traffic.Profile) error {
	d.mu.Lock()
	raw, err := json.Marshal(p)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	cp := &traffic.Profile{}
	if err := json.Unmarshal(raw, cp); err != nil {
		return err
	}
	return d.cluster.Save(ctx, cp)
}

// Observations implements api.TrafficSink. A replica that does not lead
// learns nothing itself: it answers from the profiles the leader stored
// last (every five minutes, and on each anomaly).
func (d *detector) Observations(since time.Time, keep func(server string) bool) []traffic.Observation {
	d.mu.Lock()
	if d.leading || d.cluster == nil {
		defer d.mu.Unlock()
		return traffic.Observations(d.engine.Profiles(), since, keep)
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stored, err := d.cluster.LoadAll(ctx)
	if err != nil {
		d.log.Warn("could not read the leader's traffic profiles", "error", err)
		return nil
	}
	profiles := make(map[string]*traffic.Profile, len(stored))
	for _, p := range stored {
		profiles[p.Server] = p
	}
	return traffic.Observations(profiles, since, keep)
}

func (d *detector) save(ctx context.Context) {
	if !d.leading {
		return
	}
	out := map[string][]byte{}
	d.mu.Lock()
	for server, p := range d.engine.Profiles() {
		raw, err := json.Marshal(p)
		if err != nil {
			continue
		}
		out[server] = raw
	}
	d.mu.Unlock()
	if len(out) == 0 {
		return
	}
	if d.cluster != nil {
		for server, raw := range out {
			p := &traffic.Profile{}
			if json.Unmarshal(raw, p) == nil {
				if err := d.cluster.Save(ctx, p); err != nil {
					d.log.Warn("could not write a traffic profile", "server", server, "error", err)
				}
			}
		}
		return
	}
	if err := d.st.SaveTrafficProfiles(ctx, out); err != nil {
		d.log.Warn("could not store the traffic profiles", "error", err)
	}
}
