// Command greeter-client is an example workload: it calls greeter-server over
// mTLS with its X509-SVID from the SPIFFE Workload API, checks that the
// server is the SPIFFE ID it expects, and prints the answer. It uses
// go-spiffe directly.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	url := flag.String("url", "https://127.0.0.1:8443/hello", "server URL")
	server := flag.String("server-id", "spiffe://example.org/demo/greeter-server", "SPIFFE ID the server must have")
	count := flag.Int("count", 1, "calls to make, one a second")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for an identity")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *wait)
	defer cancel()

	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		log.Fatalf("greeter-client: X509Source: %v", err)
	}
	defer src.Close()
	svid, _ := src.GetX509SVID()
	log.Printf("greeter-client: I am %s", svid.ID)

	serverID, err := spiffeid.FromString(*server)
	if err != nil {
		log.Fatalf("greeter-client: -server-id: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(serverID))}, Timeout: 10 * time.Second}
	for i := 0; i < *count; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		resp, err := client.Get(*url)
		if err != nil {
			log.Printf("greeter-client: %v", err)
			os.Exit(1)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		log.Printf("greeter-client: server %s answered: %s", serverID, body)
	}
}
