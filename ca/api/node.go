package api

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/revocations"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/refusal"
	"github.com/signet-id/signet/internal/signetid"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
	"github.com/signet-id/signet/sdk/revocation"
)

// MaxBatch is the most CSRs one MintX509SVIDs call may carry.
const MaxBatch = 1000

// resyncInterval bounds how long a Sync stream goes without re-reading the
// store, in case a change notification was missed.
const resyncInterval = time.Minute

// NodeServer serves signet.agent.v1.Node.
type NodeServer struct {
	agentv1.UnimplementedNodeServer
	cfg Config

	// deny is the signed deny list of the revocations in force, signed once
	// for every agent's stream (denyKey says of which).
	denyMu           sync.Mutex
	denyKey, denyJWS string

	podIDsMu     sync.Mutex
	podIDsByNode map[string]nodePodIDs
}

// NewNodeServer returns a Node server.
func NewNodeServer(cfg Config) *NodeServer {
	cfg.setDefaults()
	return &NodeServer{cfg: cfg, podIDsByNode: map[string]nodePodIDs{}}
}

// caller is an authenticated agent.
type caller struct {
	id     spiffeid.ID
	serial string
	agent  store.Agent
	// node is set for Kubernetes agents: pod identities of this node only.
	node string
	// pod is a Kubernetes agent's pod UID, which its SVIDs are bound to.
	pod string
}

// k8sNode returns the node of a Kubernetes agent ID of this CA's cluster.
func (c *Config) k8sNode(id spiffeid.ID) (string, bool) {
	if c.ClusterName == "" || id.TrustDomain() != c.TrustDomain {
		return "", false
	}
	return signetid.KubeAgentNode(id, c.ClusterName)
}

// peerSVID returns the verified client certificate of the call, if any. The
// TLS handshake has verified it against the trust bundle already.
func peerSVID(ctx context.Context) (*x509.Certificate, spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, spiffeid.ID{}, errors.New("no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return nil, spiffeid.ID{}, errors.New("no client certificate")
	}
	leaf := ti.State.PeerCertificates[0]
	if len(leaf.URIs) != 1 {
		return nil, spiffeid.ID{}, errors.New("client certificate has no single URI SAN")
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("client certificate: %w", err)
	}
	return leaf, id, nil
}

// peerChain returns the certificates the caller presented, leaf first.
func peerChain(ctx context.Context) []*x509.Certificate {
	p, _ := peer.FromContext(ctx)
	if p == nil {
		return nil
	}
	ti, _ := p.AuthInfo.(credentials.TLSInfo)
	return ti.State.PeerCertificates
}

func serialHex(c *x509.Certificate) string { return hex.EncodeToString(c.SerialNumber.Bytes()) }

// authAgent checks that the call comes from a live agent with its current
// SVID; an evicted or replaced agent is refused on every call.
func (s *NodeServer) authAgent(ctx context.Context, method string) (caller, error) {
	leaf, id, err := s.agentCert(ctx, method)
	if err != nil {
		return caller{}, err
	}
	return s.authAgentState(ctx, method, leaf, id)
}

// agentCert checks what the caller's certificate alone shows: an SVID of
// an agent of this trust domain. It reads no state.
func (s *NodeServer) agentCert(ctx context.Context, method string) (*x509.Certificate, spiffeid.ID, error) {
	leaf, id, err := peerSVID(ctx)
	if err != nil {
		return nil, spiffeid.ID{}, s.cfg.refuseUnauthenticated(ctx, method, codes.Unauthenticated, audit.Record{Actor: "unauthenticated", Reason: method + ": " + err.Error()})
	}
	if !signetid.IsAgent(s.cfg.TrustDomain, id) {
		return nil, spiffeid.ID{}, s.cfg.refuse(method, codes.PermissionDenied, audit.Record{Actor: id.String(), Reason: method + ": caller is not an agent"})
	}
	return leaf, id, nil
}

// authAgentState checks the agent against the state: revocations, and
// its attestation (the store's agent record, or its Kubernetes pod).
func (s *NodeServer) authAgentState(ctx context.Context, method string, leaf *x509.Certificate, id spiffeid.ID) (caller, error) {
	serial := serialHex(leaf)
	// A revoked agent (by its ID, or its SVID's serial) is refused
	// whatever else holds: it mints nothing more, not even SVIDs that
	// would pass the revocation.
	revs, err := s.cfg.InForce(ctx, s.cfg.Now())
	if err != nil {
		return caller{}, s.cfg.internal(ctx, "revocations", err)
	}
	if err := revocation.New(revs).CheckAt(peerChain(ctx), s.cfg.Now()); err != nil {
		return caller{}, s.cfg.refuseAs(method, codes.PermissionDenied, audit.Record{Actor: id.String(), Serial: serial, Reason: method + ": agent SVID is revoked: " + err.Error()}, refusal.Agent, nil)
	}
	a, err := s.cfg.Store.FetchAgent(ctx, id.String())
	if node, ok := s.cfg.k8sNode(id); ok && s.cfg.AgentPods != nil {
		return s.authK8sAgent(ctx, method, leaf, id, node, a, err)
	}
	if errors.Is(err, store.ErrNotFound) {
		return caller{}, s.cfg.refuseAs(method, codes.PermissionDenied, audit.Record{Actor: id.String(), Serial: serial, Reason: method + ": unknown agent"}, refusal.Agent, nil)
	}
	if err != nil {
		return caller{}, s.cfg.internal(ctx, "fetch agent", err)
	}
	if !a.AcceptsSerial(serial) {
		reason := method + ": agent SVID is no longer valid (agent evicted or re-attested)"
		return caller{}, s.cfg.refuseAs(method, codes.PermissionDenied, audit.Record{Actor: id.String(), Serial: serial, Reason: reason}, refusal.Agent, nil)
	}
	return caller{id: id, serial: serial, agent: a}, nil
}

// agentPodUnit prefixes the subject organizational unit that binds a
// Kubernetes agent's SVID to its pod's UID.
const agentPodUnit = "signet-agent-pod:"

// agentPodGrace is how long after its issuance an agent SVID is accepted
// for a pod this replica's informer has not seen: the pod was confirmed
// with the API server at attestation, and the informer follows within
// moments.
const agentPodGrace = time.Minute

// agentPodUID returns the pod an agent SVID is bound to.
func agentPodUID(leaf *x509.Certificate) string {
	for _, u := range leaf.Subject.OrganizationalUnit {
		if uid, ok := strings.CutPrefix(u, agentPodUnit); ok {
			return uid
		}
	}
	return ""
}

// authK8sAgent authorizes a Kubernetes agent. Several CA replicas share
// no agent records, so an agent attested at another replica is accepted
// on its SVID, which names the agent's pod: on every call that pod must
// still run an agent on the SVID's node (from the informer's cache, no
// API request), and must not have been evicted (state all replicas
// share). A new pod means a new SVID; a copied key of an old one is
// refused everywhere.
func (s *NodeServer) authK8sAgent(ctx context.Context, method string, leaf *x509.Certificate, id spiffeid.ID, node string, a store.Agent, fetchErr error) (caller, error) {
	serial := serialHex(leaf)
	if fetchErr != nil && !errors.Is(fetchErr, store.ErrNotFound) {
		return caller{}, s.cfg.internal(ctx, "fetch agent", fetchErr)
	}
	known := fetchErr == nil
	refuse := func(reason string) error {
		return s.cfg.refuseAs(method, codes.PermissionDenied, audit.Record{Actor: id.String(), Serial: serial, Node: node, Reason: method + ": " + reason}, refusal.Agent, nil)
	}
	podUID := agentPodUID(leaf)
	if podUID == "" {
		return caller{}, refuse("agent SVID is bound to no agent pod (issued by an older CA); the agent must attest again")
	}
	if why, evicted := s.cfg.AgentPods.AgentEvicted(podUID); evicted {
		return caller{}, refuse("agent evicted: " + why)
	}
	alive, seen, reason := s.cfg.AgentPods.AgentPod(node, podUID)
	if !alive && (seen || s.cfg.Now().Sub(leaf.NotBefore) > agentPodGrace) {
		if known && !a.Evicted() {
			if err := s.cfg.Store.EvictAgent(ctx, id.String(), s.cfg.Now()); err != nil && !errors.Is(err, store.ErrNotFound) {
				return caller{}, s.cfg.internal(ctx, "evict agent", err)
			}
			if err := s.cfg.auditOrFail(audit.Record{Event: audit.AgentEvict, Actor: "signet-ca", SPIFFEID: id.String(), Node: node, Serial: a.Serial,
				Result: audit.Success, Reason: reason}); err != nil {
				return caller{}, err
			}
		}
		return caller{}, refuse("agent evicted: " + reason)
	}
	if !known {
		a = store.Agent{SPIFFEID: id.String(), NodeName: node, AttestationType: "k8s_psat", Serial: serial}
	}
	return caller{id: id, serial: serial, agent: a, node: node, pod: podUID}, nil
}

// AttestNode implements agentv1.NodeServer.
func (s *NodeServer) AttestNode(ctx context.Context, req *agentv1.AttestNodeRequest) (*agentv1.AttestNodeResponse, error) {
	now := s.cfg.Now()
	fail := func(code codes.Code, method, node, reason string) error {
		s.cfg.Metrics.attestations.WithLabelValues(method, audit.Failure).Inc()
		// The caller proved nothing: recorded within a limit per source.
		if err := s.cfg.auditUnauthenticated(ctx, audit.Record{Event: audit.NodeAttest, Actor: "unauthenticated", Node: node, Result: audit.Failure, Reason: reason}); err != nil {
			return err
		}
		return status.Error(code, reason)
	}
	var node, method string
	var id spiffeid.ID
	var units []string
	var err error
	switch att := req.GetAttestation().(type) {
	case *agentv1.AttestNodeRequest_JoinToken:
		method = "join_token"
		tok := att.JoinToken.GetToken()
		if tok == "" {
			return nil, fail(codes.InvalidArgument, method, "", "join token is empty")
		}
		n, err := s.cfg.Store.ConsumeJoinToken(ctx, tok, now)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil, fail(codes.PermissionDenied, method, "", "unknown join token")
		case errors.Is(err, store.ErrTokenUsed):
			return nil, fail(codes.PermissionDenied, method, n, "join token already used")
		case errors.Is(err, store.ErrTokenExpired):
			return nil, fail(codes.PermissionDenied, method, n, "join token expired")
		case err != nil:
			return nil, s.cfg.internal(ctx, "consume join token", err)
		}
		node = n
		if id, err = signetid.JoinAgent(s.cfg.TrustDomain, node); err != nil {
			return nil, fail(codes.InvalidArgument, method, node, fmt.Sprintf("node name %q makes no valid SPIFFE ID", node))
		}
	case *agentv1.AttestNodeRequest_K8SPsat:
		method = "k8s_psat"
		node = att.K8SPsat.GetNodeName()
		if s.cfg.PSAT == nil || s.cfg.ClusterName == "" {
			return nil, fail(codes.FailedPrecondition, method, node, "this CA does not run in Kubernetes mode")
		}
		if id, err = signetid.KubeAgent(s.cfg.TrustDomain, s.cfg.ClusterName, node); err != nil {
			return nil, fail(codes.InvalidArgument, method, node, fmt.Sprintf("node name %q makes no valid SPIFFE ID", node))
		}
		agent, err := s.cfg.PSAT.Attest(ctx, att.K8SPsat.GetToken(), node)
		if err != nil {
			if agentFault(err) {
				return nil, fail(codes.PermissionDenied, method, node, err.Error())
			}
			return nil, s.cfg.internal(ctx, "PSAT attestation", err)
		}
		if why, evicted := s.cfg.AgentPods.AgentEvicted(agent.UID); evicted {
			return nil, fail(codes.PermissionDenied, method, node, fmt.Sprintf("agent pod %s/%s was evicted (%s); a new pod may attest", agent.Namespace, agent.Name, why))
		}
		units = []string{agentPodUnit + agent.UID}
	default:
		return nil, fail(codes.InvalidArgument, "unknown", "", "no supported attestation in request")
	}
	csr, err := signer.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, fail(codes.InvalidArgument, method, node, err.Error())
	}
	chain, err := s.signAgent(ctx, csr, id, units, now)
	if _, isStatus := status.FromError(err); err != nil && isStatus {
		return nil, err
	}
	if err != nil {
		return nil, fail(codes.InvalidArgument, method, node, err.Error())
	}
	prev, err := s.cfg.Store.RegisterAgent(ctx, store.Agent{
		SPIFFEID: id.String(), NodeName: node, AttestationType: method,
		Serial: serialHex(chain[0]), ExpiresAt: chain[0].NotAfter, AttestedAt: now,
	})
	if err != nil {
		return nil, s.cfg.internal(ctx, "register agent", err)
	}
	recs := []audit.Record{{Event: audit.NodeAttest, Actor: id.String(), SPIFFEID: id.String(), Node: node, Serial: serialHex(chain[0]), Result: audit.Success}}
	if prev != nil {
		recs = append(recs, audit.Record{Event: audit.AgentEvict, Actor: id.String(), SPIFFEID: prev.SPIFFEID, Node: node, Serial: prev.Serial,
			Result: audit.Success, Reason: "node attested again (" + method + ")"})
	}
	if err := s.cfg.auditOrFail(recs...); err != nil {
		return nil, err
	}
	s.cfg.Metrics.attestations.WithLabelValues(method, audit.Success).Inc()
	s.cfg.Metrics.issued.WithLabelValues("agent").Inc()
	b, _ := s.cfg.Authority.Bundle()
	bpb, err := BundleProto(b)
	if err != nil {
		return nil, s.cfg.internal(ctx, "bundle", err)
	}
	return &agentv1.AttestNodeResponse{SpiffeId: id.String(), SvidChain: rawChain(chain), Bundle: bpb}, nil
}

func (s *NodeServer) signAgent(ctx context.Context, csr *x509.CertificateRequest, id spiffeid.ID, units []string, now time.Time) ([]*x509.Certificate, error) {
	revs, err := s.cfg.InForce(ctx, now)
	if err != nil {
		return nil, s.cfg.internal(ctx, "revocations", err)
	}
	ca, _, err := s.cfg.signing(ctx, revs)
	if err != nil {
		return nil, err
	}
	return signer.SignX509SVID(ca, signer.X509Params{CSR: csr, SPIFFEID: id, TTL: s.cfg.AgentTTL, Now: now, Units: units})
}

func rawChain(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

// RenewAgent implements agentv1.NodeServer.
func (s *NodeServer) RenewAgent(ctx context.Context, req *agentv1.RenewAgentRequest) (*agentv1.RenewAgentResponse, error) {
	c, err := s.authAgent(ctx, "RenewAgent")
	if err != nil {
		return nil, err
	}
	csr, err := signer.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, s.cfg.refuse("RenewAgent", codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: err.Error()})
	}
	// A renewed SVID stays bound to the same pod.
	var units []string
	if c.pod != "" {
		units = []string{agentPodUnit + c.pod}
	}
	chain, err := s.signAgent(ctx, csr, c.id, units, s.cfg.Now())
	if _, isStatus := status.FromError(err); err != nil && isStatus {
		return nil, err
	}
	if err != nil {
		return nil, s.cfg.refuse("RenewAgent", codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: err.Error()})
	}
	newSerial := serialHex(chain[0])
	err = s.cfg.Store.RenewAgent(ctx, c.id.String(), c.serial, newSerial, chain[0].NotAfter)
	if errors.Is(err, store.ErrNotFound) && c.node != "" {
		// A Kubernetes agent attested (again) at another replica: record
		// it here.
		_, err = s.cfg.Store.RegisterAgent(ctx, store.Agent{SPIFFEID: c.id.String(), NodeName: c.node, AttestationType: "k8s_psat",
			Serial: newSerial, ExpiresAt: chain[0].NotAfter, AttestedAt: s.cfg.Now()})
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, s.cfg.refuseAs("RenewAgent", codes.PermissionDenied, audit.Record{Actor: c.id.String(), Reason: "agent evicted during renewal"}, refusal.Agent, nil)
		}
		return nil, s.cfg.internal(ctx, "renew agent", err)
	}
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.AgentRenew, Actor: c.id.String(), SPIFFEID: c.id.String(), Serial: newSerial, Result: audit.Success}); err != nil {
		return nil, err
	}
	s.cfg.Metrics.issued.WithLabelValues("agent").Inc()
	return &agentv1.RenewAgentResponse{SvidChain: rawChain(chain)}, nil
}

// ownEntry fetches an entry and checks it is parented to the caller. A
// missing entry and another agent's entry get the same answer, so an agent
// learns nothing about entries that are not its own.
func (s *NodeServer) ownEntry(ctx context.Context, c caller, method, id string) (entry.Entry, error) {
	if entry.IsPodEntryID(id) {
		found, err := s.fetchEntries(ctx, c, []string{id})
		if err != nil {
			return entry.Entry{}, err
		}
		e, ok := found[id]
		if !ok {
			return entry.Entry{}, s.notOwned(c, method, id, e)
		}
		return e, nil
	}
	e, err := s.cfg.Store.FetchEntry(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return entry.Entry{}, s.cfg.internal(ctx, "fetch entry", err)
	}
	if err != nil || e.ParentID != c.id {
		return entry.Entry{}, s.notOwned(c, method, id, e)
	}
	return e, nil
}

// fetchEntries returns the entries with the given IDs: stored ones, and
// for a Kubernetes agent the identities of pods on its node.
func (s *NodeServer) fetchEntries(ctx context.Context, c caller, ids []string) (map[string]entry.Entry, error) {
	var stored, pods []string
	for _, id := range ids {
		if entry.IsPodEntryID(id) {
			pods = append(pods, id)
		} else {
			stored = append(stored, id)
		}
	}
	found := map[string]entry.Entry{}
	if len(stored) > 0 {
		var err error
		if found, err = s.cfg.Store.FetchEntries(ctx, stored); err != nil {
			return nil, s.cfg.internal(ctx, "fetch entries", err)
		}
	}
	if len(pods) > 0 && c.node != "" {
		derived, err := s.cfg.Pods.Lookup(ctx, pods, c.node, c.id)
		if err != nil {
			return nil, s.cfg.internal(ctx, "pod identities", err)
		}
		for id, e := range derived {
			found[id] = e
		}
	}
	return found, nil
}

// FetchPodEntries implements agentv1.NodeServer.
func (s *NodeServer) FetchPodEntries(ctx context.Context, req *agentv1.FetchPodEntriesRequest) (*agentv1.FetchPodEntriesResponse, error) {
	const method = "FetchPodEntries"
	c, err := s.authAgent(ctx, method)
	if err != nil {
		return nil, err
	}
	uid := req.GetPodUid()
	if c.node == "" {
		return nil, s.cfg.refuse(method, codes.FailedPrecondition, audit.Record{Actor: c.id.String(), Reason: method + ": only Kubernetes agents have pods"})
	}
	if !validUID(uid) {
		return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: fmt.Sprintf("%s: pod UID %.80q is malformed", method, uid)})
	}
	entries, err := s.cfg.Pods.Pull(ctx, uid, c.node, c.id)
	if errors.Is(err, entry.ErrPodNotOnNode) {
		return nil, s.cfg.refuse(method, codes.PermissionDenied, audit.Record{Actor: c.id.String(), Node: c.node,
			Reason: fmt.Sprintf("%s: pod %s is not bound to node %s", method, uid, c.node)})
	}
	if err != nil {
		return nil, s.cfg.internal(ctx, "pull pod identities", err)
	}
	resp := &agentv1.FetchPodEntriesResponse{}
	for _, e := range entries {
		resp.Entries = append(resp.Entries, e.Proto())
	}
	return resp, nil
}

// validUID accepts what Kubernetes puts in metadata.uid (a UUID).
func validUID(uid string) bool {
	if uid == "" || len(uid) > 64 {
		return false
	}
	for _, r := range uid {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F' || r == '-') {
			return false
		}
	}
	return true
}

// notOwned audits and refuses a request for an entry that is missing or
// parented to another agent.
func (s *NodeServer) notOwned(c caller, method, id string, e entry.Entry) error {
	rec := audit.Record{Actor: c.id.String(), EntryID: id, Reason: fmt.Sprintf("%s: entry %q is not parented to the calling agent", method, id)}
	if !e.SPIFFEID.IsZero() {
		rec.SPIFFEID = e.SPIFFEID.String()
	}
	return s.cfg.refuseAs(method, codes.PermissionDenied, rec, refusal.Entry, map[string]string{refusal.EntryID: id})
}

// MintX509SVIDs implements agentv1.NodeServer.
func (s *NodeServer) MintX509SVIDs(ctx context.Context, req *agentv1.MintX509SVIDsRequest) (*agentv1.MintX509SVIDsResponse, error) {
	const method = "MintX509SVIDs"
	c, err := s.authAgent(ctx, method)
	if err != nil {
		return nil, err
	}
	if n := len(req.GetRequests()); n == 0 || n > MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "want 1 to %d requests, got %d", MaxBatch, n)
	}
	ids := make([]string, len(req.GetRequests()))
	for i, r := range req.GetRequests() {
		ids[i] = r.GetEntryId()
	}
	found, err := s.fetchEntries(ctx, c, ids)
	if err != nil {
		return nil, err
	}
	entries := make([]entry.Entry, len(ids))
	for i, id := range ids {
		e, ok := found[id]
		if !ok || e.ParentID != c.id {
			return nil, s.notOwned(c, method, id, e)
		}
		entries[i] = e
	}
	// Check and sign on every core: each CSR costs a signature check and a
	// signature, and a batch can hold a thousand.
	now := s.cfg.Now()
	revs, err := s.cfg.InForce(ctx, now)
	if err != nil {
		return nil, s.cfg.internal(ctx, "revocations", err)
	}
	floor := revocations.NotBeforeFloor(revs)
	ca, _, err := s.cfg.signing(ctx, revs)
	if err != nil {
		return nil, err
	}
	chains := make([][]*x509.Certificate, len(entries))
	errs := make([]error, len(entries))
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), len(entries))
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(entries); i += workers {
				start := time.Now()
				csr, err := signer.ParseCSR(req.GetRequests()[i].GetCsr())
				if err != nil {
					errs[i] = err
					continue
				}
				e := entries[i]
				ttl := e.X509TTL
				if ttl == 0 {
					ttl = s.cfg.X509TTL
				}
				// Marked with the agent that minted it, so that a revocation of
				// the agent covers it; past any revocation of its ID or agent.
				nb := floor[e.SPIFFEID.String()]
				if a := floor[c.id.String()]; a.After(nb) {
					nb = a
				}
				chains[i], errs[i] = signer.SignX509SVID(ca, signer.X509Params{CSR: csr, SPIFFEID: e.SPIFFEID, DNSNames: e.DNSNames, TTL: ttl, Now: now,
					Units: svidUnits(c, e), NotBeforeAtLeast: nb})
				s.cfg.Metrics.signDuration.WithLabelValues("x509").Observe(time.Since(start).Seconds())
			}
		}()
	}
	wg.Wait()
	resp := &agentv1.MintX509SVIDsResponse{Svids: make([]*agentv1.X509SVID, len(entries))}
	recs := make([]audit.Record, len(entries))
	for i, e := range entries {
		if err := errs[i]; err != nil {
			var ce *signer.CSRError
			if errors.As(err, &ce) {
				return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), EntryID: e.ID, SPIFFEID: e.SPIFFEID.String(),
					Reason: fmt.Sprintf("requests[%d]: %v", i, err)})
			}
			return nil, s.cfg.internal(ctx, "sign X509-SVID", err)
		}
		chain := chains[i]
		resp.Svids[i] = &agentv1.X509SVID{EntryId: e.ID, SpiffeId: e.SPIFFEID.String(), CertChain: rawChain(chain), ExpiresAt: chain[0].NotAfter.Unix()}
		recs[i] = audit.Record{Event: audit.X509Issue, Actor: c.id.String(), SPIFFEID: e.SPIFFEID.String(), EntryID: e.ID, Serial: serialHex(chain[0]), Result: audit.Success}
	}
	if err := s.cfg.auditOrFail(recs...); err != nil {
		return nil, err
	}
	s.cfg.Metrics.issued.WithLabelValues("x509").Add(float64(len(entries)))
	return resp, nil
}

// svidUnits are the organizational units of an X.509-SVID the agent c
// mints for e: the agent's mark (revocation), and where the workload runs
// as the CA knows it, for policies' from conditions (authz.AttributesOf):
// its node, and a pod's namespace.
func svidUnits(c caller, e entry.Entry) []string {
	node := c.node
	if node == "" {
		node = c.agent.NodeName
	}
	return append([]string{revocation.AgentMark(c.id.String())}, placeUnits(node, e.Namespace)...)
}

// placeUnits are the marks of where a workload runs, as the CA knows it:
// its node and its pod's namespace, each when known.
func placeUnits(node, namespace string) []string {
	var units []string
	if node != "" {
		units = append(units, authz.NodeUnit+node)
	}
	if namespace != "" {
		units = append(units, authz.NamespaceUnit+namespace)
	}
	return units
}

// MintJWTSVID implements agentv1.NodeServer.
func (s *NodeServer) MintJWTSVID(ctx context.Context, req *agentv1.MintJWTSVIDRequest) (*agentv1.MintJWTSVIDResponse, error) {
	const method = "MintJWTSVID"
	c, err := s.authAgent(ctx, method)
	if err != nil {
		return nil, err
	}
	e, err := s.ownEntry(ctx, c, method, req.GetEntryId())
	if err != nil {
		return nil, err
	}
	ttl := e.JWTTTL
	if ttl == 0 {
		ttl = s.cfg.JWTTTL
	}
	revs, err := s.cfg.InForce(ctx, s.cfg.Now())
	if err != nil {
		return nil, s.cfg.internal(ctx, "revocations", err)
	}
	_, jwtKey, err := s.cfg.signing(ctx, revs)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	tok, exp, err := signer.SignJWTSVID(jwtKey, signer.JWTParams{SPIFFEID: e.SPIFFEID, Audience: req.GetAudience(), TTL: ttl, Now: s.cfg.Now(), Issuer: s.cfg.JWTIssuer})
	if err != nil {
		return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), EntryID: e.ID, SPIFFEID: e.SPIFFEID.String(), Reason: err.Error()})
	}
	s.cfg.Metrics.signDuration.WithLabelValues("jwt").Observe(time.Since(start).Seconds())
	if err := s.cfg.auditOrFail(audit.Record{Event: audit.JWTIssue, Actor: c.id.String(), SPIFFEID: e.SPIFFEID.String(), EntryID: e.ID, Result: audit.Success}); err != nil {
		return nil, err
	}
	s.cfg.Metrics.issued.WithLabelValues("jwt").Inc()
	return &agentv1.MintJWTSVIDResponse{SpiffeId: e.SPIFFEID.String(), Token: tok, ExpiresAt: exp.Unix()}, nil
}

// Sync implements agentv1.NodeServer: it sends what changed since the
// agent's revision, then waits for entry or bundle changes and sends those,
// until the agent goes away or is evicted.
func (s *NodeServer) Sync(req *agentv1.SyncRequest, stream agentv1.Node_SyncServer) error {
	ctx := stream.Context()
	// The certificate first, so that only agents learn a replica is deaf;
	// then deafness, before anything that reads the store, which a deaf
	// replica may not reach in time.
	leaf, id, err := s.agentCert(ctx, "Sync")
	if err != nil {
		return err
	}
	var deaf <-chan struct{}
	if s.cfg.Deaf != nil {
		deaf = s.cfg.Deaf()
		select {
		case <-deaf:
			return errDeaf
		default:
		}
	}
	c, err := s.authAgentState(ctx, "Sync", leaf, id)
	if err != nil {
		return err
	}
	s.cfg.Metrics.syncStreams.Inc()
	defer s.cfg.Metrics.syncStreams.Dec()
	rev := req.GetRevision()
	var sentSeq uint64
	first := true
	sentPods := map[string]entry.Entry{}
	storeIDs := map[string]spiffeid.ID{} // entry ID -> SPIFFE ID the agent holds
	sentPolicies := "\x00"               // none sent yet
	sentRevocations := "\x00"
	sentFederated := "\x00"
	for {
		entriesChanged := s.cfg.Changes.Wait()
		var podsChanged, clusterChanged, policiesChanged, revocationsChanged <-chan struct{}
		if c.node != "" {
			podsChanged, clusterChanged = s.cfg.Pods.Changed(c.node)
		}
		if s.cfg.Policies != nil {
			policiesChanged = s.cfg.Policies.Changed()
		}
		if s.cfg.Revocations != nil {
			revocationsChanged = s.cfg.Revocations.Changed()
		}
		bundle, bundleChanged := s.cfg.Authority.Bundle()
		federated, federatedKey, federatedChanged := s.cfg.federatedBundles()
		ch, err := s.cfg.Store.EntriesSince(ctx, c.id.String(), rev)
		if err != nil {
			return s.cfg.internal(ctx, "sync entries", err)
		}
		msg := &agentv1.SyncResponse{Revision: ch.Revision, Full: ch.Full, DeletedEntryIds: ch.Deleted}
		for _, e := range ch.Entries {
			msg.Entries = append(msg.Entries, e.Proto())
		}
		if first || bundle.Sequence != sentSeq {
			if msg.Bundle, err = BundleProto(bundle); err != nil {
				return s.cfg.internal(ctx, "bundle", err)
			}
		}
		if c.node != "" {
			sentPods = podDiff(msg, s.cfg.Pods.ForNode(c.node, c.id), sentPods, first)
		}
		if ch.Full {
			clear(storeIDs)
		}
		for _, id := range ch.Deleted {
			delete(storeIDs, id)
		}
		for _, e := range ch.Entries {
			storeIDs[e.ID] = e.SPIFFEID
		}
		pols, key, err := s.nodePolicies(ctx, storeIDs, sentPods)
		if err != nil {
			return s.cfg.internal(ctx, "sync policies", err)
		}
		if key != sentPolicies {
			msg.Policies, msg.PoliciesSet, sentPolicies = pols, true, key
		}
		revs, err := s.cfg.InForce(ctx, s.cfg.Now())
		if err != nil {
			return s.cfg.internal(ctx, "sync revocations", err)
		}
		// Sent when they change, when the JWT key that signs the deny list
		// changes, and at half the deny list's life.
		jwtKey := s.cfg.Authority.JWTKey()
		now := s.cfg.Now()
		if key := fmt.Sprintf("%s|%s|%d", revocationsKey(revs), jwtKey.ID, now.Unix()/int64(signer.DenyListTTL/2/time.Second)); key != sentRevocations {
			deny, err := s.denyList(key, jwtKey, revs, now)
			if err != nil {
				return s.cfg.internal(ctx, "sign the deny list", err)
			}
			msg.Revocations, msg.RevocationsSet, msg.DenyList, sentRevocations = revs, true, deny, key
		}
		if federatedKey != sentFederated {
			msg.FederatedBundles, msg.FederatedBundlesSet, sentFederated = federated, true, federatedKey
		}
		if first || ch.Full || len(msg.Entries) > 0 || len(msg.DeletedEntryIds) > 0 || msg.Bundle != nil ||
			len(msg.PodEntries) > 0 || len(msg.DeletedPodEntryIds) > 0 || msg.PoliciesSet || msg.RevocationsSet || msg.FederatedBundlesSet {
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		first, rev, sentSeq = false, ch.Revision, bundle.Sequence
		select {
		case <-ctx.Done():
			return nil
		case <-s.cfg.Stopping:
			return status.Error(codes.Unavailable, "CA shutting down")
		case <-deaf:
			return errDeaf
		case <-entriesChanged:
		case <-podsChanged:
		case <-clusterChanged:
		case <-policiesChanged:
		case <-revocationsChanged:
		case <-bundleChanged:
		case <-federatedChanged:
		case <-time.After(resyncInterval):
		}
		// An agent evicted while its stream is open loses the stream.
		if _, err := s.authAgent(ctx, "Sync"); err != nil {
			return err
		}
	}
}

// errDeaf ends the Sync streams of a replica that does not hear the
// others' changes.
var errDeaf = refusal.Error(codes.Unavailable, "this CA replica does not hear the other replicas' changes (its store is out of reach): use another", refusal.ReplicaDeaf, nil)

// denyList returns the deny list of revs signed with jwtKey, signing it
// only if no stream has for key yet.
func (s *NodeServer) denyList(key string, jwtKey authority.JWTKey, revs []*typesv1.Revocation, now time.Time) (string, error) {
	s.denyMu.Lock()
	defer s.denyMu.Unlock()
	if key == s.denyKey {
		return s.denyJWS, nil
	}
	jws, err := signer.SignDenyList(jwtKey, s.cfg.TrustDomain, revs, now)
	if err != nil {
		return "", err
	}
	s.denyKey, s.denyJWS = key, jws
	return jws, nil
}

// revocationsKey identifies a set of revocations, to send it only when
// it changed.
func revocationsKey(rs []*typesv1.Revocation) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "%s@%d;", r.GetId(), r.GetRevision())
	}
	return b.String()
}

// podDiff puts into msg what changed between the pod entries sent and cur,
// and returns cur as the new sent set.
func podDiff(msg *agentv1.SyncResponse, cur []entry.Entry, sent map[string]entry.Entry, full bool) map[string]entry.Entry {
	now := make(map[string]entry.Entry, len(cur))
	msg.PodsFull = full
	for _, e := range cur {
		now[e.ID] = e
		if old, ok := sent[e.ID]; full || !ok || !samePodEntry(old, e) {
			msg.PodEntries = append(msg.PodEntries, e.Proto())
		}
	}
	if !full {
		for id := range sent {
			if _, ok := now[id]; !ok {
				msg.DeletedPodEntryIds = append(msg.DeletedPodEntryIds, id)
			}
		}
	}
	return now
}

func samePodEntry(a, b entry.Entry) bool {
	return a.SPIFFEID == b.SPIFFEID && a.X509TTL == b.X509TTL && a.JWTTTL == b.JWTTTL && slices.Equal(a.DNSNames, b.DNSNames) &&
		slices.Equal(a.FederatesWith, b.FederatesWith)
}

// nodePolicies returns the access policies whose targets match an identity
// the agent holds, and a key that changes when they do.
func (s *NodeServer) nodePolicies(ctx context.Context, stored map[string]spiffeid.ID, pods map[string]entry.Entry) ([]*typesv1.AccessPolicy, string, error) {
	all, err := s.cfg.Store.ListPolicies(ctx)
	if err != nil {
		return nil, "", err
	}
	if s.cfg.Policies != nil {
		all = append(all, s.cfg.Policies.Policies()...)
	}
	var out []*typesv1.AccessPolicy
	var key strings.Builder
	for _, p := range all {
		if policyApplies(p.GetTarget(), stored, pods) {
			out = append(out, p)
			fmt.Fprintf(&key, "%s@%d;", p.GetName(), p.GetRevision())
		}
	}
	return out, key.String(), nil
}

func policyApplies(target string, stored map[string]spiffeid.ID, pods map[string]entry.Entry) bool {
	for _, id := range stored {
		if authz.TargetMatches(target, id) {
			return true
		}
	}
	for _, e := range pods {
		if authz.TargetMatches(target, e.SPIFFEID) {
			return true
		}
	}
	return false
}

// maxDecisions bounds one ReportDecisions call.
const maxDecisions = 10000

// owns returns a check of whether a SPIFFE ID is one of the agent's own
// workloads: a pod identity of its node (Kubernetes), or an entry
// parented to it. Answers are kept for the call; a node's pod identities
// are rendered once per change of its pods (podIDs), not on every report.
func (s *NodeServer) owns(ctx context.Context, c caller) func(id string) (bool, error) {
	known := map[string]bool{}
	var pods map[string]bool
	return func(id string) (bool, error) {
		if v, ok := known[id]; ok {
			return v, nil
		}
		if c.node != "" {
			if pods == nil {
				pods = s.podIDs(c)
			}
			if pods[id] {
				known[id] = true
				return true, nil
			}
		}
		es, _, err := s.cfg.Store.ListEntries(ctx, store.ListFilter{SPIFFEID: id, ParentID: c.id.String(), PageSize: 1})
		if err != nil {
			return false, err
		}
		known[id] = len(es) > 0
		return known[id], nil
	}
}

// nodePodIDs are the SPIFFE IDs of a node's pods, valid until a change of
// the node's pods or of what concerns every node.
type nodePodIDs struct {
	ids       map[string]bool
	pods, all <-chan struct{}
}

// podIDs returns the SPIFFE IDs of the pods of c's node.
func (s *NodeServer) podIDs(c caller) map[string]bool {
	s.podIDsMu.Lock()
	cached, ok := s.podIDsByNode[c.node]
	s.podIDsMu.Unlock()
	if ok && !closed(cached.pods) && !closed(cached.all) {
		return cached.ids
	}
	// The channels first: a change while rendering makes the next call
	// render again.
	pods, all := s.cfg.Pods.Changed(c.node)
	ids := map[string]bool{}
	for _, e := range s.cfg.Pods.ForNode(c.node, c.id) {
		ids[e.SPIFFEID.String()] = true
	}
	s.podIDsMu.Lock()
	s.podIDsByNode[c.node] = nodePodIDs{ids: ids, pods: pods, all: all}
	s.podIDsMu.Unlock()
	return ids
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ReportDecisions implements agentv1.NodeServer: authorization decisions
// of the agent's workloads go to the audit log.
func (s *NodeServer) ReportDecisions(ctx context.Context, req *typesv1.DecisionReport) (*typesv1.DecisionReportAck, error) {
	const method = "ReportDecisions"
	c, err := s.authAgent(ctx, method)
	if err != nil {
		return nil, err
	}
	if len(req.GetDecisions()) > maxDecisions || len(req.GetTraffic()) > maxDecisions {
		return nil, status.Errorf(codes.InvalidArgument, "%d decisions, %d traffic counts: at most %d of each per call", len(req.GetDecisions()), len(req.GetTraffic()), maxDecisions)
	}
	recs := make([]audit.Record, 0, len(req.GetDecisions())+1)
	// An agent speaks for its own workloads only: decisions of any other
	// server are left out of the log, and the attempt is audited.
	owns := s.owns(ctx, c)
	var foreign []string
	for i, d := range req.GetDecisions() {
		server, err := spiffeid.FromString(d.GetServer())
		if err != nil || server.TrustDomain() != s.cfg.TrustDomain {
			return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: fmt.Sprintf("decisions[%d].server: not an ID of this trust domain", i)})
		}
		own, err := owns(server.String())
		if err != nil {
			return nil, s.cfg.internal(ctx, "report decisions", err)
		}
		if !own {
			if !slices.Contains(foreign, server.String()) {
				foreign = append(foreign, server.String())
			}
			continue
		}
		if _, err := spiffeid.FromString(d.GetPeer()); err != nil && d.GetPeer() != "" {
			return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: fmt.Sprintf("decisions[%d].peer: %v", i, err)})
		}
		m := d.GetMethod()
		if len(m) > 512 {
			m = m[:512]
		}
		r := audit.Record{Actor: c.id.String(), SPIFFEID: server.String(), Peer: d.GetPeer(), Method: m}
		switch {
		case d.GetShadow():
			r.Event, r.Result, r.Time = audit.AuthzShadowDeny, "shadow", time.Unix(d.GetTime(), 0).UTC()
		case d.GetAllowed():
			r.Event, r.Result, r.Count, r.Window = audit.AuthzAllow, audit.Success, d.GetCount(), time.Unix(d.GetTime(), 0).UTC()
		default:
			r.Event, r.Result, r.Time = audit.AuthzDeny, audit.Refused, time.Unix(d.GetTime(), 0).UTC()
		}
		recs = append(recs, r)
	}
	// Traffic counts: of the agent's own workloads only, like decisions.
	var traffic []*typesv1.TrafficCount
	for i, tc := range req.GetTraffic() {
		if err := checkTraffic(tc); err != nil {
			return nil, s.cfg.refuse(method, codes.InvalidArgument, audit.Record{Actor: c.id.String(), Reason: fmt.Sprintf("traffic[%d]: %v", i, err)})
		}
		own, err := owns(tc.GetServer())
		if err != nil {
			return nil, s.cfg.internal(ctx, "report traffic", err)
		}
		if !own {
			if !slices.Contains(foreign, tc.GetServer()) {
				foreign = append(foreign, tc.GetServer())
			}
			continue
		}
		traffic = append(traffic, tc)
	}
	if len(foreign) > 0 {
		if len(foreign) > 5 {
			foreign = append(foreign[:5], "...")
		}
		recs = append(recs, audit.Record{Event: audit.RequestRefuse, Actor: c.id.String(), Result: audit.Refused,
			Reason: method + ": decisions and traffic counts of servers that are not this agent's workloads left out: " + strings.Join(foreign, ", ")})
		s.cfg.Metrics.refusals.WithLabelValues(method).Inc()
	}
	if n := req.GetDropped(); n > 0 {
		recs = append(recs, audit.Record{Event: audit.AuthzDropped, Actor: c.id.String(), Dropped: n, Result: audit.Failure,
			Reason: "services dropped decision records (full buffers)"})
	}
	if err := s.cfg.auditOrFail(recs...); err != nil {
		return nil, err
	}
	s.cfg.Metrics.trafficCounts.Add(float64(len(traffic)))
	if s.cfg.Traffic != nil && len(traffic) > 0 {
		s.cfg.Traffic.ReportTraffic(traffic)
	}
	return &typesv1.DecisionReportAck{}, nil
}

// checkTraffic checks one traffic count a service reported.
func checkTraffic(tc *typesv1.TrafficCount) error {
	if _, err := spiffeid.FromString(tc.GetServer()); err != nil {
		return fmt.Errorf("server: %v", err)
	}
	if _, err := spiffeid.FromString(tc.GetPeer()); err != nil {
		return fmt.Errorf("peer: %v", err)
	}
	if m := tc.GetMethod(); m == "" || len(m) > 512 {
		return errors.New("method: want 1 to 512 bytes")
	}
	if tc.GetCalls() < 1 || tc.GetDenials() < 0 || tc.GetDenials() > tc.GetCalls() || tc.GetBytesIn() < 0 || tc.GetBytesOut() < 0 || tc.GetMinute()%60 != 0 {
		return errors.New("counts: calls at least 1, denials at most calls, bytes not negative, minute on a minute")
	}
	if len(tc.GetLatency()) > 7 {
		return errors.New("latency: at most 7 buckets")
	}
	return nil
}
