package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/signet-id/signet/e2e/systest"
)

// TestDevRunsTheWholeSystem runs `signet dev` and the two example services
// as processes, as `make demo` does: the services get identities selected
// by their binaries' paths and greet each other over mTLS.
func TestDevRunsTheWholeSystem(t *testing.T) {
	dir := t.TempDir()
	dev := exec.Command(filepath.Join(binDir, "signet"), "dev", "--data-dir", dir)
	out, err := dev.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		dev.Process.Signal(syscall.SIGINT)
		dev.Wait()
	}()
	var socketLine, parent, selectors string
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(60 * time.Second)
	for banner := false; !banner; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("signet dev exited")
			}
			if strings.Contains(l, "SPIFFE_ENDPOINT_SOCKET=") {
				socketLine = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "export "))
			}
			if i := strings.Index(l, "--parent-id "); i >= 0 {
				parent = strings.Fields(l[i+len("--parent-id "):])[0]
			}
			if strings.Contains(l, "--selector") {
				selectors += l
			}
			banner = strings.Contains(l, "Press Ctrl-C")
		case <-timeout:
			t.Fatal("signet dev printed no banner within 60s")
		}
	}
	go func() {
		for range lines {
		}
	}()
	if parent != "spiffe://example.org/signet/agent/join/dev" {
		t.Fatalf("parent id %q", parent)
	}
	// The suggested entry selects one program, not every process of a
	// user (unix:uid:0 alone matched every root process).
	if !strings.Contains(selectors, "--selector unix:path:") {
		t.Fatalf("signet dev suggests selectors %q, without unix:path", selectors)
	}
	want := "SPIFFE_ENDPOINT_SOCKET=unix://" + filepath.Join(dir, "agent.sock")
	if socketLine != want {
		t.Fatalf("printed %q; want %q", socketLine, want)
	}
	env := append(os.Environ(), socketLine, "SIGNET_ADMIN_SOCKET="+filepath.Join(dir, "admin.sock"))
	cli := func(args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "signet"), args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("signet %v: %v\n%s", args, err, out)
		}
	}
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	cli("entry", "create", "--parent-id", parent, "--spiffe-id", "spiffe://example.org/demo/greeter-server",
		"--selector", uid, "--selector", "unix:path:"+filepath.Join(binDir, "greeter-server"))
	cli("entry", "create", "--parent-id", parent, "--spiffe-id", "spiffe://example.org/demo/greeter-client",
		"--selector", uid, "--selector", "unix:path:"+filepath.Join(binDir, "greeter-client"))

	addr := systest.FreeAddr(t)
	srv := exec.Command(filepath.Join(binDir, "greeter-server"), "-addr", addr)
	srv.Env = env
	var srvLog strings.Builder
	srv.Stderr = &srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Signal(syscall.SIGTERM); srv.Wait() }()

	var clientOut []byte
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		c := exec.Command(filepath.Join(binDir, "greeter-client"), "-url", "https://"+addr+"/hello")
		c.Env = env
		if clientOut, err = c.CombinedOutput(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("greeter-client: %v\n%s\nserver:\n%s", err, clientOut, srvLog.String())
	}
	if !strings.Contains(string(clientOut), "hello spiffe://example.org/demo/greeter-client, from spiffe://example.org/demo/greeter-server") {
		t.Fatalf("client output:\n%s", clientOut)
	}

	// A client binary with no entry is refused by the agent.
	stranger := filepath.Join(t.TempDir(), "stranger")
	raw, _ := os.ReadFile(filepath.Join(binDir, "greeter-client"))
	os.WriteFile(stranger, raw, 0o755)
	c := exec.Command(stranger, "-url", "https://"+addr+"/hello", "-wait", "3s")
	c.Env = env
	if out, err := c.CombinedOutput(); err == nil {
		t.Fatalf("a binary without an entry got an identity:\n%s", out)
	}
}

// TestFetchAsAWorkload: `signet fetch` gets what the Workload API gives
// the signet binary itself, with an entry for it, and writes the files a
// workload would use.
func TestFetchAsAWorkload(t *testing.T) {
	dir := t.TempDir()
	dev := exec.Command(filepath.Join(binDir, "signet"), "dev", "--data-dir", dir)
	var devOut systest.Buffer
	dev.Stdout = &devOut
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { dev.Process.Signal(syscall.SIGINT); dev.Wait() }()
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(devOut.String(), "Press Ctrl-C"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("signet dev did not start:\n%s", devOut.String())
		}
	}
	signet(t, dir, "entry", "create", "--parent-id", "spiffe://example.org/signet/agent/join/dev", "--spiffe-id", "spiffe://example.org/ops/cli",
		"--selector", fmt.Sprintf("unix:uid:%d", os.Getuid()), "--selector", "unix:path:"+filepath.Join(binDir, "signet"))
	sock := "unix://" + filepath.Join(dir, "agent.sock")
	out := t.TempDir()
	var got string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		cmd := exec.Command(filepath.Join(binDir, "signet"), "fetch", "x509", "--socket", sock, "--write", out)
		b, err := cmd.CombinedOutput()
		if got = string(b); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("signet fetch x509: %v\n%s", err, got)
		}
	}
	if !strings.Contains(got, "spiffe://example.org/ops/cli") {
		t.Fatalf("fetch x509 printed:\n%s", got)
	}
	for _, f := range []string{"svid.0.pem", "svid.0.key", "bundle.0.pem"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	jwt := exec.Command(filepath.Join(binDir, "signet"), "fetch", "jwt", "--socket", sock, "--audience", "test", "-o", "json")
	if b, err := jwt.CombinedOutput(); err != nil || !strings.Contains(string(b), `"spiffe_id": "spiffe://example.org/ops/cli"`) {
		t.Errorf("fetch jwt: %v\n%s", err, b)
	}
	bundle := exec.Command(filepath.Join(binDir, "signet"), "fetch", "bundle", "--socket", sock)
	if b, err := bundle.CombinedOutput(); err != nil || !strings.Contains(string(b), "# example.org") {
		t.Errorf("fetch bundle: %v\n%s", err, b)
	}
}
