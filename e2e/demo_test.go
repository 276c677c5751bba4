package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDemo runs `make demo` with the binaries built for these tests and
// checks what it shows: each example pair has one call allowed and one
// denied by the central policies, and the CA's audit log holds both
// decisions. Then it presses Ctrl-C, as a terminal does (SIGINT to the
// whole process group): the demo and everything it started must be gone
// within a few seconds.
func TestDemo(t *testing.T) {
	cmd := exec.Command("make", "-s", "-C", "..", "demo", "BIN="+binDir)
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
	pgid := cmd.Process.Pid
	stopped := false
	defer func() {
		if !stopped {
			syscall.Kill(-pgid, syscall.SIGKILL)
			cmd.Wait()
		}
	}()
	var mu sync.Mutex
	var lines []string
	got := make(chan bool, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		sc := bufio.NewScanner(out)
		sent := false
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			n := len(lines)
			mu.Unlock()
			if !sent && strings.Contains(sc.Text(), "Press Ctrl-C to stop.") && n > 20 {
				got <- true
				sent = true
			}
		}
		if !sent {
			got <- false
		}
	}()
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(lines, "\n")
	}
	select {
	case ok := <-got:
		if !ok {
			t.Fatalf("the demo ended early:\n%s", output())
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("the demo did not finish its calls in time:\n%s", output())
	}
	text := output()
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
	if strings.Count(text, "Press Ctrl-C to stop.") != 1 {
		t.Errorf("the demo says %d times how to stop it", strings.Count(text, "Press Ctrl-C to stop."))
	}
	if !strings.Contains(text, "$ "+binDir+"/signet entry create") {
		t.Errorf("the demo does not show its entry create commands")
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}

	// Ctrl-C.
	if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { <-ended; waited <- cmd.Wait() }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatalf("make demo still runs 10 s after Ctrl-C:\n%s", output())
	}
	stopped = true
	if !strings.Contains(output(), "demo stopped.") {
		t.Errorf("the demo did not say it stopped:\n%s", output())
	}
	// Nothing it started is left: the process group is empty (orphans
	// keep their group).
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			ps, _ := exec.Command("ps", "-o", "pid,ppid,stat,args", "-g", fmt.Sprint(pgid)).CombinedOutput()
			syscall.Kill(-pgid, syscall.SIGKILL)
			t.Fatalf("processes of the demo outlived it:\n%s", ps)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
