package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/revocations"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
	"github.com/signet-id/signet/internal/signetid"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// Join token lifetimes.
const (
	DefaultTokenTTL = 10 * time.Minute
	MaxTokenTTL     = 7 * 24 * time.Hour
)

// AdminServer serves signet.admin.v1.Admin.
type AdminServer struct {
	adminv1.UnimplementedAdminServer
	cfg Config
}

// NewAdminServer returns an Admin server. Callers are authorized by the
// interceptors of AdminAuthorizer.
func NewAdminServer(cfg Config) *AdminServer {
	cfg.setDefaults()
	return &AdminServer{cfg: cfg}
}

type actorKey struct{}

func actor(ctx context.Context) string {
	a, _ := ctx.Value(actorKey{}).(string)
	return a
}

// AdminAuthorizer decides who may call the Admin API: on the Unix socket,
// processes running as root or as the CA's own uid; over TLS, clients whose
// verified SVID is one of the admin IDs.
type AdminAuthorizer struct {
	cfg      Config
	uid      uint32
	adminIDs map[spiffeid.ID]bool
}

// NewAdminAuthorizer returns an authorizer allowing adminIDs over mTLS.
func NewAdminAuthorizer(cfg Config, adminIDs []spiffeid.ID) *AdminAuthorizer {
	cfg.setDefaults()
	a := &AdminAuthorizer{cfg: cfg, uid: uint32(os.Getuid()), adminIDs: map[spiffeid.ID]bool{}}
	for _, id := range adminIDs {
		a.adminIDs[id] = true
	}
	return a
}

func (a *AdminAuthorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	if creds, ok := peercred.FromContext(ctx); ok {
		who := fmt.Sprintf("admin:uid=%d", creds.UID)
		if creds.UID == 0 || creds.UID == a.uid {
			return context.WithValue(ctx, actorKey{}, who), nil
		}
		return nil, a.cfg.refuse(method, codes.PermissionDenied, audit.Record{Actor: who,
			Reason: fmt.Sprintf("%s: uid %d may not use the admin API (allowed: 0 and %d)", method, creds.UID, a.uid)})
	}
	_, id, err := peerSVID(ctx)
	if err != nil {
		return nil, a.cfg.refuse(method, codes.Unauthenticated, audit.Record{Actor: "unauthenticated", Reason: method + ": " + err.Error()})
	}
	if !a.adminIDs[id] {
		return nil, a.cfg.refuse(method, codes.PermissionDenied, audit.Record{Actor: id.String(), Reason: method + ": not an admin identity"})
	}
	return context.WithValue(ctx, actorKey{}, id.String()), nil
}

// UnaryInterceptor authorizes unary calls.
func (a *AdminAuthorizer) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// StreamInterceptor refuses streams; the Admin API has none.
func (a *AdminAuthorizer) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return status.Error(codes.Unimplemented, "no streaming admin methods")
}

// batchStatus turns a store batch error into a gRPC error naming the item.
func batchStatus(err error) (error, bool) {
	var be *store.BatchError
	if !errors.As(err, &be) {
		return nil, false
	}
	var ce *store.ConflictError
	var fe *entry.FieldError
	switch {
	case errors.As(be.Err, &ce):
		return status.Errorf(codes.AlreadyExists, "entries[%d]: %v", be.Index, ce), true
	case errors.Is(be.Err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "entries[%d]: %v", be.Index, be.Err), true
	case errors.As(be.Err, &fe):
		return status.Errorf(codes.InvalidArgument, "entries[%d].%v", be.Index, fe), true
	}
	return nil, false
}

func (s *AdminServer) entriesFromProto(pbs []*typesv1.Entry) ([]entry.Entry, error) {
	if len(pbs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no entries")
	}
	out := make([]entry.Entry, len(pbs))
	for i, pb := range pbs {
		e, err := entry.FromProto(s.cfg.TrustDomain, pb)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "entries[%d].%v", i, err)
		}
		for _, t := range []struct {
			field string
			ttl   time.Duration
		}{{"x509_ttl", e.X509TTL}, {"jwt_ttl", e.JWTTTL}} {
			if t.ttl != 0 && t.ttl < s.cfg.MinTTL {
				return nil, status.Errorf(codes.InvalidArgument, "entries[%d].%s: %s is shorter than the CA's shortest SVID lifetime, %s (signet-ca --min-svid-ttl): an SVID that brief would be re-minted every few seconds",
					i, t.field, t.ttl, s.cfg.MinTTL)
			}
		}
		out[i] = e
	}
	return out, nil
}

func (s *AdminServer) entryRecords(ctx context.Context, event string, es []entry.Entry) []audit.Record {
	recs := make([]audit.Record, len(es))
	for i, e := range es {
		recs[i] = audit.Record{Event: event, Actor: actor(ctx), SPIFFEID: e.SPIFFEID.String(), EntryID: e.ID, Result: audit.Success}
	}
	return recs
}

// CreateEntries implements adminv1.AdminServer.
func (s *AdminServer) CreateEntries(ctx context.Context, req *adminv1.CreateEntriesRequest) (*adminv1.CreateEntriesResponse, error) {
	es, err := s.entriesFromProto(req.GetEntries())
	if err != nil {
		return nil, err
	}
	created, err := s.cfg.Store.CreateEntries(ctx, es, s.cfg.Now())
	if err != nil {
		if st, ok := batchStatus(err); ok {
			return nil, st
		}
		return nil, s.cfg.internal(ctx, "create entries", err)
	}
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(s.entryRecords(ctx, audit.EntryCreate, created)...); err != nil {
		return nil, err
	}
	resp := &adminv1.CreateEntriesResponse{Entries: make([]*typesv1.Entry, len(created))}
	for i, e := range created {
		resp.Entries[i] = e.Proto()
	}
	return resp, nil
}

// UpdateEntries implements adminv1.AdminServer.
func (s *AdminServer) UpdateEntries(ctx context.Context, req *adminv1.UpdateEntriesRequest) (*adminv1.UpdateEntriesResponse, error) {
	es, err := s.entriesFromProto(req.GetEntries())
	if err != nil {
		return nil, err
	}
	for i, e := range es {
		if e.ID == "" {
			return nil, status.Errorf(codes.InvalidArgument, "entries[%d].id: required", i)
		}
	}
	updated, err := s.cfg.Store.UpdateEntries(ctx, es, s.cfg.Now())
	if err != nil {
		if st, ok := batchStatus(err); ok {
			return nil, st
		}
		return nil, s.cfg.internal(ctx, "update entries", err)
	}
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(s.entryRecords(ctx, audit.EntryUpdate, updated)...); err != nil {
		return nil, err
	}
	resp := &adminv1.UpdateEntriesResponse{Entries: make([]*typesv1.Entry, len(updated))}
	for i, e := range updated {
		resp.Entries[i] = e.Proto()
	}
	return resp, nil
}

// DeleteEntries implements adminv1.AdminServer.
func (s *AdminServer) DeleteEntries(ctx context.Context, req *adminv1.DeleteEntriesRequest) (*adminv1.DeleteEntriesResponse, error) {
	if len(req.GetIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "no ids")
	}
	deleted, err := s.cfg.Store.DeleteEntries(ctx, req.GetIds(), s.cfg.Now())
	if err != nil {
		if st, ok := batchStatus(err); ok {
			return nil, st
		}
		return nil, s.cfg.internal(ctx, "delete entries", err)
	}
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(s.entryRecords(ctx, audit.EntryDelete, deleted)...); err != nil {
		return nil, err
	}
	return &adminv1.DeleteEntriesResponse{}, nil
}

// ListEntries implements adminv1.AdminServer.
func (s *AdminServer) ListEntries(ctx context.Context, req *adminv1.ListEntriesRequest) (*adminv1.ListEntriesResponse, error) {
	f := store.ListFilter{SPIFFEID: req.GetSpiffeId(), ParentID: req.GetParentId(), PageToken: req.GetPageToken(), PageSize: int(req.GetPageSize())}
	if f.PageSize < 0 || f.PageSize > 1000 {
		return nil, status.Errorf(codes.InvalidArgument, "page_size %d: want 0 to 1000", f.PageSize)
	}
	for name, id := range map[string]string{"spiffe_id": f.SPIFFEID, "parent_id": f.ParentID} {
		if _, err := spiffeid.FromString(id); id != "" && err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s: %q: %v", name, id, err)
		}
	}
	sels := req.GetSelectors()
	if sel := req.GetSelector(); sel != nil {
		sels = append([]*typesv1.Selector{sel}, sels...)
	}
	for i, sel := range sels {
		s := selector.Selector{Type: sel.GetType(), Value: sel.GetValue()}
		if err := s.Validate(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "selectors[%d]: %v", i, err)
		}
		f.Selectors = append(f.Selectors, s)
	}
	if len(req.GetIds()) > 1000 {
		return nil, status.Errorf(codes.InvalidArgument, "ids: %d, at most 1000", len(req.GetIds()))
	}
	f.IDs = req.GetIds()
	es, next, err := s.cfg.Store.ListEntries(ctx, f)
	if err != nil {
		return nil, s.cfg.internal(ctx, "list entries", err)
	}
	resp := &adminv1.ListEntriesResponse{NextPageToken: next}
	for _, e := range es {
		resp.Entries = append(resp.Entries, e.Proto())
	}
	return resp, nil
}

// validNodeName accepts 1 to 253 letters, digits, '.', '_' or '-',
// starting with a letter or digit: a node name that is also a path segment.
func validNodeName(n string) bool {
	if len(n) == 0 || len(n) > 253 || n[0] == '.' || n[0] == '_' || n[0] == '-' {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CreateJoinToken implements adminv1.AdminServer.
func (s *AdminServer) CreateJoinToken(ctx context.Context, req *adminv1.CreateJoinTokenRequest) (*adminv1.CreateJoinTokenResponse, error) {
	node := req.GetNodeName()
	if !validNodeName(node) {
		return nil, status.Errorf(codes.InvalidArgument, "node_name %q: want letters, digits, '.', '_' or '-'", node)
	}
	ttl := time.Duration(req.GetTtlSeconds()) * time.Second
	switch {
	case req.GetTtlSeconds() < 0 || req.GetTtlSeconds() > int64(MaxTokenTTL/time.Second):
		return nil, status.Errorf(codes.InvalidArgument, "ttl_seconds %d: want 0 to %d", req.GetTtlSeconds(), int64(MaxTokenTTL/time.Second))
	case ttl == 0:
		ttl = DefaultTokenTTL
	}
	id, err := signetid.JoinAgent(s.cfg.TrustDomain, node)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "node_name %q: %v", node, err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, s.cfg.internal(ctx, "token", err)
	}
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	exp := s.cfg.Now().Add(ttl).Truncate(time.Second)
	if err := s.cfg.Store.CreateJoinToken(ctx, tok, node, exp); err != nil {
		return nil, s.cfg.internal(ctx, "create join token", err)
	}
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.TokenCreate, Actor: actor(ctx), SPIFFEID: id.String(), Node: node, Result: audit.Success}); err != nil {
		return nil, err
	}
	return &adminv1.CreateJoinTokenResponse{Token: tok, ExpiresAt: exp.Unix(), AgentId: id.String()}, nil
}

// ListJoinTokens implements adminv1.AdminServer.
func (s *AdminServer) ListJoinTokens(ctx context.Context, _ *adminv1.ListJoinTokensRequest) (*adminv1.ListJoinTokensResponse, error) {
	ts, err := s.cfg.Store.ListJoinTokens(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "list join tokens", err)
	}
	resp := &adminv1.ListJoinTokensResponse{}
	for _, t := range ts {
		pb := &adminv1.JoinToken{Id: t.ID, NodeName: t.NodeName, ExpiresAt: t.ExpiresAt.Unix()}
		if !t.UsedAt.IsZero() {
			pb.UsedAt = t.UsedAt.Unix()
		}
		resp.Tokens = append(resp.Tokens, pb)
	}
	return resp, nil
}

// RevokeJoinTokens implements adminv1.AdminServer.
func (s *AdminServer) RevokeJoinTokens(ctx context.Context, req *adminv1.RevokeJoinTokensRequest) (*adminv1.RevokeJoinTokensResponse, error) {
	if (req.GetId() == "") == (req.GetNodeName() == "") {
		return nil, status.Error(codes.InvalidArgument, "give one of id and node_name")
	}
	revoked, err := s.cfg.Store.RevokeJoinTokens(ctx, req.GetId(), req.GetNodeName())
	if err != nil {
		return nil, s.cfg.internal(ctx, "revoke join tokens", err)
	}
	if len(revoked) == 0 {
		return nil, status.Error(codes.NotFound, "no unused join token matches")
	}
	recs := make([]audit.Record, len(revoked))
	resp := &adminv1.RevokeJoinTokensResponse{}
	for i, t := range revoked {
		recs[i] = audit.Record{Event: audit.TokenRevoke, Actor: actor(ctx), Node: t.NodeName, Reason: "join token " + t.ID + " revoked before use", Result: audit.Success}
		resp.Revoked = append(resp.Revoked, t.ID)
	}
	if err := s.cfg.auditOrFail(recs...); err != nil {
		return nil, err
	}
	return resp, nil
}

// ListAgents implements adminv1.AdminServer.
func (s *AdminServer) ListAgents(ctx context.Context, _ *adminv1.ListAgentsRequest) (*adminv1.ListAgentsResponse, error) {
	as, err := s.cfg.Store.ListAgents(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "list agents", err)
	}
	resp := &adminv1.ListAgentsResponse{}
	for _, a := range as {
		resp.Agents = append(resp.Agents, &typesv1.Agent{
			SpiffeId: a.SPIFFEID, NodeName: a.NodeName, AttestationType: a.AttestationType, Serial: a.Serial,
			ExpiresAt: a.ExpiresAt.Unix(), AttestedAt: a.AttestedAt.Unix(), Evicted: a.Evicted(),
		})
	}
	return resp, nil
}

// EvictAgent implements adminv1.AdminServer.
func (s *AdminServer) EvictAgent(ctx context.Context, req *adminv1.EvictAgentRequest) (*adminv1.EvictAgentResponse, error) {
	reason := "evicted by an operator"
	// A Kubernetes agent is evicted with its pods, for every replica: its
	// SVIDs are refused, and the pods cannot attest again (a new pod can).
	var pods []string
	if id, err := spiffeid.FromString(req.GetSpiffeId()); err == nil && s.cfg.AgentPods != nil {
		if node, ok := s.cfg.k8sNode(id); ok {
			if pods, err = s.cfg.AgentPods.EvictAgentPods(ctx, node, id.String(), reason+" "+actor(ctx)); err != nil {
				return nil, s.cfg.internal(ctx, "evict agent pods", err)
			}
		}
	}
	err := s.cfg.Store.EvictAgent(ctx, req.GetSpiffeId(), s.cfg.Now())
	if errors.Is(err, store.ErrNotFound) && len(pods) == 0 {
		return nil, status.Errorf(codes.NotFound, "no live agent %q", req.GetSpiffeId())
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, s.cfg.internal(ctx, "evict agent", err)
	}
	if len(pods) > 0 {
		reason += "; agent pods " + strings.Join(pods, ", ")
	}
	// Wake Sync streams so the evicted agent's stream ends now.
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.AgentEvict, Actor: actor(ctx), SPIFFEID: req.GetSpiffeId(), Result: audit.Success, Reason: reason}); err != nil {
		return nil, err
	}
	return &adminv1.EvictAgentResponse{}, nil
}

// GetBundle implements adminv1.AdminServer.
func (s *AdminServer) GetBundle(ctx context.Context, _ *adminv1.GetBundleRequest) (*adminv1.GetBundleResponse, error) {
	b, _ := s.cfg.Authority.Bundle()
	pb, err := BundleProto(b)
	if err != nil {
		return nil, s.cfg.internal(ctx, "bundle", err)
	}
	return &adminv1.GetBundleResponse{Bundle: pb}, nil
}

// CreatePolicy implements adminv1.AdminServer.
func (s *AdminServer) CreatePolicy(ctx context.Context, req *adminv1.CreatePolicyRequest) (*adminv1.CreatePolicyResponse, error) {
	p := req.GetPolicy()
	if err := authz.CheckPolicy(s.cfg.TrustDomain, p); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "policy: %v", err)
	}
	stored, err := s.cfg.Store.PutPolicy(ctx, p)
	if err != nil {
		return nil, s.cfg.internal(ctx, "put policy", err)
	}
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.PolicyPut, Actor: actor(ctx), Policy: p.GetName(), SPIFFEID: p.GetTarget(), Result: audit.Success}); err != nil {
		return nil, err
	}
	return &adminv1.CreatePolicyResponse{Policy: stored}, nil
}

// ListPolicies implements adminv1.AdminServer.
func (s *AdminServer) ListPolicies(ctx context.Context, _ *adminv1.ListPoliciesRequest) (*adminv1.ListPoliciesResponse, error) {
	ps, err := s.cfg.Store.ListPolicies(ctx)
	if err != nil {
		return nil, s.cfg.internal(ctx, "list policies", err)
	}
	return &adminv1.ListPoliciesResponse{Policies: ps}, nil
}

// DeletePolicy implements adminv1.AdminServer.
func (s *AdminServer) DeletePolicy(ctx context.Context, req *adminv1.DeletePolicyRequest) (*adminv1.DeletePolicyResponse, error) {
	err := s.cfg.Store.DeletePolicy(ctx, req.GetName())
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no policy %q", req.GetName())
	}
	if err != nil {
		return nil, s.cfg.internal(ctx, "delete policy", err)
	}
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.PolicyDelete, Actor: actor(ctx), Policy: req.GetName(), Result: audit.Success}); err != nil {
		return nil, err
	}
	return &adminv1.DeletePolicyResponse{}, nil
}

// CreateRevocation implements adminv1.AdminServer.
func (s *AdminServer) CreateRevocation(ctx context.Context, req *adminv1.CreateRevocationRequest) (*adminv1.CreateRevocationResponse, error) {
	r, err := revocations.New(req.GetRevocation(), s.cfg.Now())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "revocation: %v", err)
	}
	// A key of the CA (named, or by its certificate's serial): the CA
	// stops signing with it as soon as the revocation is stored, agents
	// re-issue, and peers enforce it after the grace.
	key, err := s.cfg.resolveCAKey(r, req.GraceSeconds, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	var stored *typesv1.Revocation
	if s.cfg.Revocations != nil {
		// An object of the cluster: every replica enforces it.
		stored, err = s.cfg.Revocations.Create(ctx, r)
		r = stored
	} else {
		stored, err = s.cfg.Store.PutRevocation(ctx, r)
	}
	if err != nil {
		return nil, s.cfg.internal(ctx, "put revocation", err)
	}
	s.cfg.Changes.Notify()
	if r.GetCaKey() != "" {
		s.cfg.Authority.Kick()
	}
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.RevocationCreate, Actor: actor(ctx), Revocation: r.GetId(),
		Serial: r.GetSerial(), SPIFFEID: r.GetSpiffeId() + r.GetAgentId(), Reason: r.GetReason(), Key: key, Result: audit.Success}); err != nil {
		return nil, err
	}
	// A revoked agent mints nothing more: it is evicted (after the
	// revocation is stored: the agents' streams carry it first), and must
	// attest again (with its pod in Kubernetes, or a new join token).
	if id := r.GetAgentId(); id != "" {
		if _, err := s.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: id}); err != nil && status.Code(err) != codes.NotFound {
			return nil, err
		}
	}
	return &adminv1.CreateRevocationResponse{Revocation: stored}, nil
}

// ListRevocations implements adminv1.AdminServer.
func (s *AdminServer) ListRevocations(ctx context.Context, _ *adminv1.ListRevocationsRequest) (*adminv1.ListRevocationsResponse, error) {
	rs, err := s.cfg.InForce(ctx, s.cfg.Now())
	if err != nil {
		return nil, s.cfg.internal(ctx, "list revocations", err)
	}
	return &adminv1.ListRevocationsResponse{Revocations: rs}, nil
}

// DeleteRevocation implements adminv1.AdminServer.
func (s *AdminServer) DeleteRevocation(ctx context.Context, req *adminv1.DeleteRevocationRequest) (*adminv1.DeleteRevocationResponse, error) {
	err := s.cfg.Store.DeleteRevocation(ctx, req.GetId())
	if errors.Is(err, store.ErrNotFound) && s.cfg.Revocations != nil {
		err = s.cfg.Revocations.Delete(ctx, req.GetId())
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "no revocation %q", req.GetId())
	}
	if err != nil {
		return nil, s.cfg.internal(ctx, "delete revocation", err)
	}
	s.cfg.Changes.Notify()
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.RevocationDelete, Actor: actor(ctx), Revocation: req.GetId(), Result: audit.Success}); err != nil {
		return nil, err
	}
	return &adminv1.DeleteRevocationResponse{}, nil
}
