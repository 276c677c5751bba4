// Package e2e runs Signet's real binaries as processes.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/signet-id/signet/e2e/pgenv"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "signet-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/signet-id/signet/cmd/...", "github.com/signet-id/signet/examples/...").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	// Tests run these binaries as other users too.
	os.Chmod(dir, 0o755)
	binDir = dir
	code := m.Run()
	pgenv.StopShared()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCA runs signet-ca on dataDir and waits for its admin socket.
func startCA(t testing.TB, dataDir string) *exec.Cmd {
	t.Helper()
	return startCAWith(t, dataDir, nil)
}

// startCAWith is startCA with more environment variables and arguments.
func startCAWith(t testing.TB, dataDir string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "signet-ca"), append([]string{"--trust-domain", "example.org", "--data-dir", dataDir,
		"--listen", systest.FreeAddr(t), "--health-addr", systest.FreeAddr(t)}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sock := filepath.Join(dataDir, "admin.sock")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return cmd
		}
	}
	t.Fatalf("signet-ca did not open %s; logs:\n%s", sock, logs.String())
	return nil
}

// signet runs the signet CLI against the CA of dataDir and returns its
// output; it fails the test if the command fails.
func signet(t testing.TB, dataDir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "signet"), args...)
	cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(dataDir, "admin.sock"))
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("signet %v: %v\n%s", args, err, stderr)
	}
	return string(out)
}

// TestKill9LosesNothingAcknowledged creates entries as fast as it can,
// kills the CA with SIGKILL in the middle, restarts it, and checks that
// every entry whose creation was acknowledged is there, and that the trust
// domain's root is unchanged.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	dir := t.TempDir()
	cmd := startCA(t, dir)
	rootBefore := signet(t, dir, "bundle", "show")

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	admin := adminv1.NewAdminClient(conn)

	var mu sync.Mutex
	acked := map[string]string{} // id -> spiffe id
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("spiffe://example.org/w/%d/%d", w, i)
				resp, err := admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
					SpiffeId: id, ParentId: "spiffe://example.org/signet/agent/join/node1",
					Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:1000"}},
				}}})
				if err != nil {
					return // the CA is gone
				}
				mu.Lock()
				acked[resp.GetEntries()[0].GetId()] = id
				mu.Unlock()
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	wg.Wait()
	cancel()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	if n < 10 {
		t.Fatalf("only %d entries acknowledged before the kill; the test proves nothing", n)
	}

	startCA(t, dir)
	var listed struct {
		Entries []struct {
			ID       string `json:"id"`
			SPIFFEID string `json:"spiffe_id"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(signet(t, dir, "entry", "list", "-o", "json")), &listed); err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, e := range listed.Entries {
		have[e.ID] = e.SPIFFEID
	}
	for id, spiffeID := range acked {
		if have[id] != spiffeID {
			t.Errorf("acknowledged entry %s (%s) lost after SIGKILL", id, spiffeID)
		}
	}
	if rootAfter := signet(t, dir, "bundle", "show"); rootAfter != rootBefore {
		t.Error("the root changed across SIGKILL and restart")
	}
	t.Logf("%d entries acknowledged before SIGKILL, all present after restart (%d listed)", n, len(listed.Entries))
}

// TestCLIBatchFile creates entries from a --file batch and reads them back
// in the same shape; a bad batch names the entry and field and stores
// nothing.
func TestCLIBatchFile(t *testing.T) {
	dir := t.TempDir()
	startCA(t, dir)
	file := filepath.Join(dir, "entries.json")
	os.WriteFile(file, []byte(`{"entries": [
		{"spiffe_id": "spiffe://example.org/w/1", "parent_id": "spiffe://example.org/signet/agent/join/node1", "selectors": ["unix:uid:1000"], "x509_ttl": "30m", "jwt_ttl": "5m", "dns_names": ["w1.local"]},
		{"spiffe_id": "spiffe://example.org/w/2", "parent_id": "spiffe://example.org/signet/agent/join/node1", "selectors": ["unix:path:/usr/bin/w2", "unix:gid:10"]}
	]}`), 0o600)
	signet(t, dir, "entry", "create", "--file", file)
	out := signet(t, dir, "entry", "list", "-o", "json", "--selector", "unix:uid:1000")
	if !strings.Contains(out, `"x509_ttl": "30m"`) || !strings.Contains(out, `"w1.local"`) || strings.Contains(out, "w/2") || strings.Contains(out, "workload_key") {
		t.Fatalf("entry list -o json --selector unix:uid:1000 =\n%s", out)
	}
	signet(t, dir, "entry", "create", "--spiffe-id", "spiffe://example.org/w/own-key", "--parent-id", "spiffe://example.org/signet/agent/join/node1",
		"--selector", "unix:uid:1001", "--workload-key")
	if out := signet(t, dir, "entry", "list", "-o", "json", "--selector", "unix:uid:1001"); !strings.Contains(out, `"workload_key": true`) {
		t.Fatalf("entry create --workload-key, then list -o json =\n%s", out)
	}
	os.WriteFile(file, []byte(`{"entries": [
		{"spiffe_id": "spiffe://example.org/w/3", "parent_id": "spiffe://example.org/signet/agent/join/node1", "selectors": ["unix:uid:1"]},
		{"spiffe_id": "spiffe://example.org/w/4", "parent_id": "spiffe://example.org/signet/agent/join/node1", "selectors": ["unix:uid:1"], "dns_names": ["bad name"]}
	]}`), 0o600)
	cmd := exec.Command(filepath.Join(binDir, "signet"), "--admin-socket", filepath.Join(dir, "admin.sock"), "entry", "create", "--file", file)
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "entries[1].dns_names[0]") {
		t.Fatalf("bad batch: %v\n%s", err, msg)
	}
	if out := signet(t, dir, "entry", "list", "-o", "json"); strings.Contains(out, "w/3") {
		t.Fatal("part of a refused batch was stored")
	}
	var tok struct {
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
	}
	if err := json.Unmarshal([]byte(signet(t, dir, "token", "create", "--node", "node1", "-o", "json")), &tok); err != nil || tok.Token == "" {
		t.Fatalf("token create -o json: %v %+v", err, tok)
	}
	if _, err := time.Parse(time.RFC3339, tok.ExpiresAt); err != nil {
		t.Errorf("expires_at %q is not RFC 3339", tok.ExpiresAt)
	}
	if pem := signet(t, dir, "bundle", "show"); !strings.HasPrefix(pem, "-----BEGIN CERTIFICATE-----") {
		t.Errorf("bundle show = %q", pem)
	}
	for _, f := range []string{"jwks", "spiffe"} {
		var keys struct {
			Keys []map[string]any `json:"keys"`
		}
		if err := json.Unmarshal([]byte(signet(t, dir, "bundle", "show", "--format", f)), &keys); err != nil || len(keys.Keys) == 0 {
			t.Errorf("bundle show --format %s: %v, %d keys", f, err, len(keys.Keys))
		}
	}
}

// TestAuditLogRotation renames the CA's audit log and sends SIGHUP: later
// records go to a new file at the configured path.
func TestAuditLogRotation(t *testing.T) {
	dir := t.TempDir()
	cmd := startCA(t, dir)
	logPath := filepath.Join(dir, "audit.log")
	signet(t, dir, "token", "create", "--node", "before")
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var cur []byte
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		signet(t, dir, "token", "create", "--node", "after")
		if cur, _ = os.ReadFile(logPath); strings.Contains(string(cur), `"node":"after"`) {
			break
		}
	}
	old, _ := os.ReadFile(logPath + ".1")
	if !strings.Contains(string(old), `"node":"before"`) || !strings.Contains(string(cur), `"node":"after"`) {
		t.Fatalf("rotated file:\n%s\ncurrent file:\n%s", old, cur)
	}
	if strings.Contains(string(cur), `"node":"before"`) {
		t.Fatal("the new file holds records from before the rotation")
	}
	// The hash chain runs on from the rotated file into the new one.
	if out := signet(t, dir, "audit", "verify", logPath+".1", logPath); !strings.HasPrefix(out, "intact:") || !strings.Contains(out, "starts the chain") {
		t.Errorf("audit verify across the rotation: %s", out)
	}
}

// TestAgentOfAnotherCAFailsAtOnce: an agent given the trust bundle of
// another CA (or of another trust domain) exits at once with a message
// that says so, instead of retrying for ever.
func TestAgentOfAnotherCAFailsAtOnce(t *testing.T) {
	caDir, otherDir, sameTDDir := t.TempDir(), t.TempDir(), t.TempDir()
	addr := systest.FreeAddr(t)
	startCAWith(t, caDir, nil, "--listen", addr)
	startCAWith(t, otherDir, nil, "--trust-domain", "prod.test")
	startCAWith(t, sameTDDir, nil) // example.org too, with roots of its own
	tok := strings.TrimSpace(signet(t, caDir, "token", "create", "--node", "n1", "-o", "json"))
	var token struct{ Token string }
	if err := json.Unmarshal([]byte(tok), &token); err != nil {
		t.Fatalf("token: %v: %s", err, tok)
	}
	for _, c := range []struct {
		name   string
		bundle string // the data directory of the CA whose bundle the agent gets
		args   []string
		want   string
	}{
		// The other CA's roots name prod.test: the agent takes that trust
		// domain, and the CA's certificate (example.org) does not verify.
		{"the bundle of another trust domain", otherDir, nil, "does not verify against this agent's trust bundle"},
		{"the bundle of another CA of the trust domain", sameTDDir, nil, "does not verify against this agent's trust bundle"},
		{"a trust domain the bundle does not name", otherDir, []string{"--trust-domain", "example.org"}, "could never verify its CA"},
	} {
		t.Run(c.name, func(t *testing.T) {
			bundle := filepath.Join(t.TempDir(), "bundle.pem")
			if err := os.WriteFile(bundle, []byte(signet(t, c.bundle, "bundle", "show")), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(filepath.Join(binDir, "signet-agent"), append([]string{"--ca-address", addr, "--join-token", token.Token,
				"--trust-bundle", bundle, "--data-dir", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "a.sock"), "--health-addr", ""}, c.args...)...)
			out, err := runBounded(t, cmd, "the agent")
			if err == nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("agent: %v; want an exit that says %q:\n%s", err, c.want, out)
			}
		})
	}
}

// TestAgentHealthWhileAttesting: an agent whose CA is not up yet answers
// /healthz at once, and /readyz with 503 and why (it is still attesting),
// and logs where it serves them.
func TestAgentHealthWhileAttesting(t *testing.T) {
	caDir := t.TempDir()
	startCA(t, caDir)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	if err := os.WriteFile(bundle, []byte(signet(t, caDir, "bundle", "show")), 0o600); err != nil {
		t.Fatal(err)
	}
	healthAddr := systest.FreeAddr(t)
	down := systest.FreeAddr(t) // no CA listens here
	cmd := exec.Command(filepath.Join(binDir, "signet-agent"), "--ca-address", down, "--join-token", "unused",
		"--trust-bundle", bundle, "--data-dir", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "a.sock"), "--health-addr", healthAddr)
	var logs systest.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + healthAddr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body, err := get("/readyz")
		if err == nil && strings.Contains(body, "attesting with the CA at "+down+" failed") {
			if code != http.StatusServiceUnavailable {
				t.Fatalf("/readyz: %d %q, want 503", code, body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz of an attesting agent: %d %q %v; logs:\n%s", code, body, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, body, err := get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz of an attesting agent: %d %q %v", code, body, err)
	}
	if !strings.Contains(logs.String(), "health/metrics listening") || !strings.Contains(logs.String(), healthAddr) {
		t.Fatalf("the agent did not log where it serves health:\n%s", logs.String())
	}
	// signet healthcheck says the same.
	if out, err := exec.Command(filepath.Join(binDir, "signet"), "healthcheck", "--addr", healthAddr).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "not attested yet") {
		t.Errorf("signet healthcheck of an attesting agent: %v\n%s", err, out)
	}
	if out, err := exec.Command(filepath.Join(binDir, "signet"), "healthcheck", "--addr", healthAddr, "--live").CombinedOutput(); err != nil {
		t.Errorf("signet healthcheck --live of an attesting agent: %v\n%s", err, out)
	}
}

// TestEntryTTLFloor: the CA refuses an entry whose SVIDs would live less
// than its floor (one minute by default), with a message naming the field
// and the setting; a CA started with a lower floor accepts it.
func TestEntryTTLFloor(t *testing.T) {
	dir := t.TempDir()
	startCA(t, dir)
	cmd := exec.Command(filepath.Join(binDir, "signet"), "entry", "create", "--spiffe-id", "spiffe://example.org/w/brief",
		"--parent-id", "spiffe://example.org/signet/agent/join/n1", "--selector", "unix:uid:1", "--x509-ttl", "1s")
	cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(dir, "admin.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--x509-ttl: 1s is shorter than the CA's shortest SVID lifetime, 1m0s (signet-ca --min-svid-ttl)") {
		t.Fatalf("entry create --x509-ttl 1s: %v\n%s", err, out)
	}
	low := t.TempDir()
	startCAWith(t, low, nil, "--min-svid-ttl", "1s")
	signet(t, low, "entry", "create", "--spiffe-id", "spiffe://example.org/w/brief",
		"--parent-id", "spiffe://example.org/signet/agent/join/n1", "--selector", "unix:uid:1", "--x509-ttl", "1s")
}

// TestDataDirectoryIsLocked: a second signet-ca, or a signet dev, on the
// data directory of a running CA is refused with the first one's PID, and
// leaves the first serving (its admin socket stays).
func TestDataDirectoryIsLocked(t *testing.T) {
	dir := t.TempDir()
	first := startCA(t, dir)
	want := fmt.Sprintf("process %d holds %s", first.Process.Pid, dir)
	for _, args := range [][]string{
		{"signet-ca", "--trust-domain", "example.org", "--data-dir", dir, "--listen", systest.FreeAddr(t), "--health-addr", ""},
		{"signet", "dev", "--data-dir", dir},
	} {
		cmd := exec.Command(filepath.Join(binDir, args[0]), args[1:]...)
		out, err := runBounded(t, cmd, args[0]+" beside the first CA")
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("%v: %v; want a refusal saying %q:\n%s", args[:2], err, want, out)
		}
		// The first CA still answers on its admin socket.
		signet(t, dir, "bundle", "show")
	}
}

// TestLongDataDirectory: a data directory too long for its sockets is
// refused with the limit and the path, not "bind: invalid argument".
func TestLongDataDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("long-directory-name/", 6))
	out, err := exec.Command(filepath.Join(binDir, "signet"), "dev", "--data-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "a Unix socket's path may be at most 107") || !strings.Contains(string(out), dir) {
		t.Fatalf("signet dev with a long data directory: %v\n%s", err, out)
	}
}

// runBounded runs cmd, which is to exit by itself, and fails the test if
// it still runs after 30 s.
func runBounded(t *testing.T, cmd *exec.Cmd, what string) ([]byte, error) {
	t.Helper()
	var buf systest.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return []byte(buf.String()), err
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s still runs after 30 s:\n%s", what, buf.String())
		return nil, nil
	}
}
