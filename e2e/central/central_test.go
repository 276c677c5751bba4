// Package central tests central access policies end to end, in-process
// but with every real part: signet-ca on SQLite, signet-agent on its Unix
// socket, the SDK on both sides of a gRPC connection, and the CA's audit
// log.
package central

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

const (
	cartID  = "spiffe://example.org/cart"
	frontID = "spiffe://example.org/front"
	otherID = "spiffe://example.org/other"
	check   = "/grpc.health.v1.Health/Check"
)

func policy(name, target, action string, peer string) *typesv1.AccessPolicy {
	return &typesv1.AccessPolicy{Name: name, Target: target, Rules: []*typesv1.PolicyRule{
		{Action: action, Peers: []*typesv1.PolicyPeer{{Id: peer}}, Methods: []string{check}},
	}}
}

// cartAndFront starts a CA and an agent (in this process, with their real
// sockets) and the SDK sources of cart and front on the agent.
func cartAndFront(t *testing.T, opts ...func(*server.Config)) (*systest.CA, *sdk.Source, *sdk.Source) {
	t.Helper()
	ca := systest.StartCA(t, opts...)
	agent := ca.StartAgent("node1")
	for _, id := range []string{cartID, frontID} {
		ca.CreateEntry(id, agent.ID.String(), time.Hour, "unix:uid:0")
	}
	return ca, newSource(t, agent, cartID), newSource(t, agent, frontID)
}

// newSource is an SDK source of identity id from agent, closed with the
// test.
func newSource(tb testing.TB, agent *systest.Agent, id string, opts ...sdk.Option) *sdk.Source {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := sdk.NewSource(ctx, append([]sdk.Option{sdk.WithAddr(agent.Addr), sdk.WithID(id)}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// serveHealth runs the gRPC health service with opts on loopback until the
// test ends and returns a client that calls it as front, expecting cart.
func serveHealth(tb testing.TB, front *sdk.Source, opts ...grpc.ServerOption) healthpb.HealthClient {
	tb.Helper()
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(l)
	tb.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(sdk.ClientCredentials(front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(cartID)))))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCentralPolicyOnRunningServer: a policy created with the admin API
// reaches the server it targets through its agent and decides its calls;
// a change applies without restart; decisions reach the CA's audit log.
func TestCentralPolicyOnRunningServer(t *testing.T) {
	metrics := systest.FreeAddr(t)
	ca, cart, front := cartAndFront(t, func(c *server.Config) { c.HealthAddr = metrics })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: policy("cart", cartID, "allow", frontID)}); err != nil {
		t.Fatal(err)
	}
	az, _ := authz.New(cart.TrustDomain()) // nothing in code: central rules only
	followCtx, stopFollow := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() {
		cart.Follow(followCtx, az, func(err error) { t.Logf("follow: %v", err) })
		close(followed)
	}()
	eventually(t, "the central policy at the server", func() bool { return az.Allowed(spiffeid.RequireFromString(frontID), check) })

	var reached atomic.Int64
	client := serveHealth(t, front, append(sdk.GRPCServerOptions(cart, az), grpc.ChainUnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			reached.Add(1)
			return h(ctx, req)
		}))...)
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("allowed by the central policy: %v", err)
	}

	// The operator denies front: the running server refuses it.
	if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: policy("cart", cartID, "deny", frontID)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the changed policy", func() bool {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return status.Code(err) == codes.PermissionDenied
	})
	n := reached.Load()
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.PermissionDenied || reached.Load() != n {
		t.Fatalf("a denied call: %v; reached the handler: %v", err, reached.Load() != n)
	}
	stopFollow()
	<-followed
	recs := ca.AuditLog()
	var allows, denies int64
	for _, r := range recs {
		if r["spiffe_id"] != cartID || r["peer"] != frontID {
			continue
		}
		switch r["event"] {
		case "authz.allow":
			allows += int64(r["count"].(float64))
		case "authz.deny":
			denies++
			if r["method"] != check {
				t.Errorf("denial of %v", r["method"])
			}
		}
	}
	if allows != n || denies < 2 {
		t.Fatalf("audit: %d allowed calls counted, %d denials; want %d and at least 2", allows, denies, n)
	}
	// The server's traffic counts reached the CA with the decisions.
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^signet_ca_traffic_counts_total (\d+)`).FindSubmatch(body)
	if m == nil || string(m[1]) == "0" {
		t.Fatalf("the CA got no traffic counts: %q", m)
	}
	// The detector (no learning period here) found front, a caller cart
	// never had: listed, and audited.
	eventually(t, "the new caller among the anomalies", func() bool {
		resp, err := ca.Admin.ListAnomalies(ctx, &adminv1.ListAnomaliesRequest{Server: cartID})
		if err != nil {
			return false
		}
		for _, a := range resp.GetAnomalies() {
			if a.GetKind() == "new_caller" && a.GetPeer() == frontID {
				return true
			}
		}
		return false
	})
	audited := false
	for _, r := range ca.AuditLog() {
		if r["event"] == "anomaly.new_caller" && r["spiffe_id"] == cartID && r["peer"] == frontID {
			audited = true
		}
	}
	if !audited {
		t.Error("no anomaly.new_caller in the audit log")
	}
}

// TestPolicyWatchAnswersOnlyTheCaller: the agent holds policies of two
// workloads on its node; each caller gets only those that target it, and
// cannot report decisions as another workload.
func TestPolicyWatchAnswersOnlyTheCaller(t *testing.T) {
	ca := systest.StartCA(t)
	agent := ca.StartAgent("node1")
	ca.CreateEntry(cartID, agent.ID.String(), time.Hour, "unix:uid:0")
	ca.CreateEntry(otherID, agent.ID.String(), time.Hour, "unix:uid:4242") // another workload on the node
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The agent holds this caller's entry (the CA's push is asynchronous;
	// until it arrives the caller has no identity to watch policies for).
	eventually(t, "the caller's identity at the agent", func() bool {
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(agent.Addr))
		return err == nil
	})
	for _, p := range []*typesv1.AccessPolicy{policy("mine", cartID, "allow", frontID), policy("theirs", otherID, "allow", frontID),
		policy("all", "spiffe://example.org/*", "deny", otherID)} {
		if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: p}); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient(agent.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	mctx := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	stream, err := workloadv1.NewPolicyClient(conn).Watch(mctx, &workloadv1.WatchPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for len(names) < 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		names = names[:0]
		for _, p := range resp.GetPolicies() {
			names = append(names, p.GetName())
		}
	}
	if strings.Join(names, ",") != "all,mine" {
		t.Fatalf("the caller got policies %v, want all and mine", names)
	}
	// Without the security header: refused.
	bare, err := workloadv1.NewPolicyClient(conn).Watch(ctx, &workloadv1.WatchPoliciesRequest{})
	if err == nil {
		_, err = bare.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("watch without the header: %v, want InvalidArgument", err)
	}
	_, err = workloadv1.NewDecisionsClient(conn).Report(mctx, &typesv1.DecisionReport{Decisions: []*typesv1.Decision{{Server: otherID, Peer: frontID, Method: check}}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reporting as another workload: %v, want PermissionDenied", err)
	}
}

// TestWorkloadHeldKey: with WithWorkloadKey the service's key is made in
// its process; the agent only passes the CSR to the CA, and the SVID
// serves mutual TLS like any other.
func TestWorkloadHeldKey(t *testing.T) {
	ca := systest.StartCA(t)
	agent := ca.StartAgent("node1")
	ca.CreateEntry(cartID, agent.ID.String(), time.Hour, "unix:uid:0")
	ca.CreateEntry(frontID, agent.ID.String(), time.Hour, "unix:uid:0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cart := newSource(t, agent, cartID, sdk.WithWorkloadKey())
	svid, err := cart.GetX509SVID()
	if err != nil || svid.ID.String() != cartID {
		t.Fatalf("SVID %v, %v", svid, err)
	}
	pub, ok := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(svid.Certificates[0].PublicKey) {
		t.Fatal("the certificate is not for the key this process made")
	}
	// The agent's own SVIDs for this identity have other keys.
	agentSVIDs, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(agent.Addr))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range agentSVIDs {
		if pub.Equal(s.Certificates[0].PublicKey) {
			t.Fatal("the agent holds the workload's key")
		}
	}
	front := newSource(t, agent, frontID)
	az, _ := authz.New(cart.TrustDomain(), authz.Allow(authz.PeerID(frontID)))
	l, err := sdk.Listen("tcp", "127.0.0.1:0", cart, az)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			sdk.PeerIDOfConn(c)
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	c, err := sdk.Dial(ctx, "tcp", l.Addr().String(), front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(cartID)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q %v", buf, err)
	}
	if !c.(*tls.Conn).ConnectionState().PeerCertificates[0].Equal(svid.Certificates[0]) {
		t.Fatal("the server did not present the workload-held SVID")
	}
}

// TestWorkloadKeyOnlyIdentity: an entry marked workload_key is never
// minted by the agent with a key of its own: a plain Workload API client
// is told to bring its own key, the SDK with WithWorkloadKey gets the SVID,
// and the CA issued that identity exactly once, for the workload's CSR.
func TestWorkloadKeyOnlyIdentity(t *testing.T) {
	ca := systest.StartCA(t)
	agent := ca.StartAgent("node1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := ca.Admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
		SpiffeId: cartID, ParentId: agent.ID.String(), WorkloadKey: true,
		Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:0"}},
	}}}); err != nil {
		t.Fatal(err)
	}
	// Until the entry reaches the agent, the caller has no identity at
	// all ("no identity issued"); once it has, the refusal says why.
	var err error
	for {
		_, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(agent.Addr))
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "no identity issued") || strings.Contains(err.Error(), "WithWorkloadKey") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "WithWorkloadKey") {
		t.Fatalf("FetchX509SVID of a workload-key-only identity: %v; want PermissionDenied naming WithWorkloadKey", err)
	}
	cart := newSource(t, agent, cartID, sdk.WithWorkloadKey())
	if svid, err := cart.GetX509SVID(); err != nil || svid.ID.String() != cartID {
		t.Fatalf("SVID %v, %v", svid, err)
	}
	// JWT-SVIDs, which the agent only passes on, still work.
	if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "billing", Subject: spiffeid.RequireFromString(cartID)}, workloadapi.WithAddr(agent.Addr)); err != nil {
		t.Fatalf("JWT-SVID: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // room for a mint that must not happen
	issued := 0
	for _, r := range ca.AuditLog() {
		if r["event"] == "svid.x509.issue" && r["spiffe_id"] == cartID {
			issued++
		}
	}
	if issued != 1 {
		t.Fatalf("the CA issued %d X509-SVIDs of %s; want 1, for the workload's own key", issued, cartID)
	}
}

// TestAuditModePolicy: an audit-mode policy from the CA, at a running
// server through its agent, refuses nothing; the calls it would deny
// reach the CA's audit log as authz.shadow_deny.
func TestAuditModePolicy(t *testing.T) {
	ca, cart, front := cartAndFront(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// In force: front may call. Proposed, in audit mode: only someone else.
	if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: policy("cart", cartID, "allow", frontID)}); err != nil {
		t.Fatal(err)
	}
	proposed := policy("cart-proposed", cartID, "allow", "spiffe://example.org/ns/shop/sa/other")
	proposed.Mode = "audit"
	if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: proposed}); err != nil {
		t.Fatal(err)
	}
	az, _ := authz.New(cart.TrustDomain())
	followCtx, stopFollow := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() {
		cart.Follow(followCtx, az, func(err error) { t.Logf("follow: %v", err) })
		close(followed)
	}()
	eventually(t, "the policies at the server", func() bool { return az.Allowed(spiffeid.RequireFromString(frontID), check) })
	client := serveHealth(t, front, sdk.GRPCServerOptions(cart, az)...)
	for range 3 {
		if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("an audit-mode policy refused a call: %v", err)
		}
	}
	stopFollow()
	<-followed
	shadows := 0
	for _, r := range ca.AuditLog() {
		if r["event"] == "authz.shadow_deny" && r["spiffe_id"] == cartID && r["peer"] == frontID && r["method"] == check {
			shadows++
		}
		if r["event"] == "authz.deny" {
			t.Errorf("a real denial: %v", r)
		}
	}
	if shadows != 3 {
		t.Errorf("%d shadow denials in the audit log, want 3", shadows)
	}
}

// TestFromNode: the CA marks the SVIDs an agent mints with its node; a
// central rule from that node lets the caller in through the real SDK
// path, and the same rule from another node does not.
func TestFromNode(t *testing.T) {
	ca, cart, front := cartAndFront(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svid, _ := front.GetX509SVID()
	if got := authz.AttributesOf(svid.Certificates[0]); got.Node != "node1" {
		t.Fatalf("front's SVID says it runs on %+v", got)
	}
	fromNode := func(node string) *typesv1.AccessPolicy {
		p := policy("cart", cartID, "allow", frontID)
		p.Rules[0].From = []*typesv1.PolicySource{{Node: node}}
		return p
	}
	if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: fromNode("node1")}); err != nil {
		t.Fatal(err)
	}
	az, _ := authz.New(cart.TrustDomain())
	go cart.Follow(ctx, az, nil)
	eventually(t, "the policy at the server", func() bool {
		return az.CheckFrom(spiffeid.RequireFromString(frontID), authz.Attributes{Node: "node1"}, "", check)
	})
	client := serveHealth(t, front, sdk.GRPCServerOptions(cart, az)...)
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("from its own node: %v", err)
	}
	if _, err := ca.Admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: fromNode("node2")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the call refused from another node", func() bool {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return status.Code(err) == codes.PermissionDenied
	})
}

// TestForgedPlaceMarks: a workload that makes its own key asks, through
// the agent's socket, for an SVID whose request claims another node and a
// namespace in its subject; the SVID carries only the marks the CA sets
// (its agent's node), so a policy's from conditions cannot be fooled.
func TestForgedPlaceMarks(t *testing.T) {
	ca := systest.StartCA(t)
	agent := ca.StartAgent("node1")
	ca.CreateEntry(cartID, agent.ID.String(), time.Hour, "unix:uid:0")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{
		OrganizationalUnit: []string{authz.NodeUnit + "db-node-1", authz.NamespaceUnit + "kube-system"}, CommonName: "x"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+agent.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var resp *workloadv1.SignX509SVIDResponse
	eventually(t, "an SVID for the workload's key", func() bool {
		resp, err = workloadv1.NewKeysClient(conn).SignX509SVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true"),
			&workloadv1.SignX509SVIDRequest{Csr: csr, SpiffeId: cartID})
		return err == nil
	})
	leaf, err := x509.ParseCertificate(resp.GetCertChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := authz.AttributesOf(leaf); got != (authz.Attributes{Node: "node1"}) {
		t.Errorf("the SVID says it runs at %+v (units %v): the request chose its marks", got, leaf.Subject.OrganizationalUnit)
	}
}
