package workloadapi

import (
	"context"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/agent/cache"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// DecisionSink takes services' authorization decisions to the CA.
type DecisionSink interface {
	ReportDecisions(ctx context.Context, req *typesv1.DecisionReport) error
}

// PolicyServer serves signet.workload.v1.Policy: each caller gets the
// access policies whose targets are among its own identities.
type PolicyServer struct {
	workloadv1.UnimplementedPolicyServer
	h *Handler
}

// NewPolicyServer returns the Policy service of h's agent.
func NewPolicyServer(h *Handler) *PolicyServer { return &PolicyServer{h: h} }

// DecisionServer serves signet.workload.v1.Decisions.
type DecisionServer struct {
	workloadv1.UnimplementedDecisionsServer
	h    *Handler
	sink DecisionSink
}

// NewDecisionServer returns the Decisions service, forwarding to sink.
func NewDecisionServer(h *Handler, sink DecisionSink) *DecisionServer {
	return &DecisionServer{h: h, sink: sink}
}

// callerIDs returns the SPIFFE IDs the caller's selectors give it.
func callerIDs(snap *cache.Snapshot, c caller) map[string]bool {
	ids := map[string]bool{}
	for _, e := range snap.MatchEntries(c.selectors) {
		ids[e.SPIFFEID.String()] = true
	}
	return ids
}

// identified attests the caller and returns it with a snapshot in which
// it has at least one identity (asking the CA for its pod's if needed).
func (h *Handler) identified(ctx context.Context, event string) (caller, *cache.Snapshot, <-chan struct{}, error) {
	c, err := h.attest(ctx, event)
	if err != nil {
		return caller{}, nil, nil, err
	}
	snap, changed, err := h.lookUp(ctx, &c, event)
	if err != nil {
		return caller{}, nil, nil, err
	}
	if len(snap.MatchEntries(c.selectors)) == 0 {
		h.refuse(c, event, "no entry matches the caller's selectors")
		return caller{}, nil, nil, errNoIdentity
	}
	return c, snap, changed, nil
}

func policiesFor(all []*typesv1.AccessPolicy, ids map[string]bool) ([]*typesv1.AccessPolicy, string) {
	var out []*typesv1.AccessPolicy
	var key strings.Builder
	for _, p := range all {
		for id := range ids {
			if matchTarget(p.GetTarget(), id) {
				out = append(out, p)
				fmt.Fprintf(&key, "%s@%d;", p.GetName(), p.GetRevision())
				break
			}
		}
	}
	return out, key.String()
}

// Watch implements workloadv1.PolicyServer.
func (s *PolicyServer) Watch(_ *workloadv1.WatchPoliciesRequest, stream workloadv1.Policy_WatchServer) error {
	return s.h.watch(stream.Context(), "workload.watch_policies", func(c caller, snap *cache.Snapshot) (string, []string, func() error) {
		pols, key := policiesFor(snap.Policies, callerIDs(snap, c))
		names := make([]string, len(pols))
		for i, p := range pols {
			names[i] = p.GetName()
		}
		return key, names, func() error { return stream.Send(&workloadv1.WatchPoliciesResponse{Policies: pols}) }
	})
}

// watch serves an extension stream to an identified caller: at the start
// and on every change of the cache, view gives the caller's answer (a key
// that changes with it, the names to audit, and how to send it), which is
// sent and audited when its key changed.
func (h *Handler) watch(ctx context.Context, event string, view func(caller, *cache.Snapshot) (key string, names []string, send func() error)) error {
	c, snap, changed, err := h.identified(ctx, event)
	if err != nil {
		return err
	}
	sent := "\x00"
	for {
		key, names, send := view(c, snap)
		if key != sent {
			if err := send(); err != nil {
				return err
			}
			h.grant(c, event, names)
			sent = key
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			snap, changed = h.cfg.Cache.Snapshot()
		}
	}
}

// Report implements workloadv1.DecisionsServer: a caller reports only
// decisions it made itself, as one of its own identities.
func (s *DecisionServer) Report(ctx context.Context, req *typesv1.DecisionReport) (*typesv1.DecisionReportAck, error) {
	const event = "workload.report_decisions"
	c, snap, _, err := s.h.identified(ctx, event)
	if err != nil {
		return nil, err
	}
	ids := callerIDs(snap, c)
	for i, d := range req.GetDecisions() {
		if !ids[d.GetServer()] {
			s.h.refuse(c, event, fmt.Sprintf("decisions[%d].server %q is not the caller", i, d.GetServer()))
			return nil, status.Errorf(codes.PermissionDenied, "decisions[%d]: server %q is not one of the caller's identities", i, d.GetServer())
		}
	}
	for i, tc := range req.GetTraffic() {
		if !ids[tc.GetServer()] {
			s.h.refuse(c, event, fmt.Sprintf("traffic[%d].server %q is not the caller", i, tc.GetServer()))
			return nil, status.Errorf(codes.PermissionDenied, "traffic[%d]: server %q is not one of the caller's identities", i, tc.GetServer())
		}
	}
	if err := s.sink.ReportDecisions(ctx, req); err != nil {
		return nil, status.Errorf(codes.Unavailable, "the CA did not take the decisions: %v", status.Convert(err).Message())
	}
	return &typesv1.DecisionReportAck{}, nil
}

func matchTarget(target, id string) bool {
	if !strings.Contains(target, "*") {
		return target == id
	}
	sid, err := spiffeid.FromString(id)
	return err == nil && authz.TargetMatches(target, sid)
}

// CSRSigner gets workloads' own CSRs signed by the CA.
type CSRSigner interface {
	SignWorkloadCSR(ctx context.Context, entryID string, csr []byte) ([][]byte, error)
}

// KeyServer serves signet.workload.v1.Keys.
type KeyServer struct {
	workloadv1.UnimplementedKeysServer
	h      *Handler
	signer CSRSigner
}

// NewKeyServer returns the Keys service, signing through signer.
func NewKeyServer(h *Handler, signer CSRSigner) *KeyServer { return &KeyServer{h: h, signer: signer} }

// SignX509SVID implements workloadv1.KeysServer.
func (s *KeyServer) SignX509SVID(ctx context.Context, req *workloadv1.SignX509SVIDRequest) (*workloadv1.SignX509SVIDResponse, error) {
	const event = "workload.sign_x509_svid"
	c, snap, _, err := s.h.identified(ctx, event)
	if err != nil {
		return nil, err
	}
	var entryID, id string
	for _, e := range snap.MatchEntries(c.selectors) {
		if req.GetSpiffeId() == "" || e.SPIFFEID.String() == req.GetSpiffeId() {
			entryID, id = e.ID, e.SPIFFEID.String()
			break
		}
	}
	if entryID == "" {
		s.h.refuse(c, event, fmt.Sprintf("the caller has no identity %q", req.GetSpiffeId()))
		return nil, status.Errorf(codes.PermissionDenied, "the caller has no identity %q", req.GetSpiffeId())
	}
	chain, err := s.signer.SignWorkloadCSR(ctx, entryID, req.GetCsr())
	if err != nil {
		st := status.Convert(err)
		if st.Code() == codes.InvalidArgument {
			s.h.refuse(c, event, "CSR refused: "+st.Message())
			return nil, status.Error(codes.InvalidArgument, st.Message())
		}
		return nil, status.Errorf(codes.Unavailable, "the CA did not sign: %s", st.Message())
	}
	s.h.grant(c, event, []string{id})
	return &workloadv1.SignX509SVIDResponse{SpiffeId: id, CertChain: chain}, nil
}

// RevocationServer serves signet.workload.v1.Revocations.
type RevocationServer struct {
	workloadv1.UnimplementedRevocationsServer
	h *Handler
}

// NewRevocationServer returns the Revocations service of h's agent.
func NewRevocationServer(h *Handler) *RevocationServer { return &RevocationServer{h: h} }

// Watch implements workloadv1.RevocationsServer: every revocation in
// force, to callers with an identity (those that have peers to refuse).
func (s *RevocationServer) Watch(_ *workloadv1.WatchRevocationsRequest, stream workloadv1.Revocations_WatchServer) error {
	return s.h.watch(stream.Context(), "workload.watch_revocations", func(_ caller, snap *cache.Snapshot) (string, []string, func() error) {
		var key strings.Builder
		ids := make([]string, len(snap.Revocations))
		for i, r := range snap.Revocations {
			fmt.Fprintf(&key, "%s@%d;", r.GetId(), r.GetRevision())
			ids[i] = r.GetId()
		}
		key.WriteString(snap.DenyList)
		return key.String(), ids, func() error {
			return stream.Send(&workloadv1.WatchRevocationsResponse{Revocations: snap.Revocations, DenyList: snap.DenyList})
		}
	})
}
