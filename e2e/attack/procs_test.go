package attack

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/signet-id/signet/e2e/nodeenv"
	"github.com/signet-id/signet/e2e/testenv"
)

// standalone is signet-ca on its SQLite store and a signet-agent attested
// with a join token, as processes outside Kubernetes, under a directory
// that every user may enter, as /var/lib is.
type standalone struct {
	dir, caData, agentData, socket, adminSocket string
	caAddr, caHealth, agentHealth               string
	caLog, agentLog                             string
	ca, agent                                   *exec.Cmd
}

func startStandalone(t testing.TB, agentArgs ...string) *standalone {
	t.Helper()
	dir, err := os.MkdirTemp("", "signet-attack-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &standalone{dir: dir, caData: filepath.Join(dir, "ca"), agentData: filepath.Join(dir, "agent"), socket: filepath.Join(dir, "sock", "agent.sock")}
	s.adminSocket = filepath.Join(s.caData, "admin.sock")
	// Data directories made by a careless installer: open to everyone.
	for _, d := range []string{dir, s.caData, s.agentData} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s.caAddr = testenv.FreeAddr()
	s.caHealth = testenv.FreeAddr()
	s.ca = exec.Command(filepath.Join(env.Bin, "signet-ca"), "--trust-domain", "example.org", "--data-dir", s.caData,
		"--listen", s.caAddr, "--health-addr", s.caHealth)
	s.caLog = filepath.Join(dir, "ca.log")
	if err := nodeenv.StartLogged(s.ca, s.caLog); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.ca.Process.Kill(); s.ca.Wait() })
	if err := nodeenv.WaitReady("http://"+s.caHealth+"/readyz", s.ca); err != nil {
		t.Fatalf("signet-ca: %v\n%s", err, readFile(s.caLog))
	}
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, []byte(s.cli(t, "bundle", "show")), 0o644); err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(s.cli(t, "token", "create", "--node", "attack-node", "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	s.agentHealth = testenv.FreeAddr()
	s.agent = exec.Command(filepath.Join(env.Bin, "signet-agent"), append([]string{"--trust-domain", "example.org", "--ca-address", s.caAddr,
		"--data-dir", s.agentData, "--trust-bundle", bundle, "--socket", s.socket, "--health-addr", s.agentHealth,
		"--join-token-file", tokenFile}, agentArgs...)...)
	s.agentLog = filepath.Join(dir, "agent.log")
	if err := nodeenv.StartLogged(s.agent, s.agentLog); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.agent.Process.Kill(); s.agent.Wait() })
	if err := nodeenv.WaitReady("http://"+s.agentHealth+"/readyz", s.agent); err != nil {
		t.Fatalf("signet-agent: %v\n%s", err, readFile(s.agentLog))
	}
	return s
}

// cli runs the signet CLI against the CA's admin socket.
func (s *standalone) cli(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(env.Bin, "signet"), append([]string{"--admin-socket", s.adminSocket}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("signet %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
