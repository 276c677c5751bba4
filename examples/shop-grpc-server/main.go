// Command shop-grpc-server is an example gRPC service on the Signet SDK:
// it serves the standard gRPC health service with mutual TLS, and every
// call is authorized by the central AccessPolicies that target it, per
// method. Its decisions go to the CA's audit log.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8444", "listen address")
	noAuthz := flag.Bool("no-authz", false, "plain mutual TLS without the SDK's interceptors (for benchmarks)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	source, err := sdk.NewSource(ctx)
	if err != nil {
		log.Fatalf("shop-grpc-server: %v", err)
	}
	defer source.Close()
	me, _ := source.ID()
	az, _ := authz.New(source.TrustDomain())
	// Peers refused at the handshake are told nothing but "bad
	// certificate": say here who they were and why.
	az.OnDecision(func(d authz.Decision) {
		if d.Method == authz.HandshakeMethod {
			log.Printf("shop-grpc-server: refused %s at the TLS handshake: %s", d.Peer, d.Reason)
		}
	})
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		source.Follow(ctx, az, func(err error) { log.Printf("shop-grpc-server: policy/audit: %v", err) })
	}()
	opts := sdk.GRPCServerOptions(source, az)
	if *noAuthz {
		opts = []grpc.ServerOption{grpc.Creds(grpccredentials.MTLSServerCredentials(source, source, tlsconfig.AuthorizeMemberOf(source.TrustDomain())))}
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("shop-grpc-server: %v", err)
	}
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	log.Printf("shop-grpc-server: I am %s, listening on %s", me, l.Addr())
	if err := srv.Serve(l); err != nil {
		log.Fatalf("shop-grpc-server: %v", err)
	}
	stop()
	<-followed
}
