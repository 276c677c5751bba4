package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs scripts/demo.sh (what `make demo` runs) with the binaries
// built for these tests and checks what it shows: each example pair has
// one call allowed and one denied by the central policies, and the CA's
// audit log holds both decisions.
func TestDemo(t *testing.T) {
	cmd := exec.Command("bash", "../scripts/demo.sh")
	cmd.Env = append(os.Environ(), "SIGNET_BIN="+binDir, "SIGNET_DEMO_DIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}()
	var lines []string
	got := make(chan bool)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if strings.Contains(sc.Text(), "Press Ctrl-C to stop.") && len(lines) > 20 {
				got <- true
				return
			}
		}
		got <- false
	}()
	select {
	case ok := <-got:
		if !ok {
			t.Fatalf("the demo ended early:\n%s", strings.Join(lines, "\n"))
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("the demo did not finish its calls in time:\n%s", strings.Join(lines, "\n"))
	}
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		"GET /items -> 200 OK",
		"DELETE /items -> 403 Forbidden",
		"Health/Check -> SERVING",
		"Health/List -> PermissionDenied",
		`"event":"authz.deny"`, `"method":"DELETE /items"`, `"method":"/grpc.health.v1.Health/List"`,
		`"event":"authz.allow"`, `"method":"GET /items","count":1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the demo did not show %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}
