package sdk_test

import (
	"context"
	"fmt"
	"log"
	"net/http"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

func ExampleNewSource() {
	// SPIFFE_ENDPOINT_SOCKET names the agent's socket; sdk.WithAddr
	// overrides it.
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	id, _ := source.ID()
	fmt.Println("I am", id)
}

func ExampleGRPCServerOptions() {
	ctx := context.Background()
	source, err := sdk.NewSource(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	az, _ := authz.New(source.TrustDomain(), authz.Allow(authz.PeerNamespace("shop")))
	srv := grpc.NewServer(sdk.GRPCServerOptions(source, az)...)
	_ = srv // register services, then srv.Serve(listener)
}

func ExampleClientCredentials() {
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	server := tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/cart"))
	conn, err := grpc.NewClient("cart.shop:8443", grpc.WithTransportCredentials(sdk.ClientCredentials(source, server)))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}

func ExampleNewHTTPServer() {
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	az, _ := authz.New(source.TrustDomain(), authz.Allow(authz.PeerNamespace("shop")).OnMethods("GET /items/*"))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := sdk.CallerID(r.Context())
		fmt.Fprintln(w, "hello", caller)
	})
	log.Fatal(sdk.NewHTTPServer(":8443", source, az, h).ListenAndServeTLS("", ""))
}

func ExampleHTTPClient() {
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	client := sdk.HTTPClient(source, tlsconfig.AuthorizeMemberOf(source.TrustDomain()))
	resp, err := client.Get("https://items.shop:8443/items/7")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
}

func ExampleListen() {
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	az, _ := authz.New(source.TrustDomain(), authz.Allow(authz.PeerID("spiffe://example.org/ns/shop/sa/worker")))
	l, err := sdk.Listen("tcp", ":9000", source, az)
	if err != nil {
		log.Fatal(err)
	}
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			peer, err := sdk.PeerIDOfConn(conn)
			if err != nil {
				return // refused at the handshake
			}
			fmt.Fprintln(conn, "hello", peer)
		}()
	}
}

func ExampleDial() {
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	conn, err := sdk.Dial(context.Background(), "tcp", "queue.shop:9000", source,
		tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/queue")))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
}

func ExampleSource_Follow() {
	ctx := context.Background()
	source, err := sdk.NewSource(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	// No rules in code: the central AccessPolicies that target this
	// service decide, as they change; decisions go to the audit log.
	az, _ := authz.New(source.TrustDomain())
	go source.Follow(ctx, az, func(err error) { log.Printf("policies: %v", err) })
	srv := grpc.NewServer(sdk.GRPCServerOptions(source, az)...)
	_ = srv
}

func ExampleWithWorkloadKey() {
	// The private key is made here and never leaves this process; the
	// agent only passes its CSR to the CA.
	source, err := sdk.NewSource(context.Background(), sdk.WithWorkloadKey())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
}

func ExampleMiddleware() {
	source, err := sdk.NewSource(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	az, _ := authz.New(source.TrustDomain(), authz.Allow(authz.PeerNamespace("ops")).OnMethods("* /admin/**"))
	mux := http.NewServeMux()
	mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {})
	srv := &http.Server{Addr: ":8443", TLSConfig: sdk.ServerTLSConfig(source, az), Handler: sdk.Middleware(az, mux)}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
