package attest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strconv"
	"testing"

	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
)

func TestUnixAttestsThisProcess(t *testing.T) {
	u := &Unix{}
	c := peercred.Creds{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	sels, err := u.Attest(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	raw, _ := os.ReadFile(exe)
	sum := sha256.Sum256(raw)
	want := []selector.Selector{
		{Type: "unix", Value: "uid:" + strconv.Itoa(os.Getuid())},
		{Type: "unix", Value: "path:" + exe},
		{Type: "unix", Value: "sha256:" + hex.EncodeToString(sum[:])},
	}
	if !selector.SubsetOf(want, sels) {
		t.Fatalf("Attest = %v; want at least %v", sels, want)
	}
	for _, s := range sels {
		if err := s.Validate(); err != nil {
			t.Errorf("attestor produced an invalid selector: %v", err)
		}
	}
	// Without hashing, no sha256 selector.
	u2 := &Unix{HashBinaries: func() bool { return false }}
	sels, _ = u2.Attest(context.Background(), c)
	for _, s := range sels {
		if s.Key() == "sha256" {
			t.Fatal("hashed although HashBinaries says no")
		}
	}
}

func TestUnixGoneProcess(t *testing.T) {
	u := &Unix{}
	if _, err := u.Attest(context.Background(), peercred.Creds{PID: 1 << 30}); err == nil {
		t.Fatal("attested a process that does not exist")
	}
}
