package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrepareTightens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	key := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(key, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(key, 0o644)
	changed, err := Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 2 || !strings.Contains(changed[0], "was 0755") || !strings.Contains(changed[1], "was 0644") {
		t.Fatalf("changed %v", changed)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, key: 0o600} {
		if fi, _ := os.Stat(p); fi.Mode().Perm() != want {
			t.Errorf("%s: %04o, want %04o", p, fi.Mode().Perm(), want)
		}
	}
	if changed, err := Prepare(dir); err != nil || len(changed) != 0 {
		t.Fatalf("second Prepare: %v %v", changed, err)
	}
	// A missing directory is made private.
	fresh := filepath.Join(dir, "a", "b")
	if _, err := Prepare(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Errorf("new directory %04o", fi.Mode().Perm())
	}
}

func TestPrepareRefusesAnotherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (to give a directory away)")
	}
	dir := filepath.Join(t.TempDir(), "theirs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Prepare(dir); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("another user's directory: %v", err)
	}
}

func TestCreatePrivate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "db")
	if err := CreatePrivate(p); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("%04o", fi.Mode().Perm())
	}
}

// TestLock: a data directory is held by one owner at a time; the second
// is told the first's PID; once released, it may be taken again.
func TestLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Lock(dir)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("process %d", os.Getpid())) {
		t.Fatalf("second Lock: %v; want ErrInUse naming process %d", err, os.Getpid())
	}
	unlock()
	unlock2, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()
}
