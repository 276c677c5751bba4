// Command greeter-server is an example workload: an HTTPS server whose
// certificate is its X509-SVID from the SPIFFE Workload API, which accepts
// only clients with an SVID of its trust domain and greets each by its
// SPIFFE ID. It uses go-spiffe directly.
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
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "listen address")
	td := flag.String("trust-domain", "example.org", "trust domain whose workloads may call")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// The Workload API address comes from SPIFFE_ENDPOINT_SOCKET.
	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		log.Fatalf("greeter-server: X509Source: %v", err)
	}
	defer src.Close()
	svid, _ := src.GetX509SVID()
	log.Printf("greeter-server: I am %s", svid.ID)

	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			http.Error(w, "no SPIFFE ID", http.StatusUnauthorized)
			return
		}
		log.Printf("greeter-server: request from %s", peer)
		fmt.Fprintf(w, "hello %s, from %s\n", peer, svid.ID)
	})
	tlsCfg := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(spiffeid.RequireTrustDomainFromString(*td)))
	srv := &http.Server{Addr: *addr, Handler: mux, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Printf("greeter-server: listening on https://%s", *addr)
	if err := srv.ListenAndServeTLS("", ""); err != nil && err != http.ErrServerClosed {
		log.Fatalf("greeter-server: %v", err)
	}
}
