package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/e2e/systest"
)

// signetFails runs the CLI, which must fail, and returns what it said.
func signetFails(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "signet"), args...)
	cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(dir, "admin.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("signet %v succeeded:\n%s", args, out)
	}
	return string(out)
}

// TestCLIContract: help needs no admin API; -o text|json|yaml everywhere
// objects are printed; list -o json feeds create --file; errors name the
// flag typed or the line and column of the file; durations read and
// print as durations; filters combine and are checked.
func TestCLIContract(t *testing.T) {
	dir := t.TempDir()
	startCA(t, dir)
	noAdmin := append(os.Environ(), "SIGNET_ADMIN_SOCKET=", "SIGNET_ADMIN_ADDRESS=")
	for _, args := range [][]string{{"--help"}, {"entry", "--help"}, {"entry", "create", "--help"}, {"policy", "list", "--help"}, {"--version"}} {
		cmd := exec.Command(filepath.Join(binDir, "signet"), args...)
		cmd.Env = noAdmin
		if out, err := cmd.CombinedOutput(); err != nil || len(out) == 0 {
			t.Errorf("signet %v without an admin API: %v\n%s", args, err, out)
		}
	}
	// A global flag after the command.
	if out := signet(t, t.TempDir(), "agent", "list", "--admin-socket", filepath.Join(dir, "admin.sock")); !strings.Contains(out, "SPIFFE ID") {
		t.Errorf("--admin-socket after the command: %s", out)
	}

	parent := "spiffe://example.org/signet/agent/join/node1"
	signet(t, dir, "entry", "create", "--spiffe-id", "spiffe://example.org/w/a", "--parent-id", parent,
		"--selector", "unix:uid:1000", "--selector", "unix:gid:10", "--x509-ttl", "1d", "--jwt-ttl", "10m")
	signet(t, dir, "entry", "create", "--spiffe-id", "spiffe://example.org/w/b", "--parent-id", parent, "--selector", "unix:uid:1000")

	var listed struct {
		Entries []map[string]any `json:"entries"`
	}
	out := signet(t, dir, "entry", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed.Entries) != 2 {
		t.Fatalf("entry list -o json: %v\n%s", err, out)
	}
	if !strings.Contains(out, `"x509_ttl": "24h"`) || !strings.Contains(out, `"jwt_ttl": "10m"`) {
		t.Errorf("durations do not print as durations:\n%s", out)
	}
	var fromYAML struct {
		Entries []map[string]any `json:"entries"`
	}
	if err := yaml.Unmarshal([]byte(signet(t, dir, "entry", "list", "-o", "yaml")), &fromYAML); err != nil || len(fromYAML.Entries) != 2 {
		t.Errorf("entry list -o yaml: %v %v", err, fromYAML)
	}
	if out := signetFails(t, dir, "entry", "list", "-o", "xml"); !strings.Contains(out, `want text, json or yaml`) {
		t.Errorf("an unknown -o: %s", out)
	}
	// Repeated selectors: all must match.
	if out := signet(t, dir, "entry", "count", "--selector", "unix:uid:1000", "--selector", "unix:gid:10"); strings.TrimSpace(out) != "1" {
		t.Errorf("entry count with two selectors = %q, want 1", out)
	}
	if out := signetFails(t, dir, "entry", "list", "--spiffe-id", "not an id"); !strings.Contains(out, "--spiffe-id") {
		t.Errorf("an invalid --spiffe-id filter: %s", out)
	}

	// The list feeds create: into a second CA, server-assigned fields
	// ignored.
	other := t.TempDir()
	startCA(t, other)
	file := filepath.Join(t.TempDir(), "entries.json")
	os.WriteFile(file, []byte(out), 0o600)
	signet(t, other, "entry", "create", "--file", file)
	if n := strings.TrimSpace(signet(t, other, "entry", "count")); n != "2" {
		t.Errorf("entries created from entry list -o json: %s, want 2", n)
	}
	// So does the policy list.
	pol := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(pol, []byte(`{"name": "a", "target": "spiffe://example.org/w/a", "rules": [{"action": "allow", "peers": [{"id": "spiffe://example.org/w/b"}]}]}`), 0o600)
	signet(t, dir, "policy", "create", "--file", pol)
	os.WriteFile(pol, []byte(signet(t, dir, "policy", "list", "-o", "json")), 0o600)
	signet(t, other, "policy", "create", "--file", pol)
	if !strings.Contains(signet(t, other, "policy", "list"), "spiffe://example.org/w/a") {
		t.Error("the policy list did not create the policy")
	}
	os.WriteFile(pol, []byte(`{"name": "x", "target": "spiffe://other.org/w", "rules": [{"action": "allow", "peers": [{"id": "spiffe://example.org/w/b"}]}]}`), 0o600)
	if out := signetFails(t, dir, "policy", "create", "--file", pol); !strings.Contains(out, "trust domain other.org") {
		t.Errorf("a policy for another trust domain: %s", out)
	}

	// Errors: the flag typed, or the line and column of the file.
	if out := signetFails(t, dir, "entry", "create", "--spiffe-id", "spiffe://example.org/w/c", "--parent-id", "nope", "--selector", "unix:uid:1"); !strings.Contains(out, "--parent-id") || strings.Contains(out, "entries[0]") {
		t.Errorf("a bad --parent-id: %s", out)
	}
	os.WriteFile(file, []byte("{\"entries\": [\n  {\"spiffe_id\": \"spiffe://example.org/w/d\",\n   \"selectors\": \"unix:uid:1\"}\n]}\n"), 0o600)
	if out := signetFails(t, dir, "entry", "create", "--file", file); !strings.Contains(out, file+":3:") {
		t.Errorf("an entry file of the wrong shape: %s", out)
	}

	// show, update, agent show.
	id := listed.Entries[1]["id"].(string)
	signet(t, dir, "entry", "update", "--id", id, "--x509-ttl", "2h")
	if out := signet(t, dir, "entry", "show", id, "-o", "json"); !strings.Contains(out, `"x509_ttl": "2h"`) || !strings.Contains(out, `"unix:uid:1000"`) {
		t.Errorf("entry update --x509-ttl kept the other fields and changed that one? %s", out)
	}
	if out := signetFails(t, dir, "agent", "show", "spiffe://example.org/signet/agent/join/none"); !strings.Contains(out, "no agent") {
		t.Errorf("agent show of an unknown agent: %s", out)
	}

	// Join tokens: listed by id and node (never the token), revoked, and
	// the revocation audited.
	var tok struct{ Token string }
	json.Unmarshal([]byte(signet(t, dir, "token", "create", "--node", "n7", "-o", "json")), &tok)
	signet(t, dir, "token", "create", "--node", "n8")
	list := signet(t, dir, "token", "list", "-o", "json")
	if strings.Contains(list, tok.Token) || !strings.Contains(list, `"node_name": "n7"`) || !strings.Contains(list, `"node_name": "n8"`) {
		t.Fatalf("token list:\n%s", list)
	}
	signet(t, dir, "token", "revoke", "--node", "n7")
	if out := signet(t, dir, "token", "list"); strings.Contains(out, "n7") || !strings.Contains(out, "n8") {
		t.Errorf("token list after revoking n7's:\n%s", out)
	}
	if out := signetFails(t, dir, "token", "revoke", "--node", "n7"); !strings.Contains(out, "NotFound") {
		t.Errorf("revoking again: %s", out)
	}
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	if !strings.Contains(string(audit), `"event":"token.revoke"`) {
		t.Error("the revocation is not audited")
	}
}

// TestCLIAdminOverMTLS: with --admin-address the CLI reaches the admin
// API over mTLS with its own X509-SVID from the Workload API; an ID the
// CA does not list among its admins is refused.
func TestCLIAdminOverMTLS(t *testing.T) {
	dir := t.TempDir()
	caAddr, adminAddr := systest.FreeAddr(t), systest.FreeAddr(t)
	startCAWith(t, dir, nil, "--listen", caAddr, "--admin-listen", adminAddr, "--admin-id", "spiffe://example.org/ops/cli")
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	os.WriteFile(bundle, []byte(signet(t, dir, "bundle", "show")), 0o600)
	var tok struct{ Token string }
	json.Unmarshal([]byte(signet(t, dir, "token", "create", "--node", "n1", "-o", "json")), &tok)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command(filepath.Join(binDir, "signet-agent"), "--ca-address", caAddr, "--join-token", tok.Token, "--trust-bundle", bundle,
		"--data-dir", t.TempDir(), "--socket", sock, "--health-addr", "")
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	cli := filepath.Join(binDir, "signet")
	signet(t, dir, "entry", "create", "--parent-id", "spiffe://example.org/signet/agent/join/n1", "--spiffe-id", "spiffe://example.org/ops/cli",
		"--selector", uid, "--selector", "unix:path:"+cli)
	run := func(bin string) (string, error) {
		cmd := exec.Command(bin, "--admin-address", adminAddr, "agent", "list")
		cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=unix://"+sock, "SIGNET_ADMIN_SOCKET=")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var out string
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if out, err = run(cli); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || !strings.Contains(out, "spiffe://example.org/signet/agent/join/n1") {
		t.Fatalf("signet --admin-address agent list: %v\n%s", err, out)
	}
	// The same binary under another path has another identity, which the
	// CA does not take as an admin.
	other := filepath.Join(t.TempDir(), "signet")
	raw, _ := os.ReadFile(cli)
	os.WriteFile(other, raw, 0o755)
	signet(t, dir, "entry", "create", "--parent-id", "spiffe://example.org/signet/agent/join/n1", "--spiffe-id", "spiffe://example.org/ops/intruder",
		"--selector", uid, "--selector", "unix:path:"+other)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, err = run(other)
		if strings.Contains(out, "PermissionDenied") || time.Now().After(deadline) {
			break
		}
	}
	if err == nil || !strings.Contains(out, "PermissionDenied") {
		t.Fatalf("a non-admin over mTLS: %v\n%s", err, out)
	}
}

// TestRevokedTokenDoesNotAttest: a join token revoked with the CLI is
// refused when an agent presents it, as an unknown token.
func TestRevokedTokenDoesNotAttest(t *testing.T) {
	dir := t.TempDir()
	caAddr := systest.FreeAddr(t)
	startCAWith(t, dir, nil, "--listen", caAddr)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	os.WriteFile(bundle, []byte(signet(t, dir, "bundle", "show")), 0o600)
	var tok struct{ Token string }
	json.Unmarshal([]byte(signet(t, dir, "token", "create", "--node", "revoked", "-o", "json")), &tok)
	signet(t, dir, "token", "revoke", "--node", "revoked")
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(tok.Token), 0o600)
	cmd := exec.Command(filepath.Join(binDir, "signet-agent"), "--ca-address", caAddr, "--join-token-file", tokenFile,
		"--trust-bundle", bundle, "--data-dir", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "a.sock"), "--health-addr", "")
	out, err := runBounded(t, cmd, "an agent with a revoked token")
	if err == nil || !strings.Contains(string(out), "unknown join token") {
		t.Fatalf("agent with a revoked token: %v\n%s", err, out)
	}
}

// TestLiveSocketIsNotTakenOver: a CA told to put its admin socket where
// another process serves one refuses to start, and leaves that socket to
// its owner.
func TestLiveSocketIsNotTakenOver(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "taken.sock")
	l, err := net.Listen("unix", sock)
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
			c.Close()
		}
	}()
	cmd := exec.Command(filepath.Join(binDir, "signet-ca"), "--trust-domain", "example.org", "--data-dir", t.TempDir(),
		"--admin-socket", sock, "--listen", systest.FreeAddr(t), "--health-addr", "")
	out, err := runBounded(t, cmd, "a CA on a taken socket")
	if err == nil || !strings.Contains(string(out), "another process serves "+sock) {
		t.Fatalf("signet-ca on a live socket: %v\n%s", err, out)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the first owner's socket is gone: %v", err)
	}
	c.Close()
}
