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

// detector runs the traffic engine beside the APIs: reports are queued
// (dropped, and counted, when the queue is full), so that neither the
// agents' reports nor issuance ever wait for it. It keeps its profiles in
// the store, and writes what it finds to the audit log and the store.
type detector struct {
	mu      sync.Mutex // guards engine
	engine  *traffic.Engine
	in      chan []*typesv1.TrafficCount
	st      *store.Store
	audit   *audit.Log
	log     hclog.Logger
	dropped atomic.Int64
	found   *prometheus.CounterVec
}

func newDetector(ctx context.Context, cfg Config, st *store.Store, auditLog *audit.Log, reg prometheus.Registerer, log hclog.Logger) (*detector, error) {
	learn := cfg.TrafficLearn
	if learn == 0 {
		learn = -1 // none
	}
	d := &detector{engine: traffic.New(traffic.Config{Learn: learn}), in: make(chan []*typesv1.TrafficCount, 1024), st: st, audit: auditLog, log: log,
		found: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "signet_ca_anomalies_total", Help: "Anomalies found in services' traffic, by kind."}, []string{"kind"})}
	reg.MustRegister(d.found, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_ca_traffic_counts_dropped_total",
		Help: "Traffic counts the detector's queue had no room for."}, func() float64 { return float64(d.dropped.Load()) }))
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

// run feeds the engine until ctx ends, folds the hours past every minute,
// and stores the profiles every five minutes and at the end.
func (d *detector) run(ctx context.Context) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	lastSave := time.Now()
	for {
		select {
		case <-ctx.Done():
			d.save(context.Background())
			return
		case counts := <-d.in:
			var found []traffic.Anomaly
			d.mu.Lock()
			for _, tc := range counts {
				found = append(found, d.engine.Add(tc)...)
			}
			d.mu.Unlock()
			d.record(ctx, found)
		case now := <-tick.C:
			d.mu.Lock()
			d.engine.Advance(now)
			d.mu.Unlock()
			if now.Sub(lastSave) >= 5*time.Minute {
				d.save(ctx)
				lastSave = now
			}
		}
	}
}

func (d *detector) record(ctx context.Context, found []traffic.Anomaly) {
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

// Observations implements api.TrafficSink.
func (d *detector) Observations(since time.Time, keep func(server string) bool) []traffic.Observation {
	d.mu.Lock()
	defer d.mu.Unlock()
	return traffic.Observations(d.engine.Profiles(), since, keep)
}

func (d *detector) save(ctx context.Context) {
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
	if err := d.st.SaveTrafficProfiles(ctx, out); err != nil {
		d.log.Warn("could not store the traffic profiles", "error", err)
	}
}
