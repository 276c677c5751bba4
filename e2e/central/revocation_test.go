package central

import (
	"context"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// revocationSpread starts n SDK servers and one client with an open
// stream to each, revokes the client's SVID with the admin API, and
// returns how long each server took to close the client's stream
// (revoke → refused on the open connection), sorted.
func revocationSpread(tb testing.TB, n int) []time.Duration {
	ca := systest.StartCA(tb)
	agent := ca.StartAgent("node1")
	const clientID = "spiffe://example.org/victim"
	ca.CreateEntry(clientID, agent.ID.String(), time.Hour, "unix:uid:0")
	for i := range n {
		ca.CreateEntry(fmt.Sprintf("spiffe://example.org/svc-%d", i), agent.ID.String(), time.Hour, "unix:uid:0")
	}
	client := newSource(tb, agent, clientID)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ended := make(chan time.Time, n)
	for i := range n {
		id := fmt.Sprintf("spiffe://example.org/svc-%d", i)
		server := newSource(tb, agent, id)
		az, err := authz.New(server.TrustDomain(), authz.Allow(authz.PeerID(clientID)))
		if err != nil {
			tb.Fatal(err)
		}
		srv := grpc.NewServer(sdk.GRPCServerOptions(server, az)...)
		healthpb.RegisterHealthServer(srv, health.NewServer())
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		go srv.Serve(l)
		tb.Cleanup(srv.Stop)
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(sdk.ClientCredentials(client, tlsconfig.AuthorizeID(spiffeid.RequireFromString(id)))))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { conn.Close() })
		stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			tb.Fatalf("server %d: %v", i, err)
		}
		go func() {
			for {
				if _, err := stream.Recv(); err != nil {
					ended <- time.Now()
					return
				}
			}
		}()
	}
	svid, _ := client.GetX509SVID()
	start := time.Now()
	if _, err := ca.Admin.CreateRevocation(ctx, &adminv1.CreateRevocationRequest{Revocation: &typesv1.Revocation{
		Serial: svid.Certificates[0].SerialNumber.Text(16)}}); err != nil {
		tb.Fatal(err)
	}
	var took []time.Duration
	deadline := time.After(30 * time.Second)
	for len(took) < n {
		select {
		case at := <-ended:
			took = append(took, at.Sub(start))
		case <-deadline:
			tb.Fatalf("%d of %d servers never closed the revoked client's connection", n-len(took), n)
		}
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	return took
}

// TestRevocationReachesEveryPeer: every server closes a revoked client's
// open connection (through CA → agent → SDK), none never does.
func TestRevocationReachesEveryPeer(t *testing.T) {
	took := revocationSpread(t, 10)
	t.Logf("revoke → open connections closed at 10 servers: p50 %v, max %v", took[len(took)/2], took[len(took)-1])
}

// BenchmarkRevocationSpread measures revoke → every one of 100 SDK
// servers on one agent closing the revoked client's open connection.
//
//	go test -run '^$' -bench RevocationSpread -benchtime 3x ./e2e/central/
func BenchmarkRevocationSpread(b *testing.B) {
	var all []time.Duration
	for range b.N {
		all = append(all, revocationSpread(b, 100)...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	q := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-ms")
}

// TestAgentRevocation: revoking an agent revokes what it minted: a
// server on another agent refuses its workload, and the agent is evicted
// (it mints nothing more). The server's own SVID, minted by its own
// agent, is untouched.
func TestAgentRevocation(t *testing.T) {
	ca := systest.StartCA(t)
	a1, a2 := ca.StartAgent("node1"), ca.StartAgent("node2")
	ca.CreateEntry(cartID, a1.ID.String(), time.Hour, "unix:uid:0")
	ca.CreateEntry(frontID, a2.ID.String(), time.Hour, "unix:uid:0")
	cart, front := newSource(t, a1, cartID), newSource(t, a2, frontID)
	az, err := authz.New(cart.TrustDomain(), authz.Allow(authz.PeerID(frontID)))
	if err != nil {
		t.Fatal(err)
	}
	client := serveHealth(t, front, sdk.GRPCServerOptions(cart, az)...)
	ctx := context.Background()
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("before: %v", err)
	}
	if _, err := ca.Admin.CreateRevocation(ctx, &adminv1.CreateRevocationRequest{Revocation: &typesv1.Revocation{AgentId: a2.ID.String()}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the server to refuse what the revoked agent minted", func() bool {
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return err != nil
	})
	agents, err := ca.Admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents.GetAgents() {
		if a.GetSpiffeId() == a2.ID.String() && !a.GetEvicted() {
			t.Error("the revoked agent was not evicted")
		}
	}
	if svid, _ := cart.GetX509SVID(); svid == nil {
		t.Fatal("the server lost its SVID")
	}
	recs := ca.AuditLog()
	found := false
	for _, r := range recs {
		if r["event"] == "revocation.create" && r["spiffe_id"] == a2.ID.String() {
			found = true
		}
	}
	if !found {
		t.Error("no revocation.create audit record naming the agent")
	}
}
