package peercred

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseStartTime(t *testing.T) {
	line := "1234 (a) b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
	got, err := parseStartTime(line)
	if err != nil || got != 987654 {
		t.Fatalf("parseStartTime = %d, %v; want 987654", got, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) " + strings.Repeat("1 ", 19) + "notanumber"} {
		if _, err := parseStartTime(bad); err == nil {
			t.Errorf("parseStartTime(%q) succeeded", bad)
		}
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add("1 (cmd) S " + strings.Repeat("0 ", 18) + "42 0 0")
	f.Add("1 ((() S")
	f.Fuzz(func(t *testing.T, s string) { parseStartTime(s) })
}

// TestCheckNoticesExit connects from a child process that then exits: the
// credentials taken at accept must stop checking out.
func TestCheckNoticesExit(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A real child that connects: the test binary's own helper mode.
	cmd := exec.Command(os.Args[0], "-test.run=TestHelperConnect")
	cmd.Env = append(os.Environ(), "PEERCRED_HELPER_SOCK="+sock)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	{
		c, err := read(conn, true)
		if err != nil {
			t.Fatal(err)
		}
		if int(c.PID) != cmd.Process.Pid {
			t.Fatalf("PID = %d; want %d", c.PID, cmd.Process.Pid)
		}
		if err := c.Check(); err != nil {
			t.Fatalf("Check while the caller lives: %v", err)
		}
		conn.Write([]byte("x")) // let the child exit
		cmd.Wait()
		if err := c.Check(); err == nil {
			t.Fatal("Check passed after the caller exited")
		}
	}
}

func TestHelperConnect(t *testing.T) {
	sock := os.Getenv("PEERCRED_HELPER_SOCK")
	if sock == "" {
		return // not a helper run
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		os.Exit(1)
	}
	buf := make([]byte, 1)
	c.Read(buf)
	if os.Getenv("PEERCRED_HELPER_EXEC") != "" {
		// Become another program, as an attacker who handed the
		// connection on would.
		syscall.Exec("/bin/sleep", []string{"sleep", "30"}, os.Environ())
	}
	os.Exit(0)
}

// TestWatchNoticesExitAndExec: a stream's watcher ends when its caller
// exits, and when it executes another program; Check fails for the exec.
func TestWatchNoticesExitAndExec(t *testing.T) {
	for _, execs := range []bool{false, true} {
		sock := filepath.Join(t.TempDir(), "s.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		cmd := exec.Command(os.Args[0], "-test.run=TestHelperConnect")
		cmd.Env = append(os.Environ(), "PEERCRED_HELPER_SOCK="+sock)
		if execs {
			cmd.Env = append(cmd.Env, "PEERCRED_HELPER_EXEC=1")
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		conn, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c, err := read(conn, true)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { done <- c.Watch(ctx) }()
		conn.Write([]byte("x"))
		if !execs {
			cmd.Wait()
		}
		select {
		case err := <-done:
			want := ErrProcessGone
			if execs {
				want = ErrExecuted
			}
			if err != want {
				t.Fatalf("exec %t: Watch = %v, want %v", execs, err, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("exec %t: Watch did not notice", execs)
		}
		if execs {
			if err := c.Check(); err != ErrExecuted {
				t.Fatalf("Check after exec = %v", err)
			}
		}
		conn.Close()
	}
}
