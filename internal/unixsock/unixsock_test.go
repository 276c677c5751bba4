package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s", "a.sock")
	l, err := Listen(path, 0o700, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// A live socket is not taken over.
	if _, err := Listen(path, 0o700, 0o600); err == nil || !strings.Contains(err.Error(), "another process serves") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	// One left behind by a process that is gone is replaced.
	l2, err := Listen(path, 0o700, 0o600)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()
	// Another file is never removed.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Listen(file, 0o700, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen on a file: %v", err)
	}
	// A path too long for a Unix socket says so, with the limit.
	long := filepath.Join(dir, strings.Repeat("d", 120), "a.sock")
	if _, err := Listen(long, 0o700, 0o600); err == nil || !strings.Contains(err.Error(), "at most 107") {
		t.Fatalf("Listen on a long path: %v", err)
	}
}
