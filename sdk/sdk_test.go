package sdk_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
	"github.com/signet-id/signet/sdk/sdktest"
)

const (
	serverID   = "spiffe://example.org/ns/shop/sa/cart"
	frontID    = "spiffe://example.org/ns/shop/sa/front"
	strangerID = "spiffe://example.org/ns/shop/sa/stranger"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

type world struct {
	ca, otherCA *sdktest.CA
}

func newWorld(t *testing.T) *world {
	return &world{ca: sdktest.NewCA(t, "example.org"), otherCA: sdktest.NewCA(t, "other.org")}
}

func (w *world) source(t *testing.T, id string, ca *sdktest.CA, notAfter time.Time) (*sdk.Source, *sdktest.WorkloadAPI) {
	t.Helper()
	api := sdktest.NewWorkloadAPI(t, ca.Issue(t, id, time.Now().Add(-time.Hour), notAfter), ca)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := sdk.NewSource(ctx, sdk.WithAddr(api.Addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src, api
}

// grpcServer serves the gRPC health service behind the SDK; reached counts
// the calls that got past authorization to handler code.
func grpcServer(t *testing.T, src *sdk.Source, az *authz.Authorizer, reached *atomic.Int64, callers chan<- spiffeid.ID) string {
	t.Helper()
	record := func(ctx context.Context) {
		reached.Add(1)
		if id, ok := sdk.CallerID(ctx); ok && callers != nil {
			select {
			case callers <- id:
			default:
			}
		}
	}
	opts := append(sdk.GRPCServerOptions(src, az),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			record(ctx)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			record(ss.Context())
			return h(srv, ss)
		}))
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

func healthClient(t *testing.T, src *sdk.Source, addr string) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(sdk.ClientCredentials(src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

func check(c healthpb.HealthClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestGRPCRefusesBeforeHandlers: peers of another trust domain, with an
// expired SVID, or that no rule allows never reach handler code; a rule
// for one method allows that method only.
func TestGRPCRefusesBeforeHandlers(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, err := authz.New(td, authz.Allow(authz.PeerServiceAccount("shop", "front")).OnMethods("/grpc.health.v1.Health/Check"))
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64
	callers := make(chan spiffeid.ID, 1)
	addr := grpcServer(t, serverSrc, az, &reached, callers)

	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	fc := healthClient(t, front, addr)
	if err := check(fc); err != nil {
		t.Fatalf("allowed call: %v", err)
	}
	if got := <-callers; got.String() != frontID {
		t.Fatalf("handler saw caller %s", got)
	}
	// Watch is not in the rule.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := fc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("method outside the rule: %v, want PermissionDenied", err)
	}

	stranger, _ := w.source(t, strangerID, w.ca, time.Now().Add(time.Hour))
	// The foreign peer trusts example.org (federated), so only the server
	// can refuse it.
	foreignAPI := sdktest.NewWorkloadAPI(t, w.otherCA.Issue(t, "spiffe://other.org/ns/shop/sa/front", time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), w.otherCA, w.ca)
	foreign, err := sdk.NewSource(context.Background(), sdk.WithAddr(foreignAPI.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	expired, _ := w.source(t, frontID, w.ca, time.Now().Add(-time.Minute))
	for name, src := range map[string]*sdk.Source{"not allowed": stranger, "another trust domain": foreign, "expired SVID": expired} {
		if err := check(healthClient(t, src, addr)); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: %v, want a failed handshake (Unavailable)", name, err)
		}
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("%d calls reached handler code, want 1", n)
	}
}

// TestNoPolicyDeniesEveryone: a server without rules refuses every peer.
func TestNoPolicyDeniesEveryone(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td)
	var reached atomic.Int64
	addr := grpcServer(t, serverSrc, az, &reached, nil)
	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	if err := check(healthClient(t, front, addr)); err == nil {
		t.Fatal("a server without policy let a peer in")
	}
	if reached.Load() != 0 {
		t.Fatal("handler code ran")
	}
}

// TestPolicyChangeOnRunningServer: central rules change a running server's
// decisions at once, on open connections too.
func TestPolicyChangeOnRunningServer(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td, authz.Allow(authz.PeerNamespace("shop")))
	var reached atomic.Int64
	addr := grpcServer(t, serverSrc, az, &reached, nil)
	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	fc := healthClient(t, front, addr)
	if err := check(fc); err != nil {
		t.Fatal(err)
	}
	if err := az.SetCentral([]authz.Rule{authz.Deny(authz.PeerID(frontID)).OnMethods("/grpc.health.v1.Health/Check")}); err != nil {
		t.Fatal(err)
	}
	if err := check(fc); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after a central deny: %v, want PermissionDenied", err)
	}
	az.SetCentral(nil)
	if err := check(fc); err != nil {
		t.Fatalf("after the deny is lifted: %v", err)
	}
}

// TestWhenThroughGRPC: a central rule with a time window allows a real
// mutual-TLS gRPC call inside its window and refuses it outside, by the
// server's (injected) clock; outside every window the handshake itself
// is refused.
func TestWhenThroughGRPC(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td)
	rules, err := authz.PolicyRules([]*typesv1.AccessPolicy{{Name: "office-hours", Target: serverID, Rules: []*typesv1.PolicyRule{{
		Action: "allow", Peers: []*typesv1.PolicyPeer{{Id: frontID}}, Methods: []string{"/grpc.health.v1.Health/Check"},
		When: []*typesv1.TimeWindow{{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "08:00", End: "18:00", TimeZone: "America/New_York"}},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := az.SetCentral(rules); err != nil {
		t.Fatal(err)
	}
	var clock atomic.Pointer[time.Time]
	az.SetClock(func() time.Time { return *clock.Load() })
	set := func(s string) {
		ny, _ := time.LoadLocation("America/New_York")
		tm, _ := time.ParseInLocation("2006-01-02 15:04", s, ny)
		clock.Store(&tm)
	}
	set("2026-12-02 10:00") // a Wednesday morning in New York
	var reached atomic.Int64
	addr := grpcServer(t, serverSrc, az, &reached, nil)
	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	fc := healthClient(t, front, addr)
	if err := check(fc); err != nil {
		t.Fatalf("inside the window: %v", err)
	}
	set("2026-12-02 19:00") // the same day, after hours: the open connection's call
	if err := check(fc); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("outside the window: %v, want PermissionDenied", err)
	}
	before := reached.Load()
	set("2026-12-06 03:00") // Sunday night: a new connection is refused at the handshake
	if err := check(healthClient(t, front, addr)); err == nil {
		t.Fatal("a new connection outside every window was served")
	}
	if reached.Load() != before {
		t.Fatal("a handler ran for a call outside the window")
	}
	set("2026-12-07 08:00")
	if err := check(healthClient(t, front, addr)); err != nil {
		t.Fatalf("back inside the window: %v", err)
	}
}

// TestLongLivedConnectionAcrossRotation: both sides rotate their SVIDs;
// an open connection keeps working and new handshakes use the new SVIDs.
func TestLongLivedConnectionAcrossRotation(t *testing.T) {
	w := newWorld(t)
	serverSrc, serverAPI := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td, authz.Allow(authz.PeerID(frontID)))
	var reached atomic.Int64
	addr := grpcServer(t, serverSrc, az, &reached, nil)
	front, frontAPI := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	fc := healthClient(t, front, addr)
	if err := check(fc); err != nil {
		t.Fatal(err)
	}
	before, _ := serverSrc.GetX509SVID()
	newServer := w.ca.Issue(t, serverID, time.Now().Add(-time.Minute), time.Now().Add(2*time.Hour))
	serverAPI.SetSVID(newServer)
	frontAPI.SetSVID(w.ca.Issue(t, frontID, time.Now().Add(-time.Minute), time.Now().Add(2*time.Hour)))
	deadline := time.Now().Add(5 * time.Second)
	for {
		now, _ := serverSrc.GetX509SVID()
		if !now.Certificates[0].Equal(before.Certificates[0]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the source did not rotate")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 10 {
		if err := check(fc); err != nil {
			t.Fatalf("call on the open connection after rotation: %v", err)
		}
	}
	conn, err := sdk.Dial(context.Background(), "tcp", addr, front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := sdk.PeerIDOfConn(conn); err != nil {
		t.Fatal(err)
	}
	if !conn.(*tls.Conn).ConnectionState().PeerCertificates[0].Equal(newServer.Chain[0]) {
		t.Fatal("a new handshake did not present the rotated server SVID")
	}
}

// TestHTTPMiddleware: 403 before the handler for what the rules do not
// allow; the handler sees its caller.
func TestHTTPMiddleware(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td, authz.Allow(authz.PeerNamespace("shop")).OnMethods("GET /items", "GET /items/*"))
	var reached atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		id, _ := sdk.CallerID(r.Context())
		io.WriteString(w, id.String())
	})
	srv := sdk.NewHTTPServer("127.0.0.1:0", serverSrc, az, h)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })
	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	client := sdk.HTTPClient(front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	base := "https://" + l.Addr().String()
	resp, err := client.Get(base + "/items/7")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != frontID {
		t.Fatalf("GET /items/7: %d %q", resp.StatusCode, body)
	}
	resp, err = client.Post(base+"/items", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST /items: %d, want 403", resp.StatusCode)
	}
	other, _ := w.source(t, "spiffe://example.org/ns/billing/sa/x", w.ca, time.Now().Add(time.Hour))
	if _, err := sdk.HTTPClient(other, tlsconfig.AuthorizeAny()).Get(base + "/items"); err == nil {
		t.Fatal("a peer no rule allows completed a request")
	}
	if reached.Load() != 1 {
		t.Fatalf("%d requests reached the handler, want 1", reached.Load())
	}
}

// TestTCPListenDial: raw TCP with both identities known to each side.
func TestTCPListenDial(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td, authz.Allow(authz.PeerID(frontID)))
	l, err := sdk.Listen("tcp", "127.0.0.1:0", serverSrc, az)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		id, err := sdk.PeerIDOfConn(c)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- id.String()
		c.Write([]byte("hi"))
	}()
	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))
	c, err := sdk.Dial(context.Background(), "tcp", l.Addr().String(), front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q %v", buf, err)
	}
	if id := <-got; id != frontID {
		t.Fatalf("server saw %s", id)
	}
	if id, _ := sdk.PeerIDOfConn(c); id.String() != serverID {
		t.Fatalf("client saw %s", id)
	}
}

// TestListenCountsTraffic: a connection from Listen counts as a call of
// authz.ConnectionMethod with the bytes it carried, under a rule that
// allows that connection and no call; a peer refused at the handshake
// counts nothing.
func TestListenCountsTraffic(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td, authz.Allow(authz.PeerID(frontID)).OnMethods(authz.ConnectionMethod))
	l, err := sdk.Listen("tcp", "127.0.0.1:0", serverSrc, az)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	served := make(chan error, 2)
	go serveEach(l, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		_, err := io.ReadFull(c, buf)
		if err == nil {
			_, err = c.Write([]byte("hi"))
		}
		c.Close()
		served <- err
	})
	dial := func(id string) error {
		src, _ := w.source(t, id, w.ca, time.Now().Add(time.Hour))
		c, err := sdk.Dial(context.Background(), "tcp", l.Addr().String(), src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, 64<<10)); err != nil {
			return err
		}
		_, err = io.ReadAll(c)
		return err
	}
	start := time.Now().Unix() / 60
	if err := dial(frontID); err != nil {
		t.Fatalf("the allowed peer: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
	// One call per minute the connection read or wrote in: one, unless
	// the test crossed into a new minute.
	calls := time.Now().Unix()/60 - start + 1
	if err := dial("spiffe://example.org/ns/billing/sa/x"); err == nil {
		t.Fatal("a peer no rule allows was served")
	}
	<-served
	got := serverSrc.TrafficTotals()
	if len(got) != 1 || got[0].Peer != frontID || got[0].Method != authz.ConnectionMethod || got[0].Calls < 1 || got[0].Calls > calls {
		t.Fatalf("traffic %+v, want %d call(s) of %s by %s", got, calls, authz.ConnectionMethod, frontID)
	}
	t.Logf("counted: %+v", got[0])
	// The bytes on the wire: the payload, the handshake (certificates,
	// mostly the peer's chain one way and ours the other) and framing.
	if in, out := got[0].BytesIn, got[0].BytesOut; in < 64<<10+500 || out < 2+500 || in > 64<<10+8<<10 || out > 2+8<<10 {
		t.Fatalf("bytes in %d, out %d: want the payload (64 KiB in, 2 bytes out) and a handshake's worth", in, out)
	}
}

// TestDependenciesStaySmall: the SDK pulls in neither Kubernetes nor any
// Signet package but its own and the public proto types.
func TestDependenciesStaySmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/signet-id/signet/sdk/...").Output()
	if err != nil {
		var ee *exec.ExitError
		errors.As(err, &ee)
		t.Fatalf("go list: %v %s", err, ee.Stderr)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "k8s.io/") || strings.HasPrefix(dep, "github.com/hashicorp/") || strings.HasPrefix(dep, "modernc.org/") {
			t.Errorf("the sdk depends on %s", dep)
		}
		// Of Signet, only the SDK itself and the public types of the
		// Workload API extension.
		if rest, ok := strings.CutPrefix(dep, "github.com/signet-id/signet/"); ok &&
			rest != "sdk" && !strings.HasPrefix(rest, "sdk/") && rest != "proto/signet/types/v1" && rest != "proto/signet/workload/v1" {
			t.Errorf("the sdk depends on %s", dep)
		}
	}
}

// TestRefusalIsRecognisable: a client that the server's authorization
// refuses at the handshake is told so, with its own ID, and not as an
// unavailable server (gRPC PermissionDenied; a *RefusedError over raw TLS
// and HTTP); the server sees the refusal with the peer's ID and the
// reason, and counts it.
func TestRefusalIsRecognisable(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	az, _ := authz.New(td, authz.Allow(authz.PeerID(frontID)))
	seen := make(chan authz.Decision, 16)
	defer az.OnDecision(func(d authz.Decision) {
		if d.Method == authz.HandshakeMethod {
			select {
			case seen <- d:
			default:
			}
		}
	})()
	stranger, _ := w.source(t, strangerID, w.ca, time.Now().Add(time.Hour))
	server := tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID))

	// gRPC.
	addr := grpcServer(t, serverSrc, az, new(atomic.Int64), make(chan spiffeid.ID, 1))
	conn, err := grpc.NewClient(addr, sdk.GRPCClientOptions(stranger, server)...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = check(healthpb.NewHealthClient(conn))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "refused by the server's authorization") ||
		!strings.Contains(status.Convert(err).Message(), strangerID) {
		t.Fatalf("gRPC call of a refused client: %v; want PermissionDenied naming the refusal and %s", err, strangerID)
	}
	select {
	case d := <-seen:
		if d.Peer.String() != strangerID || d.Reason != authz.ReasonNoCall {
			t.Fatalf("the server saw %+v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server's authorizer saw no refusal")
	}

	// Raw TLS.
	l, err := sdk.Listen("tcp", "127.0.0.1:0", serverSrc, az)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serveEach(l, func(c net.Conn) { c.Read(make([]byte, 1)); c.Close() })
	c, err := sdk.Dial(context.Background(), "tcp", l.Addr().String(), stranger, server)
	if err == nil {
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !sdk.IsRefused(err) {
		t.Fatalf("raw TLS of a refused client: %v; want a refusal IsRefused knows", err)
	}
	// HTTP.
	hs := sdk.NewHTTPServer("127.0.0.1:0", serverSrc, az, http.NotFoundHandler())
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hs.ServeTLS(hl, "", "")
	defer hs.Close()
	_, err = sdk.HTTPClient(stranger, server).Get("https://" + hl.Addr().String() + "/")
	var re *sdk.RefusedError
	if !errors.As(err, &re) || re.ID.String() != strangerID {
		t.Fatalf("HTTP request of a refused client: %v; want a *sdk.RefusedError", err)
	}
	if _, _, refusedN := az.Counts(); refusedN < 3 {
		t.Fatalf("the authorizer counted %d refusals, want 3", refusedN)
	}
}

// TestConnectionRuleThroughSockets attacks the (connection) rule through
// real servers: a peer allowed only to connect completes a gRPC
// handshake and has every call refused before handler code, and a deny
// rule on (connection) refuses its peer's handshake at a Listen server
// whose other rules would let it in.
func TestConnectionRuleThroughSockets(t *testing.T) {
	w := newWorld(t)
	serverSrc, _ := w.source(t, serverID, w.ca, time.Now().Add(time.Hour))
	front, _ := w.source(t, frontID, w.ca, time.Now().Add(time.Hour))

	connectOnly, err := authz.New(td, authz.Allow(authz.PeerID(frontID)).OnMethods(authz.ConnectionMethod))
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64
	addr := grpcServer(t, serverSrc, connectOnly, &reached, make(chan spiffeid.ID, 1))
	if err := check(healthClient(t, front, addr)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a gRPC call under a rule on %s: %v, want PermissionDenied", authz.ConnectionMethod, err)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("%d calls reached handler code, want 0", n)
	}

	denyConnect, err := authz.New(td, authz.Allow(authz.PeerNamespace("shop")),
		authz.Deny(authz.PeerID(frontID)).OnMethods(authz.ConnectionMethod))
	if err != nil {
		t.Fatal(err)
	}
	l, err := sdk.Listen("tcp", "127.0.0.1:0", serverSrc, denyConnect)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echoAll(l)
	exchange := func(src *sdk.Source) error {
		c, err := sdk.Dial(context.Background(), "tcp", l.Addr().String(), src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{1}); err != nil {
			return err
		}
		_, err = io.ReadFull(c, make([]byte, 1))
		return err
	}
	stranger, _ := w.source(t, strangerID, w.ca, time.Now().Add(time.Hour))
	if err := exchange(stranger); err != nil {
		t.Fatalf("another peer of the namespace: %v", err)
	}
	if err := exchange(front); !sdk.IsRefused(err) {
		t.Fatalf("the peer denied (connection): %v, want refused at the handshake", err)
	}
}

// serveEach runs handle on each connection l accepts, until l closes.
func serveEach(l net.Listener, handle func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

// echoAll echoes, on each connection l accepts, what the peer sends.
func echoAll(l net.Listener) {
	serveEach(l, func(c net.Conn) {
		defer c.Close()
		io.Copy(c, c)
	})
}
