package attack

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// TestSDKPathTraversal: a service allows a caller "GET /public/**" and
// serves with a router that does not clean paths (a file server, most
// third-party routers). The caller asks for /public/../admin/secret, or
// spells the dots and slashes encoded: the middleware authorized the raw
// path, "**" matched "..", and the handler served /admin. Through the
// real agent and real mTLS, no such request may reach the handler.
func TestSDKPathTraversal(t *testing.T) {
	s := startStandalone(t)
	const me = "spiffe://example.org/attack/web"
	s.cli(t, "entry", "create", "--spiffe-id", me, "--parent-id", "spiffe://example.org/signet/agent/join/attack-node", "--selector", "unix:uid:0")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, err := sdk.NewSource(ctx, sdk.WithAddr("unix://"+s.socket))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	az, err := authz.New(src.TrustDomain(), authz.Allow(authz.PeerID(me)).OnMethods("GET /public/**"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var reached []string
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reached = append(reached, r.URL.Path)
		mu.Unlock()
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := sdk.NewHTTPServer("", src, az, handler)
	go srv.ServeTLS(lis, "", "")
	defer srv.Close()
	client := sdk.HTTPClient(src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(me)))
	get := func(path string) int {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+lis.Addr().String()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("/public/index.html"); code != http.StatusOK {
		t.Fatalf("GET /public/index.html: %d", code)
	}
	for _, p := range []string{"/public/../admin/secret", "/public/%2e%2e/admin/secret", "/public/..%2Fadmin/secret", "/public/%2E%2E%2Fadmin%2Fsecret",
		"/public/..%5Cadmin/secret", "/public//../admin/secret", "/public/./../admin/secret"} {
		if code := get(p); code != http.StatusBadRequest && code != http.StatusForbidden {
			t.Errorf("GET %s: %d, want 400 or 403", p, code)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range reached {
		if strings.Contains(p, "admin") {
			t.Errorf("the handler was reached with %q", p)
		}
	}
	if !slices.Contains(reached, "/public/index.html") {
		t.Errorf("reached %v", reached)
	}
}
