package agent_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/agent"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
)

// self is the selector set of this test process.
func selfSelectors(t *testing.T) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{fmt.Sprintf("unix:uid:%d", os.Getuid()), "unix:path:" + exe}
}

// fetchOnceKnown fetches the caller's SVID, retrying while the agent has not
// yet received a just-created entry (it reaches the agent on the Sync stream
// within milliseconds, not at once), as a real workload's client would.
func fetchOnceKnown(t *testing.T, addr, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
		cancel()
		if err == nil && svid.ID.String() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("FetchX509SVID = %v, %v; want %s", svid, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestGoSpiffeClients(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	id := "spiffe://example.org/w/self"
	ca.CreateEntry(id, a.ID.String(), 0, selfSelectors(t)...)
	fetchOnceKnown(t, a.Addr, id)
	ctx := ctxT(t, 30*time.Second)
	addr := workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr))

	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.Addr))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != id {
		t.Fatalf("FetchX509SVID = %s; want %s", svid.ID, id)
	}
	x509src, err := workloadapi.NewX509Source(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer x509src.Close()
	if s, err := x509src.GetX509SVID(); err != nil || s.ID.String() != id {
		t.Fatalf("X509Source = %v, %v", s, err)
	}
	bundles, err := workloadapi.NewBundleSource(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer bundles.Close()
	b, err := bundles.GetX509BundleForTrustDomain(systest.TrustDomain)
	if err != nil || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(ca.Roots()[0]) {
		t.Fatalf("BundleSource X509 = %v, %v", b, err)
	}
	jb, err := bundles.GetJWTBundleForTrustDomain(systest.TrustDomain)
	if err != nil || len(jb.JWTAuthorities()) == 0 {
		t.Fatalf("BundleSource JWT = %v, %v", jb, err)
	}
	jwtsrc, err := workloadapi.NewJWTSource(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer jwtsrc.Close()
	tok, err := jwtsrc.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "billing"})
	if err != nil || tok.ID.String() != id {
		t.Fatalf("JWTSource.FetchJWTSVID = %v, %v", tok, err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok.Marshal(), jwtsrc, []string{"billing"}); err != nil {
		t.Fatalf("JWT-SVID does not validate against the JWT bundle: %v", err)
	}
	got, err := workloadapi.ValidateJWTSVID(ctx, tok.Marshal(), "billing", workloadapi.WithAddr(a.Addr))
	if err != nil || got.ID.String() != id {
		t.Fatalf("ValidateJWTSVID = %v, %v", got, err)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, tok.Marshal(), "other", workloadapi.WithAddr(a.Addr)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ValidateJWTSVID with the wrong audience: %v", err)
	}

	// A workload with no entry is denied.
	other := ca.StartAgent("node2")
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(other.Addr)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509SVID from an agent with no entry for us: %v; want PermissionDenied", err)
	}
}

// TestRotationAndNewEntries uses a 10 s X509-SVID TTL: a watcher must get a
// new SVID before the old one expires, and a TLS pair built on X509Sources
// keeps handshaking across rotations.
func TestRotationAndNewEntries(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	id := "spiffe://example.org/w/rotating"
	ca.CreateEntry(id, a.ID.String(), 10*time.Second, selfSelectors(t)...)
	ctx := ctxT(t, 60*time.Second)
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(a.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	type update struct {
		at       time.Time
		serial   string
		notAfter time.Time
	}
	var mu sync.Mutex
	var updates []update
	watchCtx, stopWatch := context.WithCancel(ctx)
	go client.WatchX509Context(watchCtx, watcher(func(c *workloadapi.X509Context) {
		s := c.DefaultSVID()
		mu.Lock()
		updates = append(updates, update{time.Now(), s.Certificates[0].SerialNumber.String(), s.Certificates[0].NotAfter})
		mu.Unlock()
	}))

	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClient(client))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	authz := tlsconfig.AuthorizeID(spiffeid.RequireFromString(id))
	l, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(src, src, authz))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	handshakes := 0
	for end := time.Now().Add(25 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		c, err := tls.Dial("tcp", l.Addr().String(), tlsconfig.MTLSClientConfig(src, src, authz))
		if err != nil {
			t.Fatalf("handshake %d failed: %v", handshakes, err)
		}
		c.Write([]byte("x"))
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("echo %d: %v", handshakes, err)
		}
		c.Close()
		handshakes++
	}
	stopWatch()
	mu.Lock()
	defer mu.Unlock()
	if len(updates) < 4 {
		t.Fatalf("%d updates in 25 s with a 10 s TTL; want at least 4", len(updates))
	}
	for i := 1; i < len(updates); i++ {
		if updates[i].serial == updates[i-1].serial {
			t.Errorf("update %d repeats the serial", i)
		}
		if !updates[i].at.Before(updates[i-1].notAfter) {
			t.Errorf("update %d came at %s, after the previous SVID expired at %s", i, updates[i].at, updates[i-1].notAfter)
		}
	}
	t.Logf("%d rotations, %d handshakes", len(updates)-1, handshakes)
}

type watcher func(*workloadapi.X509Context)

func (w watcher) OnX509ContextUpdate(c *workloadapi.X509Context) { w(c) }
func (w watcher) OnX509ContextWatchError(error)                  {}

// TestCAOutage stops the CA for longer than half the SVID TTL: the workload
// holds a valid SVID throughout, and the agent recovers by itself.
func TestCAOutage(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	// The outage outlasts half the TTL, when the agent would rotate, and
	// leaves the agent ttl-outage (7 s) after the CA is back to get a new
	// SVID to the workload before the one in hand expires: room for gRPC's
	// reconnect backoff (up to 2.4 s) on a loaded machine.
	const ttl, outage = 16 * time.Second, 9 * time.Second
	ca.CreateEntry("spiffe://example.org/w/outage", a.ID.String(), ttl, selfSelectors(t)...)
	ctx := ctxT(t, 60*time.Second)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	check := func(phase string, d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			s, err := src.GetX509SVID()
			if err != nil {
				t.Fatalf("%s: %v", phase, err)
			}
			if !time.Now().Before(s.Certificates[0].NotAfter) {
				t.Fatalf("%s: the workload holds an expired SVID (NotBefore %s NotAfter %s now %s)", phase, s.Certificates[0].NotBefore, s.Certificates[0].NotAfter, time.Now())
			}
		}
	}
	// Stop the CA just after a rotation, so the outage, longer than half the
	// TTL, is one the SVID in hand can outlive.
	first, _ := src.GetX509SVID()
	for end := time.Now().Add(ttl); ; time.Sleep(50 * time.Millisecond) {
		s, _ := src.GetX509SVID()
		if s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no rotation within %s of a %s TTL", ttl, ttl)
		}
	}
	ca.Stop()
	check("CA down", outage)
	held, _ := src.GetX509SVID()
	restarted := time.Now()
	ca.Start()
	for time.Now().Before(held.Certificates[0].NotAfter) {
		if s, _ := src.GetX509SVID(); s.Certificates[0].SerialNumber.Cmp(held.Certificates[0].SerialNumber) != 0 {
			t.Logf("the workload had a new SVID %s after the CA was back", time.Since(restarted).Round(time.Millisecond))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	check("CA back", ttl)
	s, _ := src.GetX509SVID()
	if s.Certificates[0].NotAfter.Add(-ttl).Before(restarted) {
		t.Fatalf("no SVID minted since the CA came back (NotAfter %s, restart %s)", s.Certificates[0].NotAfter, restarted)
	}
}

// TestAgentRestart restarts the agent without a join token: its stored SVID
// suffices, and workloads get the same identity again.
func TestAgentRestart(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	id := "spiffe://example.org/w/restart"
	ca.CreateEntry(id, a.ID.String(), 0, selfSelectors(t)...)
	ctx := ctxT(t, 60*time.Second)
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(a.Addr),
		workloadapi.WithBackoffStrategy(fixedBackoff(100*time.Millisecond))))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	before, _ := src.GetX509SVID()
	a.Stop()
	a.SetJoinToken("") // a restart must not need a token
	a.Start()
	deadline := time.Now().Add(20 * time.Second)
	for {
		after, err := src.GetX509SVID()
		if err == nil && after.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) != 0 {
			if after.ID.String() != id {
				t.Fatalf("after restart: %s; want %s", after.ID, id)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the workload got no SVID from the restarted agent")
		}
		time.Sleep(100 * time.Millisecond)
	}
	agents, _ := ca.Admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if len(agents.GetAgents()) != 1 {
		t.Errorf("%d agents after restart; want 1 (no new attestation)", len(agents.GetAgents()))
	}
}

type fixedBackoff time.Duration

func (f fixedBackoff) NewBackoff() workloadapi.Backoff { return f }
func (f fixedBackoff) Next() time.Duration             { return time.Duration(f) }
func (f fixedBackoff) Reset()                          {}

// TestWorkloadsByPath runs three copies of this test binary as separate
// processes: two are selected by unix:path and get different identities,
// the third matches nothing and is denied.
func TestWorkloadsByPath(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	dir := t.TempDir()
	self, _ := os.Executable()
	raw, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alpha", "beta", "gamma"} {
		if err := os.WriteFile(filepath.Join(dir, n), raw, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ca.CreateEntry("spiffe://example.org/w/alpha", a.ID.String(), 0, "unix:path:"+filepath.Join(dir, "alpha"))
	ca.CreateEntry("spiffe://example.org/w/beta", a.ID.String(), 0, "unix:path:"+filepath.Join(dir, "beta"))
	run := func(n string) string {
		cmd := exec.Command(filepath.Join(dir, n), "-test.run=^TestHelperFetch$")
		cmd.Env = append(os.Environ(), "SIGNET_HELPER_SOCKET="+a.Addr)
		out, _ := cmd.CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "RESULT ") {
				return strings.TrimPrefix(line, "RESULT ")
			}
		}
		return "no result: " + string(out)
	}
	if got := run("alpha"); got != "spiffe://example.org/w/alpha" {
		t.Errorf("alpha got %q", got)
	}
	if got := run("beta"); got != "spiffe://example.org/w/beta" {
		t.Errorf("beta got %q", got)
	}
	if got := run("gamma"); got != "denied" {
		t.Errorf("gamma got %q; want denied", got)
	}
}

// TestHelperFetch is the workload of TestWorkloadsByPath.
func TestHelperFetch(t *testing.T) {
	addr := os.Getenv("SIGNET_HELPER_SOCKET")
	if addr == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// An entry created just before may not have reached the agent yet.
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	for end := time.Now().Add(2 * time.Second); status.Code(err) == codes.PermissionDenied && time.Now().Before(end); {
		time.Sleep(50 * time.Millisecond)
		svid, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
	}
	switch {
	case status.Code(err) == codes.PermissionDenied:
		fmt.Println("RESULT denied")
	case err != nil:
		fmt.Println("RESULT error:", err)
	default:
		fmt.Println("RESULT " + svid.ID.String())
	}
}

// rawClient is a Workload API client without go-spiffe's conveniences, for
// requests go-spiffe would never send.
func rawClient(t *testing.T, a *systest.Agent) workload.SpiffeWorkloadAPIClient {
	conn, err := grpc.NewClient(a.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workload.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestMalformedRequestsAndDisconnects(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	ca.CreateEntry("spiffe://example.org/w/self", a.ID.String(), 0, selfSelectors(t)...)
	fetchOnceKnown(t, a.Addr, "spiffe://example.org/w/self")
	ctx := ctxT(t, 30*time.Second)
	c := rawClient(t, a)

	// No security header.
	stream, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "security header") {
		t.Fatalf("no header: %v", err)
	}
	if _, err := c.FetchJWTSVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "yes"), &workload.JWTSVIDRequest{Audience: []string{"a"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong header value: %v", err)
	}
	for name, req := range map[string]*workload.JWTSVIDRequest{
		"no audience":    {},
		"empty audience": {Audience: []string{""}},
		"bad spiffe id":  {Audience: []string{"a"}, SpiffeId: "not a spiffe id"},
	} {
		if _, err := c.FetchJWTSVID(withHeader(ctx), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v; want InvalidArgument", name, err)
		}
	}
	for name, req := range map[string]*workload.ValidateJWTSVIDRequest{
		"no audience": {Svid: "x"},
		"no token":    {Audience: "a"},
		"garbage":     {Audience: "a", Svid: "not.a.jwt"},
		"huge":        {Audience: "a", Svid: strings.Repeat("A", 1<<20)},
	} {
		if _, err := c.ValidateJWTSVID(withHeader(ctx), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ValidateJWTSVID %s: %v; want InvalidArgument", name, err)
		}
	}
	if _, err := c.FetchJWTSVID(withHeader(ctx), &workload.JWTSVIDRequest{Audience: []string{"a"}, SpiffeId: "spiffe://example.org/not-mine"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("JWT for an identity not ours: %v; want PermissionDenied", err)
	}

	// Bundle acknowledgements: key IDs are hex and bounded, and a caller
	// acknowledges as one of its own identities only.
	conn, err := grpc.NewClient("unix://"+a.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bundles := workloadv1.NewBundlesClient(conn)
	many := make([]string, 65)
	for i := range many {
		many[i] = "ab"
	}
	for name, c := range map[string]struct {
		req  *workloadv1.AckBundleRequest
		want codes.Code
	}{
		"not hex":      {&workloadv1.AckBundleRequest{X509Authorities: []string{"zz"}}, codes.InvalidArgument},
		"empty id":     {&workloadv1.AckBundleRequest{JwtAuthorities: []string{""}}, codes.InvalidArgument},
		"too long":     {&workloadv1.AckBundleRequest{X509Authorities: []string{strings.Repeat("a", 129)}}, codes.InvalidArgument},
		"too many":     {&workloadv1.AckBundleRequest{X509Authorities: many}, codes.InvalidArgument},
		"another's ID": {&workloadv1.AckBundleRequest{X509Authorities: []string{"ab"}, SpiffeId: "spiffe://example.org/not-mine"}, codes.PermissionDenied},
		"fine":         {&workloadv1.AckBundleRequest{X509Authorities: []string{"AB01"}, SpiffeId: "spiffe://example.org/w/self"}, codes.OK},
	} {
		if _, err := bundles.Ack(withHeader(ctx), c.req); status.Code(err) != c.want {
			t.Errorf("Bundles.Ack %s: %v; want %v", name, err, c.want)
		}
	}

	// Garbage bytes on the socket, and clients that vanish mid-stream.
	for i := 0; i < 20; i++ {
		conn, err := net.Dial("unix", a.Socket)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04garbage-frame"))
		conn.Close()
		sctx, cancel := context.WithCancel(withHeader(ctx))
		stream, err := c.FetchX509SVID(sctx, &workload.X509SVIDRequest{})
		if err == nil {
			stream.Recv()
		}
		cancel()
	}
	// The agent still answers.
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.Addr))
	if err != nil || svid.ID.String() != "spiffe://example.org/w/self" {
		t.Fatalf("after abuse: %v, %v", svid, err)
	}
}

// TestManyStreamingClients holds 200 streaming clients for 30 s while entries
// change, then checks that no client saw an error and that the agent's
// goroutines are released.
func TestManyStreamingClients(t *testing.T) {
	ca := systest.StartCA(t)
	a := ca.StartAgent("node1")
	ca.CreateEntry("spiffe://example.org/w/self", a.ID.String(), 0, selfSelectors(t)...)
	ctx := ctxT(t, 2*time.Minute)
	// Warm up, then count goroutines.
	fetchOnceKnown(t, a.Addr, "spiffe://example.org/w/self")
	time.Sleep(200 * time.Millisecond)
	base := runtime.NumGoroutine()

	const n = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	updates := make([]int, n)
	sctx, stop := context.WithCancel(ctx)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := grpc.NewClient(a.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			defer conn.Close()
			stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(withHeader(sctx), &workload.X509SVIDRequest{})
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			for {
				resp, err := stream.Recv()
				if err != nil {
					if sctx.Err() == nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
					return
				}
				if len(resp.GetSvids()) == 0 {
					mu.Lock()
					errs = append(errs, errors.New("empty response"))
					mu.Unlock()
				}
				updates[i]++
			}
		}()
	}
	// Changes while they stream: more identities for the same selectors.
	for k := 0; k < 6; k++ {
		time.Sleep(5 * time.Second)
		ca.CreateEntry(fmt.Sprintf("spiffe://example.org/w/extra/%d", k), a.ID.String(), 0, selfSelectors(t)...)
	}
	stop()
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d client errors, first: %v", len(errs), errs[0])
	}
	for i, u := range updates {
		if u < 5 {
			t.Fatalf("client %d saw %d updates; want the initial one and at least 4 of the 6 changes", i, u)
		}
	}
	// Streams end server-side once clients are gone.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+10 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d now, %d before the clients\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestEvictionShowsAndNewTokenRecovers evicts the agent: /readyz says so;
// a new token written to the token file brings it back by itself.
func TestEvictionShowsAndNewTokenRecovers(t *testing.T) {
	ca := systest.StartCA(t)
	health := systest.FreeAddr(t)
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(ca.Token("node1")+"\n"), 0o600)
	a := ca.StartAgent("node1", func(c *agent.Config) {
		c.HealthAddr = health
		c.JoinToken = ""
		c.JoinTokenFile = tokFile
	})
	ca.CreateEntry("spiffe://example.org/w/self", a.ID.String(), 0, selfSelectors(t)...)
	ready := func() (int, string) {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor := func(what string, cond func() bool) {
		for end := time.Now().Add(20 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(end) {
				code, body := ready()
				t.Fatalf("timed out waiting for %s; /readyz = %d %s", what, code, body)
			}
		}
	}
	waitFor("ready", func() bool { code, _ := ready(); return code == 200 })
	ctx := ctxT(t, 60*time.Second)
	fetchOnceKnown(t, a.Addr, "spiffe://example.org/w/self")
	resp, err := http.Get("http://" + health + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"signet_agent_entries 1", "signet_agent_x509_svids 1", "signet_agent_svids_minted_total 1", "signet_agent_ready 1",
		`signet_agent_workload_api_answers_total{call="workload.fetch_x509_svid",result="success"} 1`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, err := ca.Admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: a.ID.String()}); err != nil {
		t.Fatal(err)
	}
	waitFor("evicted", func() bool {
		code, body := ready()
		return code == 503 && strings.Contains(body, "no longer valid")
	})
	// Cached SVIDs are still served.
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(a.Addr)); err != nil {
		t.Fatalf("evicted agent stopped serving its cached SVID: %v", err)
	}
	os.WriteFile(tokFile, []byte(ca.Token("node1")+"\n"), 0o600)
	waitFor("re-attested", func() bool { code, _ := ready(); return code == 200 })
}

// TestAgentWaitsForTheCA starts the agent before the CA is up: it attests
// once the CA comes, instead of exiting.
func TestAgentWaitsForTheCA(t *testing.T) {
	ca := systest.StartCA(t)
	tok := ca.Token("node1")
	roots := ca.Roots()
	ca.Stop()
	dir := t.TempDir()
	done := make(chan error, 1)
	ready := make(chan spiffeid.ID, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		done <- agent.Run(ctx, agent.Config{TrustDomain: systest.TrustDomain, CAAddress: ca.Addr, DataDir: dir, JoinToken: tok,
			TrustBundle: roots, SocketPath: filepath.Join(dir, "agent.sock"), Ready: func(id spiffeid.ID) { ready <- id }})
	}()
	time.Sleep(time.Second)
	select {
	case err := <-done:
		t.Fatalf("agent exited while the CA was down: %v", err)
	default:
	}
	ca.Start()
	select {
	case id := <-ready:
		if id.String() != "spiffe://example.org/signet/agent/join/node1" {
			t.Fatalf("agent ID %s", id)
		}
	case err := <-done:
		t.Fatalf("agent exited: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not attest within 20 s of the CA's start")
	}
	cancel()
	<-done
	// A used token is refused for good: the agent exits with the reason.
	err := agent.Run(context.Background(), agent.Config{TrustDomain: systest.TrustDomain, CAAddress: ca.Addr, DataDir: t.TempDir(), JoinToken: tok,
		TrustBundle: roots, SocketPath: filepath.Join(t.TempDir(), "agent.sock")})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("agent with a used token: %v; want PermissionDenied", err)
	}
}
