package attack

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestJoinTokenOnCommandLine: a join token passed with --join-token is in
// /proc/<pid>/cmdline, which every user of the host reads (ps), until the
// agent has used it. The documented way is --join-token-file; the flag
// still works, with a warning that never repeats the token.
func TestJoinTokenOnCommandLine(t *testing.T) {
	const token = "attack-visible-token-0123456789"
	out, _ := exec.Command(filepath.Join(env.Bin, "signet-agent"), "--join-token", token, "--data-dir", t.TempDir(),
		"--ca-address", "127.0.0.1:1", "--socket", filepath.Join(t.TempDir(), "a.sock"), "--health-addr", "").CombinedOutput()
	if !strings.Contains(string(out), "--join-token shows in the process list") {
		t.Errorf("no warning for a token on the command line:\n%s", out)
	}
	if strings.Contains(string(out), token) {
		t.Errorf("the token is in the agent's output:\n%s", out)
	}
	for _, doc := range []string{"../../docs/run-the-agent.md", "../../README.md", "../../bench/run.sh"} {
		if strings.Contains(readFile(doc), "--join-token ") {
			t.Errorf("%s shows --join-token TOKEN; show --join-token-file", doc)
		}
	}
}
