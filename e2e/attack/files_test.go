package attack

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestDataFilesArePrivate: another user of the host reads the CA's
// private key from its database's WAL, or the agent's key, because the
// data directories existed with mode 0755 and the process ran under umask
// 022. Every file under them must be 0600 in a 0700 directory, tightened
// at start with a warning, and unreadable by uid 65534.
func TestDataFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	s := startStandalone(t)
	syscall.Umask(old)
	// The agent's own entry makes it mint, so that its files all exist.
	files := map[string][]string{
		s.caData:    {"signet.db", "signet.db-wal", "signet.db-shm", "audit.log"},
		s.agentData: {"agent-key.pem", "agent-svid.pem", "bundle.pem", "audit.log"},
	}
	for dir, names := range files {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %04o, want 0700", dir, fi.Mode().Perm())
		}
		for _, name := range names {
			p := filepath.Join(dir, name)
			fi, err := os.Stat(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %04o, want 0600", p, fi.Mode().Perm())
			}
			// What the attacker does: read it as another user.
			cat := exec.Command("cat", p)
			cat.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			if out, err := cat.CombinedOutput(); err == nil {
				t.Errorf("uid 65534 read %s (%d bytes)", p, len(out))
			}
		}
	}
	for _, log := range []string{s.caLog, s.agentLog} {
		if !strings.Contains(readFile(log), "tightened") {
			t.Errorf("%s does not say that the data directory was tightened:\n%s", log, readFile(log))
		}
	}
}
