package sdk

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// Limits of the decision buffer: what does not fit is dropped, counted and
// reported with the next delivery. Requests never wait for the audit.
const (
	maxDenials    = 10000
	maxAllowKeys  = 10000
	flushInterval = 2 * time.Second
)

// Follow connects az to the local agent until ctx ends, and returns
// then: the central AccessPolicies that protect this service become
// az's central rules (SetCentral) as they change, and az's decisions
// go to the CA's audit log (every denial, and every shadow denial of
// audit-mode policies; allowed calls counted per peer and minute), buffered and delivered at least once, with the traffic
// its servers counted (per caller, method and minute: calls, denials,
// bytes each way, latency). Run it in a
// goroutine; it reconnects by itself. A policy update that does not
// compile leaves the rules in force and is reported to onError, as are
// connection errors (onError may be nil).
func (s *Source) Follow(ctx context.Context, az *authz.Authorizer, onError func(error)) error {
	if onError == nil {
		onError = func(error) {}
	}
	conn, err := grpc.NewClient(s.target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rec := &recorder{counts: map[allowKey]int64{}, server: s}
	defer az.OnDecision(rec.note)()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rec.run(ctx, workloadv1.NewDecisionsClient(conn), onError)
	}()
	policies := workloadv1.NewPolicyClient(conn)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := watch(ctx, policies, az)
		if ctx.Err() != nil {
			break
		}
		onError(err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	wg.Wait()
	return nil
}

func watch(ctx context.Context, c workloadv1.PolicyClient, az *authz.Authorizer) error {
	stream, err := c.Watch(ctx, &workloadv1.WatchPoliciesRequest{})
	if err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		rules, err := authz.PolicyRules(resp.GetPolicies())
		if err == nil {
			err = az.SetCentral(rules)
		}
		var shadow []authz.Rule
		if err == nil {
			shadow, err = authz.ShadowRules(resp.GetPolicies())
		}
		if err == nil {
			err = az.SetShadow(shadow)
		}
		if err != nil {
			return errors.Join(errors.New("sdk: central policy refused"), err)
		}
	}
}

// target is the gRPC address of the Workload API.
func (s *Source) target() string {
	if s.addr != "" {
		return s.addr
	}
	return os.Getenv("SPIFFE_ENDPOINT_SOCKET")
}

type allowKey struct {
	peer, method string
	minute       int64
}

// recorder buffers decisions for the agent.
type recorder struct {
	server *Source

	mu      sync.Mutex
	denials []*typesv1.Decision
	counts  map[allowKey]int64
	dropped int64
}

func (r *recorder) note(d authz.Decision) {
	peer, method, allowed := d.Peer.String(), d.Method, d.Allowed
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.Shadow {
		if len(r.denials) >= maxDenials {
			r.dropped++
			return
		}
		r.denials = append(r.denials, &typesv1.Decision{Peer: peer, Method: method, Time: now.Unix(), Shadow: true})
		return
	}
	if allowed {
		k := allowKey{peer: peer, method: method, minute: now.Unix() / 60 * 60}
		if _, ok := r.counts[k]; !ok && len(r.counts) >= maxAllowKeys {
			r.dropped++
			return
		}
		r.counts[k]++
		return
	}
	if len(r.denials) >= maxDenials {
		r.dropped++
		return
	}
	r.denials = append(r.denials, &typesv1.Decision{Peer: peer, Method: method, Time: now.Unix()})
}

// take removes what is buffered: every denial, and the allow counts so
// far (a minute's count may go out in parts; each part names its minute).
func (r *recorder) take() ([]*typesv1.Decision, map[allowKey]int64, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	den, counts, d := r.denials, r.counts, r.dropped
	r.denials, r.counts, r.dropped = nil, map[allowKey]int64{}, 0
	return den, counts, d
}

// giveBack returns what failed to send, for the next attempt.
func (r *recorder) giveBack(den []*typesv1.Decision, counts map[allowKey]int64, dropped int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropped += dropped
	for _, d := range den {
		if len(r.denials) >= maxDenials {
			r.dropped++
			continue
		}
		r.denials = append(r.denials, d)
	}
	for k, n := range counts {
		r.counts[k] += n
	}
}

func (r *recorder) run(ctx context.Context, c workloadv1.DecisionsClient, onError func(error)) {
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		final := false
		select {
		case <-ctx.Done():
			final = true
		case <-t.C:
		}
		r.flush(ctx, c, final, onError)
		if final {
			return
		}
	}
}

func (r *recorder) flush(ctx context.Context, c workloadv1.DecisionsClient, final bool, onError func(error)) {
	den, counts, dropped := r.take()
	tr, trDropped := r.server.traffic.take()
	if len(den) == 0 && len(counts) == 0 && dropped == 0 && len(tr) == 0 && trDropped == 0 {
		return
	}
	id, err := r.server.ID()
	if err != nil {
		r.giveBack(den, counts, dropped)
		r.server.traffic.giveBack(tr, trDropped)
		return
	}
	req := &typesv1.DecisionReport{Dropped: dropped + trDropped, Traffic: trafficProto(id.String(), tr)}
	for _, d := range den {
		d.Server = id.String()
		req.Decisions = append(req.Decisions, d)
	}
	for k, n := range counts {
		req.Decisions = append(req.Decisions, &typesv1.Decision{Server: id.String(), Peer: k.peer, Method: k.method, Allowed: true, Count: n, Time: k.minute})
	}
	sendCtx := ctx
	if final {
		// The service is stopping: one last try, briefly.
		var cancel context.CancelFunc
		sendCtx, cancel = context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "workload.spiffe.io", "true"), 2*time.Second)
		defer cancel()
	}
	if _, err := c.Report(sendCtx, req); err != nil {
		r.giveBack(den, counts, dropped)
		r.server.traffic.giveBack(tr, trDropped)
		onError(err)
	}
}
