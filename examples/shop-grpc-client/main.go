// Command shop-grpc-client is an example gRPC client on the Signet SDK: it
// calls shop-grpc-server's health service over mutual TLS (Check, then
// List) and prints what each call answered.
package main

import (
	"context"
	"flag"
	"log"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/sdk"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8444", "server address")
	server := flag.String("server-id", "spiffe://example.org/demo/shop-grpc-server", "SPIFFE ID the server must have")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	source, err := sdk.NewSource(ctx)
	if err != nil {
		log.Fatalf("shop-grpc-client: %v", err)
	}
	defer source.Close()
	me, _ := source.ID()
	serverID, err := spiffeid.FromString(*server)
	if err != nil {
		log.Fatalf("shop-grpc-client: -server-id: %v", err)
	}
	// A refusal by the server's authorization is PermissionDenied, not an
	// unavailable server to retry.
	conn, err := grpc.NewClient(*addr, sdk.GRPCClientOptions(source, tlsconfig.AuthorizeID(serverID))...)
	if err != nil {
		log.Fatalf("shop-grpc-client: %v", err)
	}
	defer conn.Close()
	c := healthpb.NewHealthClient(conn)
	if resp, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		log.Printf("shop-grpc-client (%s): Health/Check -> %s", me, status.Convert(err).Code())
	} else {
		log.Printf("shop-grpc-client (%s): Health/Check -> %s", me, resp.GetStatus())
	}
	if _, err := c.List(ctx, &healthpb.HealthListRequest{}); err != nil {
		log.Printf("shop-grpc-client (%s): Health/List -> %s: %s", me, status.Convert(err).Code(), status.Convert(err).Message())
	} else {
		log.Printf("shop-grpc-client (%s): Health/List -> OK", me)
	}
}
