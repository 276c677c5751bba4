package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/testenv"
)

// TestCAWithKMS runs signet-ca --kms against local-kms (an AWS KMS
// emulator): the database keeps no private key, and a restart opens the
// same keys from the KMS, so the trust bundle stays the same.
func TestCAWithKMS(t *testing.T) {
	k, err := testenv.StartKMS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	dir := t.TempDir()
	run := func() (bundle string) {
		cmd := startCAWith(t, dir, k.Env(), "--kms", testenv.KMSURI)
		bundle = signet(t, dir, "bundle", "show")
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		return bundle
	}
	first := run()
	if !strings.Contains(first, "BEGIN CERTIFICATE") {
		t.Fatalf("bundle show printed %q", first)
	}
	if again := run(); again != first {
		t.Fatal("the trust bundle changed across a restart with --kms")
	}
	s, err := store.Open(context.Background(), filepath.Join(dir, "signet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	keys, _, err := s.LoadCAKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 3 {
		t.Fatalf("%d keys stored", len(keys))
	}
	for _, key := range keys {
		if len(key.KeyPEM) != 0 || !strings.HasPrefix(key.KeyURI, "awskms:key-id=") {
			t.Errorf("%s key: %d bytes of PEM in the database, name %q", key.Kind, len(key.KeyPEM), key.KeyURI)
		}
	}
}
