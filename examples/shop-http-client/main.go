// Command shop-http-client is an example client on the Signet SDK: it
// calls shop-http-server over mutual TLS, checking the server's SPIFFE ID,
// with each METHOD PATH given as an argument, and prints the answers.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/signet-id/signet/sdk"
)

func main() {
	base := flag.String("url", "https://127.0.0.1:8443", "server URL")
	server := flag.String("server-id", "spiffe://example.org/demo/shop-http-server", "SPIFFE ID the server must have")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	source, err := sdk.NewSource(ctx)
	if err != nil {
		log.Fatalf("shop-http-client: %v", err)
	}
	defer source.Close()
	me, _ := source.ID()
	serverID, err := spiffeid.FromString(*server)
	if err != nil {
		log.Fatalf("shop-http-client: -server-id: %v", err)
	}
	client := sdk.HTTPClient(source, tlsconfig.AuthorizeID(serverID))
	client.Timeout = 10 * time.Second
	for _, call := range flag.Args() { // "GET /items"
		verb, path, _ := strings.Cut(call, " ")
		req, _ := http.NewRequestWithContext(ctx, verb, *base+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			log.Printf("shop-http-client (%s): %s: %v", me, call, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		log.Printf("shop-http-client (%s): %s -> %s %s", me, call, resp.Status, strings.TrimSpace(string(body)))
	}
}
