package attack

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handoff runs the attacker's handoff as uid 65534 and returns what its
// reader got.
func handoff(t *testing.T, s *standalone, mode, program string) attackResult {
	t.Helper()
	line, stop := startAttacker(t, 45*time.Second, "handoff", mode, s.socket, program)
	defer stop()
	var r attackResult
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("attacker output %q: %v", line, err)
	}
	return r
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
