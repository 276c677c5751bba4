package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
	"github.com/signet-id/signet/internal/publicweb"
)

// TestPublicEndpointConnectionFlood attacks the CA's OIDC endpoint, which
// anyone may reach, the way a slowloris does: more connections than it
// serves at once (publicweb.MaxConns), each opened and left silent, and
// opened again as soon as the CA closes it. The CA must cut every silent
// connection after its handshake timeout, and a relying party (cloud IAM
// fetching the key set) must still be served while the flood goes on.
func TestPublicEndpointConnectionFlood(t *testing.T) {
	caFile, cert, key, err := testenv.ServingCert(t.TempDir(), "oidc", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := systest.FreeAddr(t)
	runCA(t, systest.FreeAddr(t), "--oidc-issuer", "https://"+addr, "--oidc-listen", addr, "--oidc-tls-cert", cert, "--oidc-tls-key", key)

	const flood = publicweb.MaxConns + 100
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		held    []time.Duration // how long each silent connection was kept open
		refused atomic.Int64
	)
	for i := 0; i < flood; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					refused.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				opened := time.Now()
				c.SetReadDeadline(time.Now().Add(60 * time.Second))
				c.Read(make([]byte, 1)) // returns when the CA closes it
				d := time.Since(opened)
				c.Close()
				mu.Lock()
				held = append(held, d)
				mu.Unlock()
			}
		}()
	}
	defer func() { stop.Store(true); wg.Wait() }()

	// Every slot is taken before the relying party comes.
	waitFor(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(held) < publicweb.MaxConns {
			return fmt.Errorf("%d cut so far", len(held))
		}
		return nil
	}, func() string { return "the CA did not close the silent connections" })

	roots := x509.NewCertPool()
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(pemBytes)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	for i := 0; i < 3; i++ {
		start := time.Now()
		resp, err := client.Get("https://" + addr + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatalf("the relying party was not served during the flood: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("discovery document during the flood: %s", resp.Status)
		}
		t.Logf("discovery document served in %s with %d silent connections kept open against the CA's %d", time.Since(start).Round(time.Millisecond), flood, publicweb.MaxConns)
	}
	mu.Lock()
	defer mu.Unlock()
	var longest time.Duration
	for _, d := range held {
		longest = max(longest, d)
	}
	// The handshake timeout, and the wait in the backlog for a slot.
	if limit := 3*publicweb.ReadHeaderTimeout + 5*time.Second; longest > limit {
		t.Errorf("a silent connection was kept %s; want it cut within %s", longest, limit)
	}
	t.Logf("%d silent connections cut, the longest kept %s; %d dials refused", len(held), longest.Round(time.Millisecond), refused.Load())
}
