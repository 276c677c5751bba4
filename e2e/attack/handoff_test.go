package attack

import (
	"bufio"
	"encoding/json"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// handoff runs the attacker's handoff as uid 65534 and returns what its
// reader got.
func handoff(t *testing.T, s *standalone, mode, program string) attackResult {
	t.Helper()
	cmd := attacker("handoff", mode, s.socket, program)
	cmd.SysProcAttr.Setpgid = true
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The connecting process may have become a long sleep: stop the group.
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatalf("the attacker printed nothing:\n%s", stderr.String())
		}
		var r attackResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("attacker output %q: %v", line, err)
		}
		return r
	case <-time.After(45 * time.Second):
		t.Fatalf("the attacker did not finish:\n%s", stderr.String())
	}
	return attackResult{}
}

// TestConnectionHandoff: unix:path (and unix:sha256) name the binary of
// the process that the kernel says connected. A process connects, hands
// the connection to another, and execs a binary that an entry allows: the
// other process received that binary's SVID. And a stream, once open,
// kept delivering SVIDs to whoever held the connection after the process
// that opened it was gone.
func TestConnectionHandoff(t *testing.T) {
	s := startStandalone(t)
	sleep, err := filepath.EvalSymlinks("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	const byPath, byUID = "spiffe://example.org/attack/sleeper", "spiffe://example.org/attack/nobody"
	parent := "spiffe://example.org/signet/agent/join/attack-node"
	s.cli(t, "entry", "create", "--spiffe-id", byPath, "--parent-id", parent, "--selector", "unix:path:"+sleep)

	t.Run("exec", func(t *testing.T) {
		r := handoff(t, s, "exec", sleep)
		if r.SPIFFEID == byPath {
			t.Fatalf("the connection's new holder got %s, the identity of the program the connecting process became", r.SPIFFEID)
		}
		if !strings.Contains(r.Error, "PermissionDenied") {
			t.Fatalf("want a refusal, got %+v", r)
		}
	})
	s.cli(t, "entry", "create", "--spiffe-id", byUID, "--parent-id", parent, "--selector", "unix:uid:65534")
	t.Run("exit", func(t *testing.T) {
		r := handoff(t, s, "exit", sleep)
		if r.SPIFFEID != byUID {
			t.Fatalf("the stream's first answer: %+v", r)
		}
		if !strings.Contains(r.Error, "stream ended") {
			t.Fatalf("the stream outlived the process that opened it: %s", r.Error)
		}
	})
}
