package server

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/ca/traffic"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// maxShardCounts bounds the counts of one hand-over to the leader.
const maxShardCounts = 20_000

// storeTraffic is ClusterTraffic for replicas that share a PostgreSQL
// store, as ca/clustertraffic is for replicas in Kubernetes: a replica
// that does not lead stores the counts its agents report as a shard; the
// leader, woken by the store's notification, takes the shards (each once)
// and learns from them; profiles are kept in the store. Only the leader
// learns, so a profile is learned from every replica's agents, and a
// caller is new once, not once per replica.
type storeTraffic struct {
	leading func() bool
	st      *store.Store
	replica string
	log     hclog.Logger
	kick    chan struct{}
}

func newStoreTraffic(leading func() bool, st *store.Store, log hclog.Logger) *storeTraffic {
	host, _ := os.Hostname()
	return &storeTraffic{leading: leading, st: st, replica: fmt.Sprintf("%s/%d", host, os.Getpid()), log: log, kick: make(chan struct{}, 1)}
}

// changed is told of the store's changes: shards may be waiting.
func (t *storeTraffic) changed(kind string) {
	if kind != store.ChangedTraffic && kind != store.ChangedUnknown {
		return
	}
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// IsLeader implements ClusterTraffic.
func (t *storeTraffic) IsLeader() bool { return t.leading() }

// Start implements ClusterTraffic: while this replica leads, every shard
// stored goes to onShard.
func (t *storeTraffic) Start(ctx context.Context, onShard func([]*typesv1.TrafficCount)) error {
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.kick:
			}
			if !t.leading() {
				continue
			}
			for _, counts := range t.take(ctx) {
				onShard(counts)
			}
		}
	}()
	return nil
}

// take takes every stored shard, decoded.
func (t *storeTraffic) take(ctx context.Context) [][]*typesv1.TrafficCount {
	raws, err := t.st.TakeTrafficShards(ctx)
	if err != nil {
		if ctx.Err() == nil {
			t.log.Warn("could not take the traffic counts other replicas handed over", "error", err)
		}
		return nil
	}
	out := make([][]*typesv1.TrafficCount, 0, len(raws))
	for _, raw := range raws {
		var r typesv1.DecisionReport
		if err := proto.Unmarshal(raw, &r); err != nil {
			t.log.Warn("ignoring a traffic shard that does not read", "error", err)
			continue
		}
		out = append(out, r.GetTraffic())
	}
	return out
}

// Current implements ClusterTraffic.
func (t *storeTraffic) Current() []*typesv1.TrafficCount {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var all []*typesv1.TrafficCount
	for _, counts := range t.take(ctx) {
		all = append(all, counts...)
	}
	return all
}

// Publish implements ClusterTraffic.
func (t *storeTraffic) Publish(ctx context.Context, counts []*typesv1.TrafficCount) (int, error) {
	dropped := 0
	if len(counts) > maxShardCounts {
		dropped, counts = len(counts)-maxShardCounts, counts[:maxShardCounts]
	}
	raw, err := proto.Marshal(&typesv1.DecisionReport{Traffic: counts})
	if err != nil {
		return 0, err
	}
	return dropped, t.st.PutTrafficShard(ctx, t.replica, raw, time.Now())
}

// Save implements ClusterTraffic.
func (t *storeTraffic) Save(ctx context.Context, p *traffic.Profile) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return t.st.SaveTrafficProfiles(ctx, map[string][]byte{p.Server: raw})
}

// LoadAll implements ClusterTraffic.
func (t *storeTraffic) LoadAll(ctx context.Context) ([]*traffic.Profile, error) {
	stored, err := t.st.LoadTrafficProfiles(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*traffic.Profile, 0, len(stored))
	for server, raw := range stored {
		p := &traffic.Profile{}
		if err := json.Unmarshal(raw, p); err != nil || p.Server != server {
			t.log.Warn("ignoring a stored traffic profile that does not read", "server", server, "error", err)
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// Event implements ClusterTraffic: outside Kubernetes an anomaly is in
// the audit log and the store only.
func (t *storeTraffic) Event(context.Context, traffic.Anomaly) error { return nil }
