package api

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Bounds of one acknowledgement.
const (
	maxAckKeys      = 64
	maxAckWorkloads = 4096
)

// AckBundle implements agentv1.NodeServer: it records what the calling
// agent holds, for every replica to see.
func (s *NodeServer) AckBundle(ctx context.Context, req *agentv1.AckBundleRequest) (*agentv1.AckBundleResponse, error) {
	const method = "AckBundle"
	c, err := s.authAgent(ctx, method)
	if err != nil {
		return nil, err
	}
	ack := req.GetAck()
	if err := checkAck(ack); err != nil {
		return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: method + ": " + err.Error()})
	}
	ack.AgentId, ack.Node, ack.AgentPod, ack.AckedAt = c.id.String(), c.agent.NodeName, c.pod, s.cfg.Now().Unix()
	if c.node != "" {
		ack.Node = c.node
	}
	if err := s.cfg.Acks.PutBundleAck(ctx, ack); err != nil {
		return nil, s.cfg.internal(ctx, "store the bundle acknowledgement", err)
	}
	return &agentv1.AckBundleResponse{}, nil
}

func checkAck(ack *typesv1.BundleAck) error {
	if ack == nil {
		return errors.New("ack: required")
	}
	if len(ack.GetX509Authorities()) > maxAckKeys || len(ack.GetJwtAuthorities()) > maxAckKeys ||
		len(ack.GetSvidsByRoot()) > maxAckKeys || len(ack.GetSvidsByIntermediate()) > maxAckKeys {
		return fmt.Errorf("ack: more than %d keys of a kind", maxAckKeys)
	}
	if len(ack.GetWorkloads()) > maxAckWorkloads {
		return fmt.Errorf("ack: more than %d workloads", maxAckWorkloads)
	}
	for i, w := range ack.GetWorkloads() {
		if len(w.GetX509Authorities()) > maxAckKeys || len(w.GetJwtAuthorities()) > maxAckKeys || len(w.GetSpiffeId()) > 2048 || len(w.GetInstance()) > 512 {
			return fmt.Errorf("ack: workloads[%d]: too large", i)
		}
	}
	return nil
}

// caStatus is every key of the CA and who holds each: live agents are
// those that must acknowledge a root before it is activated.
func (c *Config) caStatus(ctx context.Context) (*adminv1.GetCAStatusResponse, error) {
	acks, err := c.Acks.ListBundleAcks(ctx)
	if err != nil {
		return nil, err
	}
	live, err := c.liveAgents(ctx, acks)
	if err != nil {
		return nil, err
	}
	revoked, err := c.RevokedKeys(ctx)
	if err != nil {
		return nil, err
	}
	b, _ := c.Authority.Bundle()
	resp := &adminv1.GetCAStatusResponse{BundleSequence: b.Sequence, Acks: acks}
	byAgent := map[string]*typesv1.BundleAck{}
	for _, a := range acks {
		byAgent[a.GetAgentId()] = a
	}
	for id := range live {
		resp.LiveAgents = append(resp.LiveAgents, id)
	}
	sort.Strings(resp.LiveAgents)
	for _, k := range c.Authority.Keys() {
		ks := &adminv1.CAKeyStatus{Id: k.ID, Kind: k.Kind, State: k.State, Serial: k.Serial, ParentId: k.ParentID, KeyType: k.KeyType,
			NotBefore: k.NotBefore.Unix(), NotAfter: k.NotAfter.Unix()}
		_, ks.Revoked = revoked[k.ID]
		for _, id := range resp.LiveAgents {
			a := byAgent[id]
			switch k.Kind {
			case authority.KindIntermediate:
				ks.Svids += a.GetSvidsByIntermediate()[k.ID]
				continue
			case authority.KindRoot:
				ks.Svids += a.GetSvidsByRoot()[k.ID]
			}
			held := a.GetX509Authorities()
			if k.Kind == authority.KindJWT {
				held = a.GetJwtAuthorities()
			}
			if slices.Contains(held, k.ID) {
				ks.AgentsHolding++
			} else {
				ks.AgentsLagging = append(ks.AgentsLagging, id)
			}
			for _, w := range a.GetWorkloads() {
				held := w.GetX509Authorities()
				if k.Kind == authority.KindJWT {
					// Workloads that hold no JWT bundle (the SDK's
					// mutual TLS) do not count.
					if held = w.GetJwtAuthorities(); len(held) == 0 {
						continue
					}
				}
				if slices.Contains(held, k.ID) {
					ks.WorkloadsHolding++
				} else {
					ks.WorkloadsLagging = append(ks.WorkloadsLagging, fmt.Sprintf("%s (%s on %s)", w.GetSpiffeId(), w.GetInstance(), agentName(a)))
				}
			}
		}
		resp.Keys = append(resp.Keys, ks)
	}
	// Revoked keys the CA no longer holds, while agents still hold SVIDs
	// under them: the re-issue still to do.
	held := map[string]bool{}
	for _, k := range resp.Keys {
		held[k.GetId()] = true
	}
	for id := range revoked {
		if held[id] {
			continue
		}
		ks := &adminv1.CAKeyStatus{Id: id, State: "removed", Revoked: true}
		for _, agent := range resp.LiveAgents {
			a := byAgent[agent]
			if n := a.GetSvidsByIntermediate()[id]; n > 0 {
				ks.Kind, ks.Svids = authority.KindIntermediate, ks.Svids+n
			}
			if n := a.GetSvidsByRoot()[id]; n > 0 {
				ks.Kind, ks.Svids = authority.KindRoot, ks.Svids+n
			}
		}
		if ks.Svids > 0 {
			resp.Keys = append(resp.Keys, ks)
		}
	}
	return resp, nil
}

// agentName is how a lagging workload's agent is named: its node, or ID.
func agentName(a *typesv1.BundleAck) string {
	if a.GetNode() != "" {
		return "node " + a.GetNode()
	}
	return a.GetAgentId()
}

// liveAgents are the agents that must acknowledge a root: in Kubernetes,
// those whose agent pod runs (by their acknowledgements: an agent acks at
// its first sync); else those the store holds, not evicted, whose SVID has
// not expired (a stopped agent counts, and lags, until then).
func (c *Config) liveAgents(ctx context.Context, acks []*typesv1.BundleAck) (map[string]bool, error) {
	live := map[string]bool{}
	if c.AgentPods != nil {
		for _, a := range acks {
			if alive, _, _ := c.AgentPods.AgentPod(a.GetNode(), a.GetAgentPod()); alive {
				live[a.GetAgentId()] = true
			}
		}
		return live, nil
	}
	agents, err := c.Store.ListAgents(ctx)
	if err != nil {
		return nil, err
	}
	now := c.Now()
	for _, a := range agents {
		if !a.Evicted() && now.Before(a.ExpiresAt) {
			live[a.SPIFFEID] = true
		}
	}
	return live, nil
}

// Laggards returns the live agents that have not acknowledged holding
// the root (or JWT key) id.
func (c *Config) Laggards(ctx context.Context, id string) ([]string, error) {
	st, err := c.caStatus(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range st.GetKeys() {
		if k.GetId() == id {
			return k.GetAgentsLagging(), nil
		}
	}
	return nil, fmt.Errorf("no key %q", id)
}

// GetCAStatus implements adminv1.AdminServer.
func (s *AdminServer) GetCAStatus(ctx context.Context, _ *adminv1.GetCAStatusRequest) (*adminv1.GetCAStatusResponse, error) {
	st, err := s.cfg.caStatus(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "CA status", err)
	}
	return st, nil
}

func (s *AdminServer) keyStatus(ctx context.Context, id string) (*adminv1.CAKeyStatus, error) {
	st, err := s.cfg.caStatus(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "CA status", err)
	}
	for _, k := range st.GetKeys() {
		if k.GetId() == id {
			return k, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no key %q", id)
}

// PrepareRoot implements adminv1.AdminServer.
func (s *AdminServer) PrepareRoot(ctx context.Context, _ *adminv1.PrepareRootRequest) (*adminv1.PrepareRootResponse, error) {
	k, err := s.cfg.Authority.PrepareRoot(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "prepare root", err)
	}
	ks, err := s.keyStatus(ctx, k.ID)
	if err != nil {
		return nil, err
	}
	return &adminv1.PrepareRootResponse{Root: ks}, nil
}

// ActivateRoot implements adminv1.AdminServer.
func (s *AdminServer) ActivateRoot(ctx context.Context, req *adminv1.ActivateRootRequest) (*adminv1.ActivateRootResponse, error) {
	laggards, err := s.cfg.Laggards(ctx, req.GetId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "activate root: %v", err)
	}
	if len(laggards) > 0 && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "%d live agents have not acknowledged root %s: %s (wait for them, or force)",
			len(laggards), req.GetId(), strings.Join(laggards, ", "))
	}
	prev, err := s.cfg.Authority.ActivateRoot(ctx, req.GetId())
	if errors.Is(err, authority.ErrNoPreparedRoot) {
		return nil, status.Errorf(codes.FailedPrecondition, "activate root: %v", err)
	}
	if err != nil {
		return nil, s.cfg.internal(ctx, "activate root", err)
	}
	if len(laggards) > 0 {
		why := req.GetWhy()
		if why == "" {
			why = "forced by an operator"
		}
		if err := s.cfg.auditOrFail(audit.Record{Event: audit.KeyActivateUnacknowledged, Actor: actor(ctx), Result: audit.Success, Reason: why, Laggards: laggards,
			Key: &audit.KeyInfo{Kind: authority.KindRoot, ID: req.GetId(), State: authority.StateActive}}); err != nil {
			return nil, err
		}
	}
	resp := &adminv1.ActivateRootResponse{Laggards: laggards}
	if req.GetRevokePrevious() && prev.ID != "" {
		r, err := s.CreateRevocation(ctx, &adminv1.CreateRevocationRequest{GraceSeconds: req.GraceSeconds,
			Revocation: &typesv1.Revocation{CaKey: prev.ID, Reason: "emergency root rotation: root " + req.GetId() + " replaced it"}})
		if err != nil {
			return nil, err
		}
		resp.Revocation = r.GetRevocation()
	}
	if resp.Root, err = s.keyStatus(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return resp, nil
}

// StatusCollector exports, at each scrape, who holds the CA's keys: live
// agents by the bundle sequence they acknowledged, per root and JWT key
// the live agents that do not hold it, and the SVIDs agents hold under
// revoked keys (the re-issue still to do).
type StatusCollector struct {
	cfg                                   *Config
	byAckedSequence, behind, lag, pending *prometheus.Desc
}

// NewStatusCollector returns the collector of cfg's status.
func NewStatusCollector(cfg *Config) *StatusCollector {
	return &StatusCollector{cfg: cfg,
		byAckedSequence: prometheus.NewDesc("signet_ca_bundle_ack_agents", "Live agents by the trust bundle sequence they last acknowledged (none: never).", []string{"sequence"}, nil),
		behind:          prometheus.NewDesc("signet_ca_bundle_agents_behind", "Live agents that have not acknowledged the current trust bundle.", nil, nil),
		lag:             prometheus.NewDesc("signet_ca_key_laggards", "Live agents that do not hold a root or JWT key of the bundle.", []string{"kind", "key", "state"}, nil),
		pending:         prometheus.NewDesc("signet_ca_reissue_pending_svids", "X509-SVIDs live agents hold under a revoked intermediate or root: the re-issue still to do.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *StatusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.byAckedSequence
	ch <- c.behind
	ch <- c.lag
	ch <- c.pending
}

// Collect implements prometheus.Collector.
func (c *StatusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.cfg.caStatus(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.behind, err)
		return
	}
	acked := map[string]*typesv1.BundleAck{}
	for _, a := range st.GetAcks() {
		acked[a.GetAgentId()] = a
	}
	bySeq := map[string]float64{}
	behind := 0.0
	for _, id := range st.GetLiveAgents() {
		seq := "none"
		if a, ok := acked[id]; ok {
			seq = strconv.FormatUint(a.GetBundleSequence(), 10)
		}
		bySeq[seq]++
		if a, ok := acked[id]; !ok || a.GetBundleSequence() < st.GetBundleSequence() {
			behind++
		}
	}
	for seq, n := range bySeq {
		ch <- prometheus.MustNewConstMetric(c.byAckedSequence, prometheus.GaugeValue, n, seq)
	}
	ch <- prometheus.MustNewConstMetric(c.behind, prometheus.GaugeValue, behind)
	pending := 0.0
	for _, k := range st.GetKeys() {
		if k.GetKind() != authority.KindIntermediate {
			ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(len(k.GetAgentsLagging())), k.GetKind(), k.GetId(), k.GetState())
		}
		if k.GetRevoked() && k.GetKind() != authority.KindJWT {
			pending += float64(k.GetSvids())
		}
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, pending)
}

// ListAnomalies implements adminv1.AdminServer.
func (s *AdminServer) ListAnomalies(ctx context.Context, req *adminv1.ListAnomaliesRequest) (*adminv1.ListAnomaliesResponse, error) {
	since := time.Unix(req.GetSince(), 0)
	if req.GetSince() == 0 {
		since = s.cfg.Now().Add(-24 * time.Hour)
	}
	as, err := s.cfg.Store.ListAnomalies(ctx, since, req.GetServer())
	if err != nil {
		return nil, s.cfg.internal(ctx, "list anomalies", err)
	}
	return &adminv1.ListAnomaliesResponse{Anomalies: as}, nil
}

// ListObservedCalls implements adminv1.AdminServer.
func (s *AdminServer) ListObservedCalls(_ context.Context, req *adminv1.ListObservedCallsRequest) (*adminv1.ListObservedCallsResponse, error) {
	if s.cfg.Traffic == nil {
		return nil, status.Error(codes.FailedPrecondition, "the traffic detector is off (signet-ca --traffic-detector=false)")
	}
	keep := func(server string) bool {
		if req.GetServer() != "" && server != req.GetServer() {
			return false
		}
		if ns := req.GetNamespace(); ns != "" {
			id, err := spiffeid.FromString(server)
			if err != nil || !strings.HasPrefix(id.Path(), "/ns/"+ns+"/") {
				return false
			}
		}
		return true
	}
	resp := &adminv1.ListObservedCallsResponse{}
	for _, o := range s.cfg.Traffic.Observations(time.Unix(req.GetSince(), 0), keep) {
		c := &adminv1.ObservedCall{Server: o.Server, Peer: o.Peer, Method: o.Method, LastSeen: o.LastSeen.Unix()}
		for h := range o.Hours {
			if o.Hours[h] {
				c.Hours = append(c.Hours, uint32(h))
			}
			if o.Seen[h] {
				c.Seen = append(c.Seen, uint32(h))
			}
		}
		resp.Calls = append(resp.Calls, c)
	}
	return resp, nil
}
