package central

import (
	"context"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// BenchmarkGRPCExample is the example gRPC service (health Check over
// mutual TLS, SVIDs from a real agent) with the SDK's options
// (authorization and decision audit on every call, a policy of 100 rules,
// and traffic counting: bytes, durations, reported with the decisions),
// with the same but no traffic counting, and with the same mutual TLS but
// none of it, in one run.
//
//	go test -run '^$' -bench GRPCExample -benchtime 3s -count 3 ./e2e/central/
func BenchmarkGRPCExample(b *testing.B) {
	ca := systest.StartCA(b)
	agent := ca.StartAgent("node1")
	ca.CreateEntry(cartID, agent.ID.String(), time.Hour, "unix:uid:0")
	ca.CreateEntry(frontID, agent.ID.String(), time.Hour, "unix:uid:0")
	ctx := context.Background()
	cart, front := newSource(b, agent, cartID), newSource(b, agent, frontID)
	rules := []authz.Rule{authz.Allow(authz.PeerID(frontID)).OnMethods(check)}
	for i := range 99 {
		rules = append(rules, authz.Allow(authz.PeerServiceAccount("ns", "sa"+string(rune('a'+i%26))+string(rune('a'+i/26)))))
	}
	az, err := authz.New(cart.TrustDomain(), rules...)
	if err != nil {
		b.Fatal(err)
	}
	followCtx, stop := context.WithCancel(ctx)
	defer stop()
	go cart.Follow(followCtx, az, nil)
	for _, tt := range []struct {
		name string
		opts []grpc.ServerOption
	}{
		{"plain-mtls", []grpc.ServerOption{grpc.Creds(grpccredentials.MTLSServerCredentials(cart, cart, tlsconfig.AuthorizeMemberOf(cart.TrustDomain())))}},
		{"sdk-without-traffic", sdk.GRPCServerOptions(cart, az)[:3]},
		{"sdk", sdk.GRPCServerOptions(cart, az)},
	} {
		b.Run(tt.name, func(b *testing.B) {
			c := serveHealth(b, front, tt.opts...)
			if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
