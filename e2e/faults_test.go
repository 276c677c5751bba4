package e2e

// The fault matrix (docs/faults.md): each test runs signet-ca and
// signet-agent as processes with SDK workloads on the agent that fetch
// their SVIDs and call each other without pause, injects one fault, and
// checks what must hold through it: no workload ever holds an expired
// SVID, no acknowledged write is lost, the failure shows in the metrics,
// /readyz and the log with its cause, and once the fault ends every
// stream is served again. Network faults act on an agent that runs in a
// network namespace the test makes.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// recoveryBound is how soon after a fault ends every stream must be
// served again: 2 s, plus gRPC's reconnect backoff (at most 2 s, as the
// agent sets it), plus slack for a loaded machine. The tests log what
// they measured.
const recoveryBound = 10 * time.Second

// caProc is a signet-ca process that a test can kill and start again on
// the same data directory and addresses.
type caProc struct {
	dir, listen, health string
	args                []string
	// netns, if set, is the network namespace the CA runs in.
	netns     string
	cmd       *exec.Cmd
	logs      *systest.Buffer
	admin     adminv1.AdminClient
	adminConn *grpc.ClientConn
}

// newCAProc is a signet-ca process on listen with args, not started yet.
func newCAProc(t *testing.T, listen string, args ...string) *caProc {
	return &caProc{dir: t.TempDir(), listen: listen, health: systest.FreeAddr(t), args: args, logs: &systest.Buffer{}}
}

// runCA is newCAProc, started.
func runCA(t *testing.T, listen string, args ...string) *caProc {
	t.Helper()
	c := newCAProc(t, listen, args...)
	c.start(t)
	return c
}

// start starts the CA and waits until it is ready.
func (c *caProc) start(t *testing.T) {
	t.Helper()
	args := append([]string{filepath.Join(binDir, "signet-ca"), "--trust-domain", "example.org", "--data-dir", c.dir,
		"--listen", c.listen, "--health-addr", c.health}, c.args...)
	if c.netns != "" {
		args = append([]string{"ip", "netns", "exec", c.netns}, args...)
	}
	c.cmd = exec.Command(args[0], args[1:]...)
	startReady(t, c.cmd, c.logs, c.health)
	// A connection of its own for each start: one that saw the CA killed
	// is in gRPC's reconnect backoff, and would fail the first calls.
	if c.adminConn != nil {
		c.adminConn.Close()
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(c.dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c.adminConn, c.admin = conn, adminv1.NewAdminClient(conn)
}

// leads says whether the replica holds the shared store's leader lock.
func (c *caProc) leads() bool {
	v, err := metricValue(c.health, "signet_ca_leader")
	return err == nil && v == 1
}

// streams waits until n agents' Sync streams are open on the CA.
func (c *caProc) streams(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 60*time.Second, func() error {
		v, err := metricValue(c.health, "signet_ca_sync_streams")
		if err == nil && v != float64(n) {
			err = fmt.Errorf("%v streams", v)
		}
		return err
	}, func() string { return fmt.Sprintf("the CA at %s never had %d Sync streams", c.listen, n) })
}

func (c *caProc) kill9(t *testing.T) { t.Helper(); kill9(t, c.cmd) }

// startReady starts cmd, its stderr into logs, and waits until its
// /readyz on health answers 200; the process is killed when the test ends.
func startReady(t *testing.T, cmd *exec.Cmd, logs *systest.Buffer, health string) {
	t.Helper()
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 60*time.Second, func() error {
		code, body, err := httpGet("http://" + health + "/readyz")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	}, func() string { return filepath.Base(cmd.Path) + " not ready; logs:\n" + logs.String() })
}

// kill9 kills cmd with SIGKILL and reaps it.
func kill9(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
}

// entries creates entries for node's agent, with selectors this process
// matches (one per ID) or not (unmatched), and returns them.
func (c *caProc) entries(ctx context.Context, node string, ids []string, ttl time.Duration, matched bool) ([]*typesv1.Entry, error) {
	var es []*typesv1.Entry
	for i, id := range ids {
		sel := fmt.Sprintf("uid:%d", os.Getuid())
		if !matched {
			sel = fmt.Sprintf("uid:%d", 200000+i)
		}
		es = append(es, &typesv1.Entry{SpiffeId: "spiffe://example.org/" + id, ParentId: "spiffe://example.org/signet/agent/join/" + node,
			Selectors: []*typesv1.Selector{{Type: "unix", Value: sel}}, X509SvidTtlSeconds: int64(ttl / time.Second)})
	}
	resp, err := c.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: es})
	return resp.GetEntries(), err
}

func httpGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// metricValue reads one metric (name with labels, as exposed) from a
// /metrics page.
func metricValue(addr, name string) (float64, error) {
	_, body, err := httpGet("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// agentProc is a signet-agent process, optionally in a network
// namespace, that a test can kill and start again.
type agentProc struct {
	node, caAddr, dir, sock, health, bundle, token string
	netns                                          string
	env                                            []string
	// attest are the flags of its node attestation; none: the join
	// token in token.
	attest []string
	cmd    *exec.Cmd
	logs   *systest.Buffer
}

func newAgentProc(t *testing.T, ca *caProc, node, caAddr, netns, health string, env ...string) *agentProc {
	t.Helper()
	a := &agentProc{node: node, caAddr: caAddr, dir: t.TempDir(), sock: filepath.Join(t.TempDir(), "agent.sock"), health: health, netns: netns, env: env}
	a.bundle = filepath.Join(a.dir, "bundle.pem")
	os.WriteFile(a.bundle, []byte(signet(t, ca.dir, "bundle", "show")), 0o600)
	var tok struct{ Token string }
	json.Unmarshal([]byte(signet(t, ca.dir, "token", "create", "--node", node, "-o", "json")), &tok)
	a.token = filepath.Join(a.dir, "token")
	os.WriteFile(a.token, []byte(tok.Token), 0o600)
	a.start(t)
	return a
}

func (a *agentProc) start(t *testing.T) {
	t.Helper()
	attest := a.attest
	if attest == nil {
		attest = []string{"--join-token-file", a.token}
	}
	args := append([]string{filepath.Join(binDir, "signet-agent"), "--ca-address", a.caAddr, "--trust-bundle", a.bundle,
		"--data-dir", filepath.Join(a.dir, "data"), "--socket", a.sock, "--health-addr", a.health}, attest...)
	if a.netns != "" {
		args = append([]string{"ip", "netns", "exec", a.netns}, args...)
	}
	a.logs = &systest.Buffer{}
	a.cmd = exec.Command(args[0], args[1:]...)
	a.cmd.Env = append(os.Environ(), a.env...)
	startReady(t, a.cmd, a.logs, a.health)
}

func (a *agentProc) kill9(t *testing.T) { t.Helper(); kill9(t, a.cmd) }

// streamUp waits until the agent's Sync stream to the CA serves, and
// returns how long that took.
func (a *agentProc) streamUp(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, within, func() error {
		v, err := metricValue(a.health, "signet_agent_ca_stream_up")
		if err == nil && v != 1 {
			err = errors.New("stream down")
		}
		return err
	}, func() string { return "the agent's Sync stream never came back; logs:\n" + a.logs.String() })
	return time.Since(start)
}

// notReady waits until the agent's /readyz fails with a message holding
// want, and checks the metric and the log say so too.
func (a *agentProc) notReady(t *testing.T, want, logWant string, within time.Duration) string {
	t.Helper()
	var body string
	waitFor(t, within, func() error {
		code, b, err := httpGet("http://" + a.health + "/readyz")
		body = b
		if err == nil && (code == 200 || !strings.Contains(b, want)) {
			err = fmt.Errorf("%d %s", code, b)
		}
		return err
	}, func() string { return fmt.Sprintf("the agent's /readyz never said %q", want) })
	if v, err := metricValue(a.health, "signet_agent_ready"); err != nil || v != 0 {
		t.Errorf("signet_agent_ready = %v, %v; want 0 while %s", v, err, want)
	}
	// The log is copied from the process's stderr as it comes.
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(a.logs.String(), logWant) {
			return errors.New("not yet")
		}
		return nil
	}, func() string {
		return fmt.Sprintf("the agent's log does not say %q; logs:\n%s", logWant, a.logs.String())
	})
	return body
}

// workloads are SDK workloads on one agent under load: they call each
// other (mesh.drive) and fetch SVIDs from the Workload API, and a watcher
// checks that none ever holds an expired SVID.
type workloads struct {
	*mesh
	sock      string
	expired   atomic.Int64
	firstExp  atomic.Value
	fetchOK   atomic.Int64
	fetchFail atomic.Int64
	fetchErr  atomic.Value
	stop      context.CancelFunc
	wg        *sync.WaitGroup
}

func startWorkloads(t *testing.T, sock string, ids []string) *workloads {
	t.Helper()
	var full []string
	for _, id := range ids {
		full = append(full, "spiffe://example.org/"+id)
	}
	w := &workloads{mesh: startMesh(t, sock, full), sock: sock}
	ctx, cancel := context.WithCancel(context.Background())
	w.stop = cancel
	w.wg = w.drive(ctx, 2)
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		for ctx.Err() == nil {
			now := time.Now()
			for _, s := range w.srcs {
				if svid, err := s.GetX509SVID(); err == nil && !now.Before(svid.Certificates[0].NotAfter) {
					if w.expired.Add(1) == 1 {
						w.firstExp.Store(fmt.Sprintf("%s expired at %s, seen at %s", svid.ID, svid.Certificates[0].NotAfter, now))
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer w.wg.Done()
		for ctx.Err() == nil {
			fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+sock))
			fcancel()
			switch {
			case ctx.Err() != nil:
			case err != nil:
				if w.fetchFail.Add(1) == 1 {
					w.fetchErr.Store(err.Error())
				}
				time.Sleep(50 * time.Millisecond)
			default:
				w.fetchOK.Add(1)
			}
		}
	}()
	t.Cleanup(w.finish)
	return w
}

func (w *workloads) finish() {
	w.stop()
	w.wg.Wait()
}

// check stops the load and fails the test if a workload held an expired
// SVID or a call between workloads failed.
func (w *workloads) check(t *testing.T) {
	t.Helper()
	w.finish()
	if n := w.expired.Load(); n > 0 {
		t.Errorf("workloads held an expired SVID %d times; first: %v", n, w.firstExp.Load())
	}
	if n := w.failed.Load(); n > 0 {
		w.mu.Lock()
		t.Errorf("%d of %d calls between workloads failed: %v", n, n+w.ok.Load(), w.failures)
		w.mu.Unlock()
	}
	if w.ok.Load() == 0 || w.fetchOK.Load() == 0 {
		t.Errorf("the load did not run: %d calls, %d fetches", w.ok.Load(), w.fetchOK.Load())
	}
	t.Logf("load: %d calls between workloads, %d SVID fetches (%d failed; first: %v), no expired SVID held", w.ok.Load(), w.fetchOK.Load(), w.fetchFail.Load(), w.fetchErr.Load())
}

// holds waits until the workload API at sock serves id.
func holdsID(t *testing.T, sock, id string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	waitFor(t, within, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr("unix://"+sock))
		if err != nil {
			return err
		}
		for _, s := range svids {
			if s.ID.String() == "spiffe://example.org/"+id {
				return nil
			}
		}
		return fmt.Errorf("%d SVIDs, none for %s", len(svids), id)
	}, func() string { return "the workload never got " + id })
	return time.Since(start)
}

// listAll lists every entry of the CA.
func listAll(t *testing.T, ca *caProc) []*typesv1.Entry {
	t.Helper()
	var out []*typesv1.Entry
	for tok := ""; ; {
		resp, err := ca.admin.ListEntries(context.Background(), &adminv1.ListEntriesRequest{PageSize: 1000, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp.GetEntries()...)
		if tok = resp.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

func ids(prefix string, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, fmt.Sprintf("%s/%d", prefix, i))
	}
	return out
}

// TestFaultCAKilledDuringBatches: kill -9 of the CA while the agent mints
// a large batch, and again while an admin batch is being written. The
// workloads keep their SVIDs and their calls; an admin batch is all or
// nothing; every acknowledged entry is there after the restart; the
// agent says the CA is away (/readyz, metric, log) and its stream serves
// again once the CA is back.
func TestFaultCAKilledDuringBatches(t *testing.T) {
	ctx := context.Background()
	ca := runCA(t, systest.FreeAddr(t))
	agent := newAgentProc(t, ca, "n1", ca.listen, "", systest.FreeAddr(t))
	if _, err := ca.entries(ctx, "n1", ids("w", 4), 0, true); err != nil {
		t.Fatal(err)
	}
	w := startWorkloads(t, agent.sock, ids("w", 4))

	// 1. During a mint batch: 3,000 entries the agent mints in batches of
	// 1,000; the CA dies once the first SVIDs of them are signed.
	issued := func() float64 { v, _ := metricValue(ca.health, `signet_ca_svids_issued_total{type="x509"}`); return v }
	before := issued()
	if _, err := ca.entries(ctx, "n1", ids("mint", 3000), 0, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, func() error {
		if issued() <= before {
			return errors.New("nothing signed yet")
		}
		return nil
	}, func() string { return "the agent never started minting" })
	mid := issued() - before
	ca.kill9(t)
	t.Logf("CA killed with %v of the 3,000 SVIDs signed", mid)
	agent.notReady(t, "no Sync stream to the CA", "sync stream ended", 60*time.Second)
	ca.start(t)
	back := time.Now()
	took := agent.streamUp(t, recoveryBound)
	t.Logf("the agent's Sync stream served again %s after the CA was ready", took.Round(time.Millisecond))
	waitFor(t, 60*time.Second, func() error {
		v, err := metricValue(agent.health, "signet_agent_x509_svids")
		if err == nil && v < 3004 {
			err = fmt.Errorf("%v SVIDs", v)
		}
		return err
	}, func() string { return "the agent never finished minting after the CA came back" })
	t.Logf("every SVID minted %s after the CA was back", time.Since(back).Round(time.Millisecond))

	// 2. During an admin batch: acknowledged batches are all there, the one
	// in flight all or nothing.
	var mu sync.Mutex
	acked := map[string]bool{}
	inflight := make(chan []string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			batch := ids(fmt.Sprintf("admin/%d", i), 500)
			select {
			case inflight <- batch:
			default:
				<-inflight
				inflight <- batch
			}
			es, err := ca.entries(ctx, "n1", batch, 0, false)
			if err != nil {
				return
			}
			mu.Lock()
			for _, e := range es {
				acked[e.GetId()] = true
			}
			mu.Unlock()
		}
	}()
	waitFor(t, 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) < 1000 {
			return fmt.Errorf("%d acknowledged", len(acked))
		}
		return nil
	}, func() string { return "the admin batches made no progress" })
	ca.kill9(t)
	<-done
	ca.start(t)
	agent.streamUp(t, recoveryBound)
	last := <-inflight
	have := map[string]bool{}
	byID := map[string]bool{}
	for _, e := range listAll(t, ca) {
		have[e.GetId()] = true
		byID[strings.TrimPrefix(e.GetSpiffeId(), "spiffe://example.org/")] = true
	}
	mu.Lock()
	for id := range acked {
		if !have[id] {
			t.Errorf("acknowledged entry %s lost", id)
		}
	}
	t.Logf("%d entries of acknowledged admin batches, all there after kill -9", len(acked))
	mu.Unlock()
	n := 0
	for _, id := range last {
		if byID[id] {
			n++
		}
	}
	if n != 0 && n != len(last) {
		t.Errorf("the batch in flight at the kill is half stored: %d of %d entries", n, len(last))
	}
	w.check(t)
}

// TestFaultAgentKilled: kill -9 of the agent with the workloads' Workload
// API streams open. The workloads keep their SVIDs and calls; once the
// agent is started again their streams are served within the bound.
func TestFaultAgentKilled(t *testing.T) {
	ctx := context.Background()
	ca := runCA(t, systest.FreeAddr(t))
	agent := newAgentProc(t, ca, "n1", ca.listen, "", systest.FreeAddr(t))
	if _, err := ca.entries(ctx, "n1", ids("w", 4), 0, true); err != nil {
		t.Fatal(err)
	}
	w := startWorkloads(t, agent.sock, ids("w", 4))
	// A watcher of its own, to see its stream served again.
	updates := make(chan time.Time, 64)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go workloadapi.WatchX509Context(wctx, x509Watcher{updates}, workloadapi.WithAddr("unix://"+agent.sock))
	select {
	case <-updates:
	case <-time.After(30 * time.Second):
		t.Fatal("no first X.509 context")
	}
	agent.kill9(t)
	// The workloads' streams break and their fetches fail, but what they
	// hold keeps serving their calls.
	failsBefore := w.fetchFail.Load()
	waitFor(t, 30*time.Second, func() error {
		if w.fetchFail.Load() == failsBefore {
			return errors.New("no failed fetch yet")
		}
		return nil
	}, func() string { return "fetches kept working with the agent dead" })
	okBefore := w.ok.Load()
	waitFor(t, 30*time.Second, func() error {
		if w.ok.Load() < okBefore+20 {
			return errors.New("few calls")
		}
		return nil
	}, func() string { return "the workloads stopped calling each other with the agent dead" })
	for len(updates) > 0 {
		<-updates
	}
	agent.start(t)
	started := time.Now()
	select {
	case <-updates:
		t.Logf("a Workload API watch was served again %s after the agent was ready (go-spiffe's backoff included)", time.Since(started).Round(time.Millisecond))
	case <-time.After(recoveryBound):
		t.Fatalf("no Workload API watch served within %s of the agent's restart", recoveryBound)
	}
	// A new entry reaches the watcher: the agent's Sync stream serves too.
	if _, err := ca.entries(ctx, "n1", []string{"after-restart"}, 0, true); err != nil {
		t.Fatal(err)
	}
	holdsID(t, agent.sock, "after-restart", 30*time.Second)
	w.check(t)
}

type x509Watcher struct{ updates chan time.Time }

func (x x509Watcher) OnX509ContextUpdate(*workloadapi.X509Context) {
	select {
	case x.updates <- time.Now():
	default:
	}
}
func (x509Watcher) OnX509ContextWatchError(error) {}

// netNS is a network namespace joined to the host by a veth pair: the
// host's end is hostIP, the namespace's nsIP.
type netNS struct {
	name, hostIP, nsIP string
}

func newNetNS(t *testing.T) *netNS {
	t.Helper()
	var b [2]byte
	rand.Read(b[:])
	tag := hex.EncodeToString(b[:])
	n := &netNS{name: "sgf" + tag, hostIP: fmt.Sprintf("10.%d.%d.1", 200+int(b[0])%50, b[1]), nsIP: fmt.Sprintf("10.%d.%d.2", 200+int(b[0])%50, b[1])}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	host, peer := "sgfh"+tag, "sgfn"+tag
	run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	run("ip", "link", "set", peer, "netns", n.name)
	run("ip", "addr", "add", n.hostIP+"/30", "dev", host)
	run("ip", "link", "set", host, "up")
	run("ip", "netns", "exec", n.name, "ip", "addr", "add", n.nsIP+"/30", "dev", peer)
	run("ip", "netns", "exec", n.name, "ip", "link", "set", peer, "up")
	run("ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up")
	return n
}

// iptables runs iptables in the namespace.
func (n *netNS) iptables(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.name, "iptables"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("iptables %v: %v\n%s", args, err, out)
	}
}

// partition drops the namespace's packets to and from addr until heal
// (or the end of the test).
func (n *netNS) partition(t *testing.T, addr string) (heal func()) {
	t.Helper()
	out, in := toCA(addr)
	rules := func(op string) {
		n.iptables(t, append(append([]string{op}, out...), "-j", "DROP")...)
		n.iptables(t, append(append([]string{op}, in...), "-j", "DROP")...)
	}
	rules("-A")
	var once sync.Once
	heal = func() { once.Do(func() { rules("-D") }) }
	t.Cleanup(heal)
	return heal
}

// toCA are the iptables match arguments of the traffic to and from addr
// (the CA's, PostgreSQL's).
func toCA(addr string) (out, in []string) {
	host, port, _ := net.SplitHostPort(addr)
	return []string{"OUTPUT", "-p", "tcp", "-d", host, "--dport", port}, []string{"INPUT", "-p", "tcp", "-s", host, "--sport", port}
}

// TestFaultPartition: the agent (in a network namespace) is cut from the
// CA for longer than half its workloads' SVID lifetime. The workloads
// never hold an expired SVID; the agent says it lost the CA; once the
// partition ends the stream serves again and the SVIDs are renewed
// before they expire.
func TestFaultPartition(t *testing.T) {
	ctx := context.Background()
	ns := newNetNS(t)
	port := strings.Split(systest.FreeAddr(t), ":")[1]
	ca := runCA(t, net.JoinHostPort(ns.hostIP, port))
	agent := newAgentProc(t, ca, "n1", ca.listen, ns.name, net.JoinHostPort(ns.nsIP, strings.Split(systest.FreeAddr(t), ":")[1]))
	const ttl = time.Minute
	if _, err := ca.entries(ctx, "n1", ids("w", 4), ttl, true); err != nil {
		t.Fatal(err)
	}
	w := startWorkloads(t, agent.sock, ids("w", 4))
	heal := ns.partition(t, ca.listen)
	cut := time.Now()
	body := agent.notReady(t, "no Sync stream to the CA", "sync stream ended", 40*time.Second)
	t.Logf("%s into the partition the agent's /readyz said: %s", time.Since(cut).Round(time.Second), body)
	// Longer than half the lifetime: every SVID's rotation falls in the
	// partition.
	for time.Since(cut) < ttl/2+10*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	heal()
	took := agent.streamUp(t, recoveryBound)
	t.Logf("the partition lasted %s; the Sync stream served again %s after it ended", (time.Since(cut) - took).Round(time.Second), took.Round(time.Millisecond))
	// The SVIDs are renewed before they expire.
	w.waitAll(t, "renewed after the partition", ttl, func(s *x509svid.SVID) bool { return s.Certificates[0].NotBefore.After(cut) })
	w.check(t)
}

// delayProxy forwards TCP connections from its listener to target, each
// direction delayed by d (the order of bytes kept): latency on a path, as
// this kernel has no netem.
func delayProxy(t *testing.T, listen, target string, d time.Duration) {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	forward(t, l, func() (net.Conn, error) { return net.Dial("tcp", target) }, d)
}

// forward carries every connection l accepts to one dial makes, each way
// d late, until the test ends.
func forward(t *testing.T, l net.Listener, dial func() (net.Conn, error), d time.Duration) {
	t.Cleanup(func() { l.Close() })
	pipe := func(dst, src net.Conn) {
		type chunk struct {
			b  []byte
			at time.Time
		}
		q := make(chan chunk, 1024)
		go func() {
			defer close(q)
			for {
				buf := make([]byte, 32<<10)
				n, err := src.Read(buf)
				if n > 0 {
					q <- chunk{buf[:n], time.Now().Add(d)}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range q {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.b); err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := dial()
			if err != nil {
				c.Close()
				continue
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
}

// TestFaultLossAndLatency: the agent reaches the CA through 300 ms of
// latency each way (a delaying proxy) with 20% of its packets to and from
// the CA dropped (iptables statistic). Entries still reach the workloads
// and SVIDs are renewed before they expire; the workloads never notice.
func TestFaultLossAndLatency(t *testing.T) {
	ctx := context.Background()
	ns := newNetNS(t)
	ca := runCA(t, systest.FreeAddr(t), "--min-svid-ttl", "10s")
	proxy := net.JoinHostPort(ns.hostIP, strings.Split(systest.FreeAddr(t), ":")[1])
	delayProxy(t, proxy, ca.listen, 300*time.Millisecond)
	agent := newAgentProc(t, ca, "n1", proxy, ns.name, net.JoinHostPort(ns.nsIP, strings.Split(systest.FreeAddr(t), ":")[1]))
	const ttl = 30 * time.Second
	if _, err := ca.entries(ctx, "n1", ids("w", 4), ttl, true); err != nil {
		t.Fatal(err)
	}
	w := startWorkloads(t, agent.sock, ids("w", 4))
	out, in := toCA(proxy)
	loss := func(op string) {
		for _, m := range [][]string{out, in} {
			ns.iptables(t, append(append([]string{op}, m...), "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")...)
		}
	}
	loss("-A")
	start := time.Now()
	if _, err := ca.entries(ctx, "n1", []string{"w/new"}, ttl, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("with 600 ms round trips and 20%% loss, a new entry reached its workload in %s", holdsID(t, agent.sock, "w/new", 60*time.Second).Round(time.Millisecond))
	// Two lifetimes: every SVID is renewed twice through the bad path.
	w.waitAll(t, "renewed through the lossy path", 2*ttl+30*time.Second, func(s *x509svid.SVID) bool {
		return s.Certificates[0].NotBefore.After(start.Add(ttl))
	})
	loss("-D")
	w.check(t)
}

// TestFaultClockSkew: two agents whose clocks are five minutes ahead of
// and behind the CA's (an injected offset: the wall clock cannot be moved
// for one process). SVIDs of 20 s are renewed at half their life as the
// CA counts it: none is ever held expired, and none is re-minted in a
// loop.
func TestFaultClockSkew(t *testing.T) {
	ctx := context.Background()
	ca := runCA(t, systest.FreeAddr(t), "--min-svid-ttl", "10s")
	const ttl = 20 * time.Second
	for _, skew := range []string{"5m", "-5m"} {
		t.Run(skew, func(t *testing.T) {
			t.Parallel()
			node := "skew" + strings.TrimPrefix(skew, "-")
			if strings.HasPrefix(skew, "-") {
				node += "-behind"
			}
			agent := newAgentProc(t, ca, node, ca.listen, "", systest.FreeAddr(t), "SIGNET_TEST_CLOCK_OFFSET="+skew)
			waitFor(t, 10*time.Second, func() error {
				if !strings.Contains(agent.logs.String(), "deciding by a clock moved for a test") {
					return errors.New("not in the log")
				}
				return nil
			}, func() string { return "the agent did not take the clock offset; logs:\n" + agent.logs.String() })
			if _, err := ca.entries(ctx, node, ids(node, 3), ttl, true); err != nil {
				t.Fatal(err)
			}
			w := startWorkloads(t, agent.sock, ids(node, 3))
			start := time.Now()
			minted0, _ := metricValue(agent.health, "signet_agent_svids_minted_total")
			// Three lifetimes.
			w.waitAll(t, "renewed", 4*ttl, func(s *x509svid.SVID) bool { return s.Certificates[0].NotBefore.After(start.Add(2 * ttl)) })
			minted, _ := metricValue(agent.health, "signet_agent_svids_minted_total")
			elapsed := time.Since(start)
			// At half life, each of the three SVIDs about once per ttl/2.
			want := 3 * (elapsed.Seconds()/(ttl.Seconds()/2) + 2)
			if n := minted - minted0; n > want {
				t.Errorf("%v SVIDs minted in %s for 3 entries of %s; want at most %.0f (half-life rotation), not a loop", n, elapsed.Round(time.Second), ttl, want)
			} else {
				t.Logf("clock %s: %v SVIDs minted in %s for 3 entries of %s", skew, n, elapsed.Round(time.Second), ttl)
			}
			w.check(t)
		})
	}
}

// TestFaultCADiskFull: the filesystem of the CA's data directory (the
// database and the audit log) fills up. Requests that must be audited or
// stored are refused with the cause, /readyz says so, and nothing is half
// stored; the agent and the workloads keep what they hold; once there is
// room again the CA serves as before.
func TestFaultCADiskFull(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (the test runs as root): %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	ca := newCAProc(t, systest.FreeAddr(t))
	ca.dir = filepath.Join(dir, "ca")
	ca.start(t)
	agent := newAgentProc(t, ca, "n1", ca.listen, "", systest.FreeAddr(t))
	if _, err := ca.entries(ctx, "n1", ids("w", 4), 0, true); err != nil {
		t.Fatal(err)
	}
	w := startWorkloads(t, agent.sock, ids("w", 4))

	// Fill the filesystem.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	small := make([]byte, 512)
	for {
		if _, err := f.Write(small); err != nil {
			break
		}
	}
	f.Close()
	_, err = ca.entries(ctx, "n1", ids("full", 50), 0, false)
	if err == nil || !(strings.Contains(err.Error(), "no space left") || strings.Contains(err.Error(), "full")) {
		t.Fatalf("creating entries on a full disk: %v; want a refusal that names the full disk", err)
	}
	t.Logf("refused: %v", err)
	// The log is copied from the process's stderr as it comes.
	waitFor(t, 10*time.Second, func() error {
		if l := ca.logs.String(); !strings.Contains(l, "disk is full") && !strings.Contains(l, "no space left on device") {
			return errors.New("not yet")
		}
		return nil
	}, func() string { return "the CA's log does not name the full disk:\n" + ca.logs.String() })
	waitFor(t, 30*time.Second, func() error {
		code, body, err := httpGet("http://" + ca.health + "/readyz")
		if err == nil && (code == 200 || !strings.Contains(body, "no space left")) {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	}, func() string { return "the CA's /readyz never said the disk is full" })
	if v, err := metricValue(ca.health, "signet_ca_audit_disk_free_ratio"); err != nil || v > 0.01 {
		t.Errorf("signet_ca_audit_disk_free_ratio = %v, %v; want about 0", v, err)
	}
	// Nothing of the refused batch is stored.
	for _, e := range listAll(t, ca) {
		if strings.Contains(e.GetSpiffeId(), "/full/") {
			t.Fatalf("entry %s of the refused batch is stored", e.GetSpiffeId())
		}
	}
	time.Sleep(2 * time.Second) // the load runs on a full disk for a while
	os.Remove(filler)
	freed := time.Now()
	waitFor(t, 30*time.Second, func() error {
		_, err := ca.entries(ctx, "n1", []string{"after"}, 0, true)
		return err
	}, func() string { return "the CA still refuses writes after the disk has room" })
	waitFor(t, 30*time.Second, func() error {
		code, body, err := httpGet("http://" + ca.health + "/readyz")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	}, func() string { return "the CA did not become ready after the disk had room" })
	holdsID(t, agent.sock, "after", 30*time.Second)
	t.Logf("a new entry reached its workload %s after the disk had room", time.Since(freed).Round(time.Millisecond))
	w.check(t)
}
