package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/keygen"
	"github.com/signet-id/signet/internal/refusal"
	"github.com/signet-id/signet/internal/selector"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// records returns the audit records written so far.
func (l *lockedBuffer) records(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

type nodeWorld struct {
	srv   *NodeServer
	st    *store.Store
	audit *lockedBuffer
}

// newNodeWorld is a Node server on a real SQLite store, a real authority
// and an audit log in memory; only the transport is left out: calls carry
// the peer a TLS handshake would have verified.
func newNodeWorld(t *testing.T) *nodeWorld {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "signet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	auth, err := authority.New(ctx, authority.Config{TrustDomain: td, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	buf := &lockedBuffer{}
	srv := NewNodeServer(Config{TrustDomain: td, Store: st, Authority: auth, Audit: audit.New(buf)})
	return &nodeWorld{srv: srv, st: st, audit: buf}
}

// asPeer is a call context whose peer presented chain[0].
func asPeer(chain [][]byte) context.Context {
	p := &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4000}}
	if len(chain) > 0 {
		leaf, _ := x509.ParseCertificate(chain[0])
		p.AuthInfo = credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}}
	}
	return peer.NewContext(context.Background(), p)
}

// attest attests node with a new join token and returns the agent SVID.
func (w *nodeWorld) attest(t *testing.T, node string) [][]byte {
	t.Helper()
	tok := "tok-" + node + "-" + time.Now().Format("150405.000000000")
	if err := w.st.CreateJoinToken(context.Background(), tok, node, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	_, csr, err := keygen.KeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := w.srv.AttestNode(asPeer(nil), &agentv1.AttestNodeRequest{
		Attestation: &agentv1.AttestNodeRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: tok}}, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetSvidChain()
}

func (w *nodeWorld) entry(t *testing.T, id, parent string) string {
	t.Helper()
	created, err := w.st.CreateEntries(context.Background(), []entry.Entry{{SPIFFEID: spiffeid.RequireFromString(id),
		ParentID: spiffeid.RequireFromString(parent), Selectors: []selector.Selector{{Type: "unix", Value: "uid:1000"}}}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return created[0].ID
}

func csrDER(t *testing.T) []byte {
	t.Helper()
	_, csr, err := keygen.KeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// calls are every Node RPC but AttestNode and Sync, as one agent makes
// them.
func (w *nodeWorld) calls(t *testing.T, entryID string) map[string]func(ctx context.Context) error {
	return map[string]func(ctx context.Context) error{
		"RenewAgent": func(ctx context.Context) error {
			_, err := w.srv.RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csrDER(t)})
			return err
		},
		"MintX509SVIDs": func(ctx context.Context) error {
			_, err := w.srv.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: entryID, Csr: csrDER(t)}}})
			return err
		},
		"MintJWTSVID": func(ctx context.Context) error {
			_, err := w.srv.MintJWTSVID(ctx, &agentv1.MintJWTSVIDRequest{EntryId: entryID, Audience: []string{"a"}})
			return err
		},
		"FetchPodEntries": func(ctx context.Context) error {
			_, err := w.srv.FetchPodEntries(ctx, &agentv1.FetchPodEntriesRequest{PodUid: "0f3c"})
			return err
		},
		"ReportDecisions": func(ctx context.Context) error {
			_, err := w.srv.ReportDecisions(ctx, &typesv1.DecisionReport{})
			return err
		},
	}
}

// testCaller is who calls (the chain it presents), and the code and refusal
// reason it should get.
type testCaller struct {
	who    string
	chain  [][]byte
	code   codes.Code
	reason string
}

// TestNodeRPCAuthorization: every Node RPC refuses a caller without an
// SVID, with an SVID that is not an agent's, and with an agent SVID the
// CA replaced (the node attested again); each refusal is audited and
// the last carries the refusal the agent acts on.
func TestNodeRPCAuthorization(t *testing.T) {
	w := newNodeWorld(t)
	old := w.attest(t, "node1")
	current := w.attest(t, "node1") // evicts the first SVID
	eid := w.entry(t, "spiffe://example.org/w/1", "spiffe://example.org/signet/agent/join/node1")
	mint, err := w.srv.MintX509SVIDs(asPeer(current), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: eid, Csr: csrDER(t)}}})
	if err != nil {
		t.Fatalf("the current agent cannot mint its own entry: %v", err)
	}
	workload := mint.GetSvids()[0].GetCertChain()

	for name, call := range w.calls(t, eid) {
		for _, c := range []testCaller{
			{"no SVID", nil, codes.Unauthenticated, ""},
			{"a workload SVID", workload, codes.PermissionDenied, ""},
			{"a replaced agent SVID", old, codes.PermissionDenied, refusal.Agent},
		} {
			before := len(w.audit.records(t))
			err := call(asPeer(c.chain))
			if status.Code(err) != c.code {
				t.Errorf("%s with %s: %v, want %s", name, c.who, err, c.code)
				continue
			}
			if r, _ := refusal.Of(err); r != c.reason {
				t.Errorf("%s with %s: refusal %q, want %q", name, c.who, r, c.reason)
			}
			if len(w.audit.records(t)) <= before {
				t.Errorf("%s with %s: refused without an audit record", name, c.who)
			}
		}
	}
}

// TestNodeRPCOwnEntriesOnly: an agent mints only entries parented to it;
// another agent's entry is refused and audited with the entry's ID, and
// decisions of another agent's server are left out of the log.
func TestNodeRPCOwnEntriesOnly(t *testing.T) {
	w := newNodeWorld(t)
	agent1 := w.attest(t, "node1")
	w.attest(t, "node2")
	other := w.entry(t, "spiffe://example.org/w/other", "spiffe://example.org/signet/agent/join/node2")
	own := w.entry(t, "spiffe://example.org/w/own", "spiffe://example.org/signet/agent/join/node1")
	ctx := asPeer(agent1)

	_, err := w.srv.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{
		{EntryId: own, Csr: csrDER(t)}, {EntryId: other, Csr: csrDER(t)}}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("minting another agent's entry: %v, want PermissionDenied", err)
	}
	if r, meta := refusal.Of(err); r != refusal.Entry || meta[refusal.EntryID] != other {
		t.Fatalf("refusal %q %v, want %s naming %s", r, meta, refusal.Entry, other)
	}
	if _, err := w.srv.MintJWTSVID(ctx, &agentv1.MintJWTSVIDRequest{EntryId: other, Audience: []string{"a"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT-SVID of another agent's entry: %v, want PermissionDenied", err)
	}
	if _, err := w.srv.MintJWTSVID(ctx, &agentv1.MintJWTSVIDRequest{EntryId: own, Audience: []string{"a"}}); err != nil {
		t.Fatalf("JWT-SVID of its own entry: %v", err)
	}
	if _, err := w.srv.FetchPodEntries(ctx, &agentv1.FetchPodEntriesRequest{PodUid: "0f3c"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("pod pull by a join-token agent: %v, want FailedPrecondition", err)
	}
	if _, err := w.srv.ReportDecisions(ctx, &typesv1.DecisionReport{Decisions: []*typesv1.Decision{
		{Server: "spiffe://example.org/w/own", Peer: "spiffe://example.org/p", Method: "/a.B/C", Time: time.Now().Unix()},
		{Server: "spiffe://example.org/w/other", Peer: "spiffe://example.org/p", Method: "/a.B/C", Time: time.Now().Unix()},
	}}); err != nil {
		t.Fatalf("ReportDecisions: %v", err)
	}
	var refusedMint, ownDeny, otherDeny bool
	for _, r := range w.audit.records(t) {
		switch {
		case r["event"] == audit.RequestRefuse && r["entry_id"] == other:
			refusedMint = true
		case r["event"] == audit.AuthzDeny && r["spiffe_id"] == "spiffe://example.org/w/own":
			ownDeny = true
		case r["event"] == audit.AuthzDeny && r["spiffe_id"] == "spiffe://example.org/w/other":
			otherDeny = true
		}
	}
	if !refusedMint || !ownDeny || otherDeny {
		t.Fatalf("audit: refused mint %v, own server's denial %v, other server's denial %v; want true, true, false", refusedMint, ownDeny, otherDeny)
	}
}

// syncStream is the server side of one Sync stream: the call's context,
// and the messages sent on it.
type syncStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent []*agentv1.SyncResponse
}

func (s *syncStream) Context() context.Context { return s.ctx }

func (s *syncStream) Send(m *agentv1.SyncResponse) error {
	s.sent = append(s.sent, m)
	return nil
}

// TestSyncDeafReplica: a replica that does not hear the others sends its
// agents away with the refusal they act on, and tells nothing of it to a
// caller that is not an agent.
func TestSyncDeafReplica(t *testing.T) {
	w := newNodeWorld(t)
	deaf := make(chan struct{})
	close(deaf)
	w.srv.cfg.Deaf = func() <-chan struct{} { return deaf }
	agent := w.attest(t, "node1")
	eid := w.entry(t, "spiffe://example.org/w/1", "spiffe://example.org/signet/agent/join/node1")
	mint, err := w.srv.MintX509SVIDs(asPeer(agent), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: eid, Csr: csrDER(t)}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []testCaller{
		{"no SVID", nil, codes.Unauthenticated, ""},
		{"a workload SVID", mint.GetSvids()[0].GetCertChain(), codes.PermissionDenied, ""},
		{"the agent", agent, codes.Unavailable, refusal.ReplicaDeaf},
	} {
		s := &syncStream{ctx: asPeer(c.chain)}
		err := w.srv.Sync(&agentv1.SyncRequest{}, s)
		if status.Code(err) != c.code {
			t.Errorf("Sync by %s: %v, want %s", c.who, err, c.code)
		}
		if r, _ := refusal.Of(err); r != c.reason {
			t.Errorf("Sync by %s: refusal %q, want %q", c.who, r, c.reason)
		}
		if len(s.sent) != 0 {
			t.Errorf("Sync by %s: %d messages sent by a deaf replica", c.who, len(s.sent))
		}
	}
}
