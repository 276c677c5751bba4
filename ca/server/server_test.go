package server_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/api"
	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/refusal"
	"github.com/signet-id/signet/internal/signetid"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type testCA struct {
	dir   string
	addr  string
	admin adminv1.AdminClient
	roots *x509bundle.Bundle
}

func startCA(t testing.TB, opts ...func(*server.Config)) *testCA {
	t.Helper()
	dir := t.TempDir()
	cfg := server.Config{TrustDomain: td, DataDir: dir, ListenAddr: "127.0.0.1:0"}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		cfg.Ready = func(a string) { ready <- a }
		done <- server.Run(ctx, cfg)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server.Run: %v", err)
		}
	})
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("server.Run: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ca := &testCA{dir: dir, addr: addr, admin: adminv1.NewAdminClient(conn)}
	resp, err := ca.admin.GetBundle(context.Background(), &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var roots []*x509.Certificate
	for _, der := range resp.GetBundle().GetX509Authorities() {
		c, _ := x509.ParseCertificate(der)
		roots = append(roots, c)
	}
	ca.roots = x509bundle.FromX509Authorities(td, roots)
	return ca
}

func newCSR(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// nodeClient dials the agent API; with svid nil it is an unattested agent.
func (ca *testCA) nodeClient(t testing.TB, svid *x509svid.SVID) agentv1.NodeClient {
	t.Helper()
	authz := tlsconfig.AuthorizeID(signetid.CA(td))
	cfg := tlsconfig.TLSClientConfig(ca.roots, authz)
	if svid != nil {
		cfg = tlsconfig.MTLSClientConfig(svid, ca.roots, authz)
	}
	conn, err := grpc.NewClient(ca.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewNodeClient(conn)
}

func (ca *testCA) token(t testing.TB, node string, ttl int64) string {
	t.Helper()
	resp, err := ca.admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{NodeName: node, TtlSeconds: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetToken()
}

func (ca *testCA) attest(t testing.TB, token string) (*x509svid.SVID, error) {
	t.Helper()
	key, csr := newCSR(t)
	resp, err := ca.nodeClient(t, nil).AttestNode(context.Background(), &agentv1.AttestNodeRequest{
		Attestation: &agentv1.AttestNodeRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: token}}, Csr: csr,
	})
	if err != nil {
		return nil, err
	}
	svid, err := x509svid.ParseRaw(concat(resp.GetSvidChain()), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.roots); err != nil {
		t.Fatalf("agent SVID does not verify: %v", err)
	}
	return svid, nil
}

func concat(ders [][]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, d...)
	}
	return out
}

func mustPKCS8(t testing.TB, key *ecdsa.PrivateKey) []byte {
	b, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (ca *testCA) createEntry(t testing.TB, id, parent string) *typesv1.Entry {
	t.Helper()
	resp, err := ca.admin.CreateEntries(context.Background(), &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
		SpiffeId: id, ParentId: parent, Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:1000"}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetEntries()[0]
}

// auditEvents reads the audit log.
func (ca *testCA) auditEvents(t testing.TB) []audit.Record {
	t.Helper()
	f, err := os.Open(filepath.Join(ca.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error = %v; want code %s", err, code)
	}
}

func TestAgentMintsOnlyItsOwnEntries(t *testing.T) {
	ca := startCA(t)
	ctx := context.Background()
	node1 := "spiffe://example.org/signet/agent/join/node1"
	agent1, err := ca.attest(t, ca.token(t, "node1", 0))
	if err != nil {
		t.Fatal(err)
	}
	if agent1.ID.String() != node1 {
		t.Fatalf("agent ID = %s; want %s", agent1.ID, node1)
	}
	if _, err := ca.attest(t, ca.token(t, "node2", 0)); err != nil {
		t.Fatal(err)
	}
	own := ca.createEntry(t, "spiffe://example.org/w/own", node1)
	other := ca.createEntry(t, "spiffe://example.org/w/other", "spiffe://example.org/signet/agent/join/node2")
	client := ca.nodeClient(t, agent1)

	_, csr := newCSR(t)
	resp, err := client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: own.GetId(), Csr: csr}}})
	if err != nil {
		t.Fatal(err)
	}
	chain := resp.GetSvids()[0].GetCertChain()
	var certs []*x509.Certificate
	for _, der := range chain {
		c, _ := x509.ParseCertificate(der)
		certs = append(certs, c)
	}
	if id, _, err := x509svid.Verify(certs, ca.roots); err != nil || id.String() != own.GetSpiffeId() {
		t.Fatalf("minted SVID: %v, %v", id, err)
	}

	// Another agent's entry, alone or hidden in a batch, is refused whole.
	_, err = client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{
		{EntryId: own.GetId(), Csr: csr}, {EntryId: other.GetId(), Csr: csr},
	}})
	wantCode(t, err, codes.PermissionDenied)
	// The agent acts on the named entry (it drops a pod that left the node).
	if reason, meta := refusal.Of(err); reason != refusal.Entry || meta[refusal.EntryID] != other.GetId() {
		t.Errorf("refusal of another agent's entry names %q %v; want %s of %s", reason, meta, refusal.Entry, other.GetId())
	}
	_, err = client.MintJWTSVID(ctx, &agentv1.MintJWTSVIDRequest{EntryId: other.GetId(), Audience: []string{"x"}})
	wantCode(t, err, codes.PermissionDenied)
	_, err = client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: "no-such-entry", Csr: csr}}})
	wantCode(t, err, codes.PermissionDenied)
	refusals := 0
	for _, r := range ca.auditEvents(t) {
		if r.Event == audit.RequestRefuse && r.EntryID == other.GetId() && r.Actor == node1 {
			refusals++
		}
	}
	if refusals != 2 {
		t.Errorf("audit holds %d refusals of node1 asking for node2's entry; want 2", refusals)
	}

	jwt, err := client.MintJWTSVID(ctx, &agentv1.MintJWTSVIDRequest{EntryId: own.GetId(), Audience: []string{"billing"}})
	if err != nil || jwt.GetSpiffeId() != own.GetSpiffeId() {
		t.Fatalf("MintJWTSVID = %v, %v", jwt, err)
	}
	// An unattested caller gets nothing.
	_, err = ca.nodeClient(t, nil).MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: own.GetId(), Csr: csr}}})
	wantCode(t, err, codes.Unauthenticated)

	// Bad CSRs are refused with a reason.
	_, err = client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: own.GetId(), Csr: []byte("junk")}}})
	wantCode(t, err, codes.InvalidArgument)
}

func TestJoinTokenIsSingleUseAndExpires(t *testing.T) {
	ca := startCA(t)
	tok := ca.token(t, "node1", 0)
	if _, err := ca.attest(t, tok); err != nil {
		t.Fatal(err)
	}
	_, err := ca.attest(t, tok)
	wantCode(t, err, codes.PermissionDenied)
	if !strings.Contains(err.Error(), "already used") {
		t.Errorf("reused token error = %v", err)
	}
	short := ca.token(t, "node2", 1)
	time.Sleep(1100 * time.Millisecond)
	_, err = ca.attest(t, short)
	wantCode(t, err, codes.PermissionDenied)
	_, err = ca.attest(t, "made-up-token")
	wantCode(t, err, codes.PermissionDenied)
	failures := 0
	for _, r := range ca.auditEvents(t) {
		if r.Event == audit.NodeAttest && r.Result == audit.Failure {
			failures++
		}
		raw, _ := json.Marshal(r)
		if strings.Contains(string(raw), tok) || strings.Contains(string(raw), short) {
			t.Fatalf("audit record holds a join token: %s", raw)
		}
	}
	if failures != 3 {
		t.Errorf("audit holds %d failed attestations; want 3", failures)
	}
}

func TestEvictedAndReplacedAgentsAreRefused(t *testing.T) {
	ca := startCA(t)
	ctx := context.Background()
	node1 := "spiffe://example.org/signet/agent/join/node1"
	e := ca.createEntry(t, "spiffe://example.org/w", node1)
	_, csr := newCSR(t)
	mint := func(svid *x509svid.SVID) error {
		_, err := ca.nodeClient(t, svid).MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: e.GetId(), Csr: csr}}})
		return err
	}
	first, err := ca.attest(t, ca.token(t, "node1", 0))
	if err != nil {
		t.Fatal(err)
	}
	// Renewal gives a new SVID that works.
	key, renewCSR := newCSR(t)
	rr, err := ca.nodeClient(t, first).RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: renewCSR})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := x509svid.ParseRaw(concat(rr.GetSvidChain()), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if err := mint(renewed); err != nil {
		t.Fatalf("renewed SVID refused: %v", err)
	}
	// A second attestation for the same node replaces the first agent.
	second, err := ca.attest(t, ca.token(t, "node1", 0))
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, mint(first), codes.PermissionDenied)
	wantCode(t, mint(renewed), codes.PermissionDenied)
	// The agent learns it is refused from the error's details.
	if reason, _ := refusal.Of(mint(first)); reason != refusal.Agent {
		t.Errorf("a replaced agent's refusal names %q; want %s", reason, refusal.Agent)
	}
	if err := mint(second); err != nil {
		t.Fatalf("new agent refused: %v", err)
	}
	evictions := 0
	for _, r := range ca.auditEvents(t) {
		if r.Event == audit.AgentEvict && r.SPIFFEID == node1 {
			evictions++
		}
	}
	if evictions != 1 {
		t.Errorf("audit holds %d evictions; want 1 for the re-attestation", evictions)
	}
	// An operator's eviction stops the agent on every call.
	if _, err := ca.admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: node1}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, mint(second), codes.PermissionDenied)
	_, err = ca.nodeClient(t, second).RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: renewCSR})
	wantCode(t, err, codes.PermissionDenied)
	if reason, _ := refusal.Of(err); reason != refusal.Agent {
		t.Errorf("an evicted agent's refusal names %q; want %s", reason, refusal.Agent)
	}
}

func TestSyncStreamsChangesAndResumes(t *testing.T) {
	ca := startCA(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node1 := "spiffe://example.org/signet/agent/join/node1"
	agent, err := ca.attest(t, ca.token(t, "node1", 0))
	if err != nil {
		t.Fatal(err)
	}
	e1 := ca.createEntry(t, "spiffe://example.org/w/1", node1)
	ca.createEntry(t, "spiffe://example.org/w/other", "spiffe://example.org/signet/agent/join/node2")
	client := ca.nodeClient(t, agent)
	stream, err := client.Sync(ctx, &agentv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if !first.GetFull() || len(first.GetEntries()) != 1 || first.GetEntries()[0].GetId() != e1.GetId() || first.GetBundle() == nil {
		t.Fatalf("first sync = %v; want full, only node1's entry, and the bundle", first)
	}
	// A new entry arrives on the open stream.
	e2 := ca.createEntry(t, "spiffe://example.org/w/2", node1)
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if msg.GetFull() || len(msg.GetEntries()) != 1 || msg.GetEntries()[0].GetId() != e2.GetId() {
		t.Fatalf("second sync = %v; want e2 only", msg)
	}
	rev := msg.GetRevision()
	cancel()

	// While disconnected, e1 is deleted and e3 created; a resumed stream
	// brings exactly that.
	if _, err := ca.admin.DeleteEntries(context.Background(), &adminv1.DeleteEntriesRequest{Ids: []string{e1.GetId()}}); err != nil {
		t.Fatal(err)
	}
	e3 := ca.createEntry(t, "spiffe://example.org/w/3", node1)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	stream, err = client.Sync(ctx2, &agentv1.SyncRequest{Revision: rev})
	if err != nil {
		t.Fatal(err)
	}
	msg, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if msg.GetFull() || len(msg.GetEntries()) != 1 || msg.GetEntries()[0].GetId() != e3.GetId() ||
		len(msg.GetDeletedEntryIds()) != 1 || msg.GetDeletedEntryIds()[0] != e1.GetId() {
		t.Fatalf("resumed sync = %v; want e3 added and e1 deleted", msg)
	}
}

func TestAdminRefusesOtherUIDs(t *testing.T) {
	ca := startCA(t)
	fi, err := os.Stat(filepath.Join(ca.dir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v; want 0600", fi.Mode().Perm())
	}
	authz := api.NewAdminAuthorizer(api.Config{TrustDomain: td, Audit: audit.New(new(strings.Builder))}, nil)
	called := false
	handler := func(ctx context.Context, req any) (any, error) { called = true; return nil, nil }
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Creds: peercred.Creds{UID: 4242}}})
	_, err = authz.UnaryInterceptor(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/signet.admin.v1.Admin/CreateJoinToken"}, handler)
	wantCode(t, err, codes.PermissionDenied)
	if called {
		t.Fatal("handler ran for a foreign uid")
	}
	// No credentials at all (a TCP caller without a client certificate).
	_, err = authz.UnaryInterceptor(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x"}, handler)
	wantCode(t, err, codes.Unauthenticated)
	ctx = peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.AuthInfo{Creds: peercred.Creds{UID: uint32(os.Getuid())}}})
	if _, err := authz.UnaryInterceptor(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x"}, handler); err != nil || !called {
		t.Fatalf("own uid refused: %v", err)
	}
}

func TestBatchIsAllOrNothing(t *testing.T) {
	ca := startCA(t)
	ctx := context.Background()
	entries := []*typesv1.Entry{
		{SpiffeId: "spiffe://example.org/a", ParentId: "spiffe://example.org/signet/agent/join/n", Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:1"}}},
		{SpiffeId: "spiffe://example.org/b", ParentId: "spiffe://example.org/signet/agent/join/n", Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:one"}}},
	}
	_, err := ca.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: entries})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "entries[1].selectors[0]") {
		t.Errorf("error %v does not name entries[1].selectors[0]", err)
	}
	list, err := ca.admin.ListEntries(ctx, &adminv1.ListEntriesRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Fatalf("after a refused batch the store holds %d entries, %v", len(list.GetEntries()), err)
	}
	entries[1].Selectors[0].Value = "uid:2"
	if _, err := ca.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: entries}); err != nil {
		t.Fatal(err)
	}
	// The same entry again is a conflict, and nothing of the batch lands.
	entries = append(entries, &typesv1.Entry{SpiffeId: "spiffe://example.org/c", ParentId: "spiffe://example.org/signet/agent/join/n", Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:3"}}})
	_, err = ca.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{entries[2], entries[0]}})
	wantCode(t, err, codes.AlreadyExists)
	list, _ = ca.admin.ListEntries(ctx, &adminv1.ListEntriesRequest{})
	if len(list.GetEntries()) != 2 {
		t.Fatalf("store holds %d entries; want 2", len(list.GetEntries()))
	}
}

// mintSVID has agent mint an X509-SVID for entry e.
func (ca *testCA) mintSVID(t testing.TB, agent *x509svid.SVID, e *typesv1.Entry) *x509svid.SVID {
	t.Helper()
	key, csr := newCSR(t)
	resp, err := ca.nodeClient(t, agent).MintX509SVIDs(context.Background(), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: e.GetId(), Csr: csr}}})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(concat(resp.GetSvids()[0].GetCertChain()), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func TestAdminOverMTLS(t *testing.T) {
	adminAddr := systest.FreeAddr(t)
	adminID := spiffeid.RequireFromPath(td, "/ops/admin")
	ca := startCA(t, func(c *server.Config) {
		c.AdminListenAddr = adminAddr
		c.AdminIDs = []spiffeid.ID{adminID}
	})
	node1 := "spiffe://example.org/signet/agent/join/node1"
	agent, err := ca.attest(t, ca.token(t, "node1", 0))
	if err != nil {
		t.Fatal(err)
	}
	adminSVID := ca.mintSVID(t, agent, ca.createEntry(t, adminID.String(), node1))
	otherSVID := ca.mintSVID(t, agent, ca.createEntry(t, "spiffe://example.org/ops/intern", node1))
	dial := func(svid *x509svid.SVID) adminv1.AdminClient {
		authz := tlsconfig.AuthorizeID(signetid.CA(td))
		cfg := tlsconfig.TLSClientConfig(ca.roots, authz)
		if svid != nil {
			cfg = tlsconfig.MTLSClientConfig(svid, ca.roots, authz)
		}
		conn, err := grpc.NewClient(adminAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return adminv1.NewAdminClient(conn)
	}
	ctx := context.Background()
	resp, err := dial(adminSVID).ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil || len(resp.GetAgents()) != 1 {
		t.Fatalf("admin SVID: ListAgents = %v, %v", resp, err)
	}
	_, err = dial(otherSVID).ListAgents(ctx, &adminv1.ListAgentsRequest{})
	wantCode(t, err, codes.PermissionDenied)
	_, err = dial(agent).CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{NodeName: "x"})
	wantCode(t, err, codes.PermissionDenied)
	if _, err = dial(nil).ListAgents(ctx, &adminv1.ListAgentsRequest{}); err == nil {
		t.Fatal("admin API answered a client without a certificate")
	}
}

func TestEvictionEndsSyncAndMetricsCount(t *testing.T) {
	health := systest.FreeAddr(t)
	ca := startCA(t, func(c *server.Config) { c.HealthAddr = health })
	node1 := "spiffe://example.org/signet/agent/join/node1"
	agent, err := ca.attest(t, ca.token(t, "node1", 0))
	if err != nil {
		t.Fatal(err)
	}
	ca.mintSVID(t, agent, ca.createEntry(t, "spiffe://example.org/w", node1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := ca.nodeClient(t, agent).Sync(ctx, &agentv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: node1}); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied)

	resp, err := http.Get("http://" + health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`signet_ca_svids_issued_total{type="x509"} 1`,
		`signet_ca_svids_issued_total{type="agent"} 1`,
		`signet_ca_node_attestations_total{method="join_token",result="success"} 1`,
		`signet_ca_refusals_total{method="Sync"} 1`,
		`signet_ca_sign_duration_seconds_count{type="x509"} 1`,
		"signet_ca_intermediate_expiry_seconds",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get("http://" + health + path)
		if err != nil || resp.StatusCode != want {
			t.Errorf("GET %s = %v, %v", path, resp, err)
		}
		resp.Body.Close()
	}
}

func TestJoinTokenNodeNames(t *testing.T) {
	ca := startCA(t)
	for _, bad := range []string{"", "../etc", "a/b", "-x", "has space", strings.Repeat("n", 254)} {
		_, err := ca.admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{NodeName: bad})
		wantCode(t, err, codes.InvalidArgument)
	}
	for _, good := range []string{"node1", "ip-10-0-0-1.ec2.internal", "n_1"} {
		if _, err := ca.admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{NodeName: good}); err != nil {
			t.Errorf("node name %q refused: %v", good, err)
		}
	}
}

// TestCAKeysAudited: the CA's first keys are in the audit log, described
// (kind, id, state, expiry) but never with key material.
func TestCAKeysAudited(t *testing.T) {
	ca := startCA(t)
	kinds := map[string]bool{}
	for _, r := range ca.auditEvents(t) {
		if r.Event != audit.KeyCreate {
			continue
		}
		if r.Key == nil || r.Key.ID == "" || r.Key.State != "active" || r.Key.NotAfter.IsZero() || r.Actor != "signet-ca" {
			t.Errorf("key record %+v", r)
			continue
		}
		kinds[r.Key.Kind] = true
	}
	if len(kinds) != 3 {
		t.Fatalf("key kinds created in the audit log: %v; want root, intermediate and JWT", kinds)
	}
	raw, err := os.ReadFile(filepath.Join(ca.dir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "PRIVATE KEY") || strings.Contains(string(raw), "key_pem") {
		t.Fatal("the audit log holds key material")
	}
}
