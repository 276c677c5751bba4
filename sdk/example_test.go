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

func ExampleNewAuthorizer() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	authz, err := sdk.NewAuthorizer(td,
		// The storefront may read the cart; everything in payments may
		// call everything; one legacy account may call nothing.
		sdk.Allow(sdk.PeerServiceAccount("shop", "frontend")).OnMethods("/shop.v1.Cart/Get"),
		sdk.Allow(sdk.PeerPattern("spiffe://example.org/ns/payments/**")),
		sdk.Deny(sdk.PeerServiceAccount("payments", "legacy")),
	)
	if err != nil {
		log.Fatal(err)
	}
	front := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/frontend")
	legacy := spiffeid.RequireFromString("spiffe://example.org/ns/payments/sa/legacy")
	fmt.Println(authz.Allowed(front, "/shop.v1.Cart/Get"), authz.Allowed(front, "/shop.v1.Cart/Empty"), authz.Allowed(legacy, "/shop.v1.Cart/Get"))
	// Output: true false false
}

func ExampleAuthorizer_SetCentral() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	authz, _ := sdk.NewAuthorizer(td, sdk.Allow(sdk.PeerNamespace("shop")))
	peer := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/batch")
	fmt.Println(authz.Allowed(peer, "/shop.v1.Cart/Get"))
	// A central policy arrives: a deny always wins over an allow.
	authz.SetCentral([]sdk.Rule{sdk.Deny(sdk.PeerServiceAccount("shop", "batch"))})
	fmt.Println(authz.Allowed(peer, "/shop.v1.Cart/Get"))
	// Output:
	// true
	// false
}

func ExampleGRPCServerOptions() {
	ctx := context.Background()
	source, err := sdk.NewSource(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer source.Close()
	authz, _ := sdk.NewAuthorizer(source.TrustDomain(), sdk.Allow(sdk.PeerNamespace("shop")))
	srv := grpc.NewServer(sdk.GRPCServerOptions(source, authz)...)
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
	authz, _ := sdk.NewAuthorizer(source.TrustDomain(), sdk.Allow(sdk.PeerNamespace("shop")).OnMethods("GET /items/*"))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := sdk.CallerID(r.Context())
		fmt.Fprintln(w, "hello", caller)
	})
	log.Fatal(sdk.NewHTTPServer(":8443", source, authz, h).ListenAndServeTLS("", ""))
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
	authz, _ := sdk.NewAuthorizer(source.TrustDomain(), sdk.Allow(sdk.PeerID("spiffe://example.org/ns/shop/sa/worker")))
	l, err := sdk.Listen("tcp", ":9000", source, authz)
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
	authz, _ := sdk.NewAuthorizer(source.TrustDomain())
	go source.Follow(ctx, authz, func(err error) { log.Printf("policies: %v", err) })
	srv := grpc.NewServer(sdk.GRPCServerOptions(source, authz)...)
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
	authz, _ := sdk.NewAuthorizer(source.TrustDomain(), sdk.Allow(sdk.PeerNamespace("ops")).OnMethods("* /admin/**"))
	mux := http.NewServeMux()
	mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {})
	srv := &http.Server{Addr: ":8443", TLSConfig: sdk.ServerTLSConfig(source, authz), Handler: sdk.Middleware(authz, mux)}
	log.Fatal(srv.ListenAndServeTLS("", ""))
}
