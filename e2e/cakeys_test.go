package e2e

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// startAgentProcess runs signet-agent for node with a join token of the CA
// at dataDir, and returns its socket and process.
func startAgentProcess(tb testing.TB, dataDir, caAddr, node string) (string, *exec.Cmd) {
	tb.Helper()
	bundle := filepath.Join(tb.TempDir(), "bundle.pem")
	os.WriteFile(bundle, []byte(signet(tb, dataDir, "bundle", "show")), 0o600)
	var tok struct{ Token string }
	json.Unmarshal([]byte(signet(tb, dataDir, "token", "create", "--node", node, "-o", "json")), &tok)
	sock := filepath.Join(tb.TempDir(), "agent.sock")
	agent := exec.Command(filepath.Join(binDir, "signet-agent"), "--ca-address", caAddr, "--join-token", tok.Token, "--trust-bundle", bundle,
		"--data-dir", tb.TempDir(), "--socket", sock, "--health-addr", "")
	if err := agent.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	return sock, agent
}

// caStatus is `signet ca status -o json`.
type caStatus struct {
	BundleSequence string   `json:"bundleSequence"`
	LiveAgents     []string `json:"liveAgents"`
	Keys           []struct {
		ID               string   `json:"id"`
		Kind             string   `json:"kind"`
		KeyType          string   `json:"keyType"`
		State            string   `json:"state"`
		Revoked          bool     `json:"revoked"`
		AgentsHolding    int      `json:"agentsHolding"`
		AgentsLagging    []string `json:"agentsLagging"`
		WorkloadsHolding int      `json:"workloadsHolding"`
		Svids            int      `json:"svids"`
	} `json:"keys"`
}

func readCAStatus(tb testing.TB, dataDir string) caStatus {
	tb.Helper()
	var st caStatus
	if out := signet(tb, dataDir, "ca", "status", "-o", "json"); json.Unmarshal([]byte(out), &st) != nil {
		tb.Fatalf("ca status -o json: %s", out)
	}
	return st
}

// mesh is SDK workloads on one agent, each serving mutual TLS and
// dialing the others: every connection is a new full handshake, checked
// against the revocations by both sides.
type mesh struct {
	srcs  []*sdk.Source
	addrs []string

	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
}

// startMesh starts one workload per ID on the agent at sock.
func startMesh(tb testing.TB, sock string, ids []string) *mesh {
	tb.Helper()
	m := &mesh{}
	var wg sync.WaitGroup
	m.srcs, m.addrs = make([]*sdk.Source, len(ids)), make([]string, len(ids))
	errs := make([]error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			m.srcs[i], errs[i] = sdk.NewSource(ctx, sdk.WithAddr("unix://"+sock), sdk.WithID(id))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("workload %s: %v", ids[i], err)
		}
		src := m.srcs[i]
		tb.Cleanup(func() { src.Close() })
		az, err := authz.New(src.TrustDomain(), authz.Allow(authz.PeerTrustDomain(src.TrustDomain().Name())))
		if err != nil {
			tb.Fatal(err)
		}
		l, err := sdk.Listen("tcp", "127.0.0.1:0", src, az)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { l.Close() })
		m.addrs[i] = l.Addr().String()
		go systest.Echo(l)
	}
	return m
}

// meshOnOneAgent starts signet-ca and signet-agent as processes, and
// one SDK workload per ID on the agent (startMesh); it returns the CA's
// data directory and the workloads.
func meshOnOneAgent(tb testing.TB, ids []string, caArgs ...string) (string, *mesh) {
	tb.Helper()
	dir := tb.TempDir()
	caAddr := systest.FreeAddr(tb)
	startCAWith(tb, dir, nil, append([]string{"--listen", caAddr}, caArgs...)...)
	sock, _ := startAgentProcess(tb, dir, caAddr, "n1")
	createEntries(tb, dir, "n1", ids)
	return dir, startMesh(tb, sock, ids)
}

// handshake dials workload to from workload from, and exchanges a byte:
// both have verified each other when it returns nil.
func (m *mesh) handshake(ctx context.Context, from, to int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := sdk.Dial(ctx, "tcp", m.addrs[to], m.srcs[from], tlsconfig.AuthorizeAny())
	if err != nil {
		return err
	}
	return exchange(c)
}

// exchange sends a byte on c, reads the echo and closes c: both sides of
// a TLS connection have verified each other when it returns nil.
func exchange(c net.Conn) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte{1}); err != nil {
		return err
	}
	var b [1]byte
	_, err := io.ReadFull(c, b[:])
	return err
}

// drive runs workers that make handshakes between random pairs until ctx
// ends, counting those that worked and those that failed.
func (m *mesh) drive(ctx context.Context, workers int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				from := rand.IntN(len(m.srcs))
				to := (from + 1 + rand.IntN(len(m.srcs)-1)) % len(m.srcs)
				err := m.handshake(ctx, from, to)
				switch {
				case ctx.Err() != nil:
				case err != nil:
					m.failed.Add(1)
					m.mu.Lock()
					if len(m.failures) < 10 {
						m.failures = append(m.failures, fmt.Sprintf("%d -> %d: %v", from, to, err))
					}
					m.mu.Unlock()
				default:
					m.ok.Add(1)
				}
			}
		}()
	}
	return &wg
}

// keyID is a key ID as the CA shows it.
func keyID(b []byte) string { return hex.EncodeToString(b) }

// waitAll waits until every workload's SVID passes ok, and returns how
// long that took.
func (m *mesh) waitAll(tb testing.TB, what string, timeout time.Duration, ok func(*x509svid.SVID) bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for {
		all := true
		for _, s := range m.srcs {
			if svid, err := s.GetX509SVID(); err != nil || !ok(svid) {
				all = false
				break
			}
		}
		if all {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			tb.Fatalf("%s: not every workload after %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stolenDial dials workload to with a stolen SVID, as an attacker who
// copied it would, and exchanges a byte.
func (m *mesh) stolenDial(to int, stolen *x509svid.SVID) error {
	cfg := tlsconfig.MTLSClientConfig(staticSVID{stolen}, m.srcs[to], tlsconfig.AuthorizeAny())
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", m.addrs[to], cfg)
	if err != nil {
		return err
	}
	return exchange(c)
}

// spread is revoke -> each peer refusing the revoked SVID: its open
// connection from it closed, and a new handshake with it refused (the
// later of the two), for the peers that did; never counts those that did
// not within the timeout.
type spread struct {
	refused    []time.Duration
	never      int
	ok, failed int64
}

// revocationUnderTraffic: n SDK workloads on one agent (processes)
// making handshakes with each other; workload 0 holds an open connection
// to every other. Its SVID is revoked by serial, and each other workload
// is timed until it has closed that connection and refuses a new
// handshake with the revoked SVID.
func revocationUnderTraffic(tb testing.TB, n, workers int) spread {
	dir, m := meshOnOneAgent(tb, workloadIDs(n))
	revoked, _ := m.srcs[0].GetX509SVID()
	open := make([]net.Conn, n)
	for j := 1; j < n; j++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := sdk.Dial(ctx, "tcp", m.addrs[j], m.srcs[0], tlsconfig.AuthorizeAny())
		cancel()
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := c.Write([]byte{1}); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			tb.Fatal(err)
		}
		open[j] = c
		tb.Cleanup(func() { c.Close() })
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	traffic := m.drive(ctx, workers)
	for m.ok.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	var res spread
	times := make([]time.Duration, n)
	var wg sync.WaitGroup
	start := time.Now()
	signet(tb, dir, "revocation", "create", "--serial", revoked.Certificates[0].SerialNumber.Text(16))
	for j := 1; j < n; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := start.Add(30 * time.Second)
			// The open connection: the peer closes it.
			open[j].SetReadDeadline(deadline)
			if _, err := io.ReadFull(open[j], make([]byte, 1)); err == nil || time.Now().After(deadline) {
				return
			}
			for m.stolenDial(j, revoked) == nil {
				if time.Now().After(deadline) {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			times[j] = time.Since(start)
		}()
	}
	wg.Wait()
	cancel()
	traffic.Wait()
	for _, d := range times[1:] {
		if d == 0 {
			res.never++
		} else {
			res.refused = append(res.refused, d)
		}
	}
	slices.Sort(res.refused)
	res.ok, res.failed = m.ok.Load(), m.failed.Load()
	return res
}

// TestRevocationUnderTraffic: every peer closes its connection with a
// revoked workload and refuses its SVID, while the others keep making
// handshakes.
func TestRevocationUnderTraffic(t *testing.T) {
	res := revocationUnderTraffic(t, 8, 4)
	if res.never > 0 {
		t.Fatalf("%d peers never refused the revoked SVID", res.never)
	}
	t.Logf("revoke -> each of %d peers refusing: %v; handshakes meanwhile: %d ok, %d failed", len(res.refused), res.refused, res.ok, res.failed)
}

type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func workloadIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("spiffe://example.org/w/%03d", i)
	}
	return ids
}

func createEntries(tb testing.TB, dir, node string, ids []string) {
	tb.Helper()
	var b strings.Builder
	b.WriteString(`{"entries": [`)
	for i, id := range ids {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"spiffe_id": %q, "parent_id": "spiffe://example.org/signet/agent/join/%s", "selectors": ["unix:uid:%d"]}`, id, node, os.Getuid())
	}
	b.WriteString("]}")
	f := filepath.Join(tb.TempDir(), "entries.json")
	os.WriteFile(f, []byte(b.String()), 0o600)
	signet(tb, dir, "entry", "create", "--file", f)
}

// compromise is what an intermediate compromise measured.
type compromise struct {
	// reissued: revoke -> every workload holds an SVID under a new
	// intermediate.
	reissued time.Duration
	// ok and failed count handshakes between workloads, none of them
	// revoked, from before the revocation to after its enforcement.
	ok, failed int64
	failures   []string
}

// intermediateCompromise runs n SDK workloads on one agent (processes:
// signet-ca, signet-agent) with workers making handshakes between them
// all along, and revokes the active intermediate with the given grace.
// It checks that a copy of an SVID under the revoked intermediate (a
// stolen one) works before and is refused after the grace.
func intermediateCompromise(tb testing.TB, n, workers int, grace time.Duration) compromise {
	dir, m := meshOnOneAgent(tb, workloadIDs(n))

	stolen, _ := m.srcs[0].GetX509SVID()
	if err := m.stolenDial(1, stolen); err != nil {
		tb.Fatalf("the SVID works before any revocation: %v", err)
	}
	oldInter := stolen.Certificates[1]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	traffic := m.drive(ctx, workers)
	for m.ok.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}

	start := time.Now()
	var created struct {
		Revocations []struct {
			ID           string `json:"id"`
			CaKey        string `json:"caKey"`
			Serial       string `json:"serial"`
			EnforceAfter string `json:"enforceAfter"`
		} `json:"revocations"`
	}
	out := signet(tb, dir, "revocation", "create", "--ca-key", keyID(oldInter.SubjectKeyId), "--grace", grace.String(), "--reason", "intermediate key copied", "-o", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || len(created.Revocations) != 1 ||
		created.Revocations[0].Serial != oldInter.SerialNumber.Text(16) || created.Revocations[0].EnforceAfter == "" {
		tb.Fatalf("revocation create --ca-key: %v\n%s", err, out)
	}
	var res compromise
	res.reissued = m.waitAll(tb, "new SVIDs under a new intermediate", 60*time.Second, func(s *x509svid.SVID) bool {
		return keyID(s.Certificates[0].AuthorityKeyId) != keyID(oldInter.SubjectKeyId)
	})

	// Past the grace: peers refuse the revoked intermediate.
	for time.Since(start) < grace+time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for m.stolenDial(1, stolen) == nil {
		if time.Now().After(deadline) {
			tb.Fatal("an SVID under the revoked intermediate is still accepted after the grace")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := m.ok.Load()
	for m.ok.Load() < before+50 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	traffic.Wait()
	res.ok, res.failed, res.failures = m.ok.Load(), m.failed.Load(), m.failures

	for _, k := range readCAStatus(tb, dir).Keys {
		if k.ID == keyID(oldInter.SubjectKeyId) {
			tb.Errorf("the CA still lists the revoked intermediate, with SVIDs under it: %+v", k)
		}
	}
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	if !strings.Contains(string(audit), `"revocation":"`+created.Revocations[0].ID+`"`) || !strings.Contains(string(audit), `"state":"revoked"`) {
		tb.Errorf("the audit log lacks the CA key revocation")
	}
	return res
}

// TestIntermediateCompromise: signet-ca and signet-agent as processes,
// SDK workloads making new handshakes with each other all along. The
// active intermediate is revoked: the CA signs with a new one at once,
// every workload holds an SVID under it within seconds, no handshake
// between the workloads fails, and a copy of an SVID under the revoked
// intermediate (a stolen one) is refused once the revocation is enforced.
func TestIntermediateCompromise(t *testing.T) {
	res := intermediateCompromise(t, 8, 4, 3*time.Second)
	t.Logf("revoke intermediate -> all workloads hold SVIDs under a new one: %v", res.reissued)
	t.Logf("handshakes between workloads: %d ok, %d failed", res.ok, res.failed)
	if res.failed > 0 {
		t.Errorf("%d handshakes between workloads that are not revoked failed: %v", res.failed, res.failures)
	}
}

// rotation is what a verified root rotation measured.
type rotation struct {
	took       time.Duration // ca rotate --now, from start to done
	ok, failed int64
	failures   []string
	progress   string
}

// rootRotation runs n SDK workloads on agent n1 and a second agent n2
// that stops; workers make handshakes between the workloads until at
// least handshakes were made, with `signet ca rotate --now` in the
// middle. It checks that the rotation waits for n2 (ca status names it),
// activates after ackTimeout with an audited warning naming it, and that
// every workload ends under the new root, trusting only it.
func rootRotation(tb testing.TB, n, workers int, handshakes int64, ackTimeout time.Duration) rotation {
	dir := tb.TempDir()
	caAddr := systest.FreeAddr(tb)
	startCAWith(tb, dir, nil, "--listen", caAddr)
	sock, _ := startAgentProcess(tb, dir, caAddr, "n1")
	_, stopped := startAgentProcess(tb, dir, caAddr, "n2")
	const n2 = "spiffe://example.org/signet/agent/join/n2"
	ids := workloadIDs(n)
	createEntries(tb, dir, "n1", ids)
	m := startMesh(tb, sock, ids)
	oldRoot := func() string {
		svid, _ := m.srcs[0].GetX509SVID()
		return keyID(svid.Certificates[1].AuthorityKeyId)
	}()
	// Both agents, and every workload, have acknowledged the bundle; then
	// n2 stops (its SVID has not expired: it is live, and lags).
	eventuallyTB(tb, "both agents and every workload acknowledge the root", func() bool {
		for _, k := range readCAStatus(tb, dir).Keys {
			if k.ID == oldRoot {
				return k.AgentsHolding == 2 && k.WorkloadsHolding == len(ids)
			}
		}
		return false
	})
	stopped.Process.Kill()
	stopped.Wait()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	traffic := m.drive(ctx, workers)
	// A third of the handshakes before the rotation.
	for m.ok.Load() < handshakes/3 {
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	rotate := exec.Command(filepath.Join(binDir, "signet"), "ca", "rotate", "--now", "--ack-timeout", ackTimeout.String(), "--grace", "3s", "--poll", "200ms", "--reissue-timeout", "60s")
	rotate.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(dir, "admin.sock"))
	var progress systest.Buffer
	rotate.Stdout, rotate.Stderr = &progress, &progress
	if err := rotate.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rotate.Wait() }()
	// While it waits, the status names the stopped agent, and the root is
	// not active.
	var newRoot string
	eventuallyTB(tb, "ca status names the agent that has not acknowledged the prepared root", func() bool {
		for _, k := range readCAStatus(tb, dir).Keys {
			if k.Kind == "x509_root" && k.State == "prepared" && slices.Equal(k.AgentsLagging, []string{n2}) && k.AgentsHolding == 1 {
				newRoot = k.ID
				return true
			}
		}
		return false
	})
	select {
	case err := <-done:
		tb.Fatalf("ca rotate ended before the acknowledgement timeout: %v\n%s", err, progress.String())
	default:
	}
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("ca rotate: %v\n%s", err, progress.String())
		}
	case <-time.After(ackTimeout + 90*time.Second):
		tb.Fatalf("ca rotate did not finish:\n%s", progress.String())
	}
	res := rotation{took: time.Since(start), progress: progress.String()}
	for _, want := range []string{"prepared root " + newRoot, "lagging: " + n2, "timeout: activating without 1 agents", "audited warning: not acknowledged by " + n2,
		"revoked the previous root " + oldRoot, fmt.Sprintf("re-issue: %d SVIDs under the new root, 0 under the previous one", len(ids))} {
		if !strings.Contains(res.progress, want) {
			tb.Errorf("ca rotate output lacks %q", want)
		}
	}
	m.waitAll(tb, "SVIDs under the new root", 30*time.Second, func(s *x509svid.SVID) bool {
		return keyID(s.Certificates[1].AuthorityKeyId) == newRoot
	})
	// Past the grace the previous root leaves the bundle: a workload
	// trusts the new root only.
	eventuallyTB(tb, "the previous root leaves the workloads' bundle", func() bool {
		b, err := m.srcs[0].GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org"))
		return err == nil && len(b.X509Authorities()) == 1 && keyID(b.X509Authorities()[0].SubjectKeyId) == newRoot
	})
	for m.ok.Load() < handshakes {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	traffic.Wait()
	res.ok, res.failed, res.failures = m.ok.Load(), m.failed.Load(), m.failures
	var warned bool
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	for _, line := range strings.Split(string(audit), "\n") {
		if strings.Contains(line, `"event":"ca.key.activate_unacknowledged"`) && strings.Contains(line, n2) && strings.Contains(line, newRoot) {
			warned = true
		}
	}
	if !warned {
		tb.Error("the audit log has no warning naming the agent that had not acknowledged the root")
	}
	return res
}

// TestRootRotationWithAcknowledgement: two agents as processes; one is
// stopped. `signet ca rotate --now` prepares a root, waits while the
// stopped agent has not acknowledged it (ca status names it), activates
// it after the timeout with an audited warning naming it, revokes the
// previous root and follows the re-issue, while the other agent's SDK
// workloads keep making handshakes without one failing.
func TestRootRotationWithAcknowledgement(t *testing.T) {
	res := rootRotation(t, 8, 4, 3000, 6*time.Second)
	t.Logf("signet ca rotate --now (%v):\n%s", res.took, res.progress)
	t.Logf("handshakes across the rotation: %d ok, %d failed", res.ok, res.failed)
	if res.failed > 0 {
		t.Errorf("%d handshakes failed across the rotation: %v", res.failed, res.failures)
	}
}

func eventuallyTB(tb testing.TB, what string, ok func() bool) {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within 60s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
