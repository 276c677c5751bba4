package sdkmetrics_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
	"github.com/signet-id/signet/sdk/sdkmetrics"
	"github.com/signet-id/signet/sdk/sdktest"
)

const (
	serverID = "spiffe://example.org/ns/shop/sa/cart"
	frontID  = "spiffe://example.org/ns/shop/sa/front"
)

func source(t *testing.T, ca *sdktest.CA, id string) *sdk.Source {
	t.Helper()
	api := sdktest.NewWorkloadAPI(t, ca.Issue(t, id, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), ca)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := sdk.NewSource(ctx, sdk.WithAddr(api.Addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// TestTrafficThroughGRPCAndHTTP: calls served through the SDK's gRPC
// options and HTTP server are counted per caller and method, allowed and
// denied, with payload bytes and durations, and exported as metrics.
func TestTrafficThroughGRPCAndHTTP(t *testing.T) {
	ca := sdktest.NewCA(t, "example.org")
	server, front := source(t, ca, serverID), source(t, ca, frontID)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	az, _ := authz.New(td, authz.Allow(authz.PeerID(frontID)).OnMethods("/grpc.health.v1.Health/Check", "POST /items"),
		authz.Allow(authz.PeerID(frontID)).OnMethods("GET /secret").During(authz.Window{Start: "00:00", End: "00:01"}))
	az.SetClock(func() time.Time { return time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC) })

	srv := grpc.NewServer(sdk.GRPCServerOptions(server, az)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(sdk.ClientCredentials(front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx := context.Background()
	for range 5 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "cart"}); status.Code(err) != codes.NotFound {
			t.Fatal(err)
		}
	}
	if _, err := hc.List(ctx, &healthpb.HealthListRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a method the policy does not allow: %v", err)
	}

	hs := sdk.NewHTTPServer("127.0.0.1:0", server, az, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Write([]byte(strings.Repeat("x", 10*len(body))))
	}))
	hl, err := tls.Listen("tcp", "127.0.0.1:0", hs.TLSConfig)
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve(hl)
	defer hs.Close()
	client := sdk.HTTPClient(front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	resp, err := client.Post("https://"+hl.Addr().String()+"/items", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	resp, err = client.Get("https://" + hl.Addr().String() + "/secret") // outside its window
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("GET /secret outside its window: %s", resp.Status)
	}

	got := map[string]sdk.TrafficSeries{}
	for _, s := range server.TrafficTotals() {
		got[s.Peer+" "+s.Method] = s
	}
	check := got[frontID+" /grpc.health.v1.Health/Check"]
	list := got[frontID+" /grpc.health.v1.Health/List"]
	post := got[frontID+" POST /items"]
	secret := got[frontID+" GET /secret"]
	latency := int64(0)
	for _, n := range check.Latency {
		latency += n
	}
	if check.Calls != 5 || check.Denials != 0 || check.BytesIn == 0 || latency != 5 {
		t.Errorf("Health/Check: %+v", check)
	}
	if list.Calls != 1 || list.Denials != 1 {
		t.Errorf("Health/List: %+v", list)
	}
	if post.Calls != 1 || post.BytesIn != 5 || post.BytesOut != 50 || post.Denials != 0 {
		t.Errorf("POST /items: %+v", post)
	}
	if secret.Calls != 1 || secret.Denials != 1 {
		t.Errorf("GET /secret: %+v", secret)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(sdkmetrics.New(server))
	want := `
# HELP signet_sdk_calls_total Calls this service's SDK servers served, by caller, method and result (allowed, denied by policy).
# TYPE signet_sdk_calls_total counter
signet_sdk_calls_total{method="/grpc.health.v1.Health/Check",peer="spiffe://example.org/ns/shop/sa/front",result="allowed"} 5
signet_sdk_calls_total{method="/grpc.health.v1.Health/Check",peer="spiffe://example.org/ns/shop/sa/front",result="denied"} 0
signet_sdk_calls_total{method="/grpc.health.v1.Health/List",peer="spiffe://example.org/ns/shop/sa/front",result="allowed"} 0
signet_sdk_calls_total{method="/grpc.health.v1.Health/List",peer="spiffe://example.org/ns/shop/sa/front",result="denied"} 1
signet_sdk_calls_total{method="GET /secret",peer="spiffe://example.org/ns/shop/sa/front",result="allowed"} 0
signet_sdk_calls_total{method="GET /secret",peer="spiffe://example.org/ns/shop/sa/front",result="denied"} 1
signet_sdk_calls_total{method="POST /items",peer="spiffe://example.org/ns/shop/sa/front",result="allowed"} 1
signet_sdk_calls_total{method="POST /items",peer="spiffe://example.org/ns/shop/sa/front",result="denied"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "signet_sdk_calls_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "signet_sdk_call_duration_seconds"); err != nil || n != 4 {
		t.Errorf("duration histograms: %d, %v", n, err)
	}
}
