// Command shop-http-server is an example service on the Signet SDK: an
// HTTPS server with mutual TLS whose callers are authorized by the central
// AccessPolicies that target it (and nothing in code: with no policy it
// denies everyone). Its decisions go to the CA's audit log.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	source, err := sdk.NewSource(ctx) // SPIFFE_ENDPOINT_SOCKET
	if err != nil {
		log.Fatalf("shop-http-server: %v", err)
	}
	defer source.Close()
	me, _ := source.ID()
	az, err := authz.New(source.TrustDomain())
	if err == nil {
		// Peers refused at the handshake are told nothing but "bad
		// certificate": say here who they were and why.
		az.OnDecision(func(d authz.Decision) {
			if d.Method == authz.HandshakeMethod {
				log.Printf("shop-http-server: refused %s at the TLS handshake: %s", d.Peer, d.Reason)
			}
		})
	}
	if err != nil {
		log.Fatal(err)
	}
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		source.Follow(ctx, az, func(err error) { log.Printf("shop-http-server: policy/audit: %v", err) })
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := sdk.CallerID(r.Context())
		log.Printf("shop-http-server: GET /items from %s", caller)
		fmt.Fprintf(w, "items for %s, from %s\n", caller, me)
	})
	mux.HandleFunc("DELETE /items", func(w http.ResponseWriter, r *http.Request) {
		caller, _ := sdk.CallerID(r.Context())
		log.Printf("shop-http-server: DELETE /items from %s", caller)
		fmt.Fprintln(w, "deleted")
	})
	srv := sdk.NewHTTPServer(*addr, source, az, mux)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Printf("shop-http-server: I am %s, listening on https://%s", me, *addr)
	if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
		log.Fatalf("shop-http-server: %v", err)
	}
	stop()
	<-followed // the last decisions are delivered
}
