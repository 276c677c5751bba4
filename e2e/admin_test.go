package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestAdminRefusesAnotherUser runs the CLI as another user (uid 65534)
// against the admin socket: the socket's mode keeps it out, and with the
// mode loosened on purpose, the CA's own uid check still refuses it.
func TestAdminRefusesAnotherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs a process as another user and needs root (make test runs as root in CI)")
	}
	dir := t.TempDir()
	startCA(t, dir)
	sock := filepath.Join(dir, "admin.sock")
	asNobody := func() (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "signet"), "--admin-socket", sock, "token", "create", "--node", "intruder")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := asNobody(); err == nil {
		t.Fatalf("uid 65534 created a join token through a 0600 socket:\n%s", out)
	}
	// Loosen the file modes: now only the CA's uid check stands in the way.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err := asNobody()
	if err == nil || !strings.Contains(out, "uid 65534 may not use the admin API") {
		t.Fatalf("uid 65534 through an open socket: %v\n%s", err, out)
	}
	if strings.Contains(signet(t, dir, "agent", "list", "-o", "json"), "intruder") {
		t.Fatal("the intruder's request left a trace in the agents")
	}
}
