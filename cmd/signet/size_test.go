package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// sizeBudget is the most the signet CLI may weigh as `make build` builds
// it (with debug information) on linux/amd64: 40.7 MB when set, after
// Kubernetes mode and the AWS KMS client left what `signet dev` links
// (it was 104 MB). Raise it only for a reason the commit gives.
const sizeBudget = 48 << 20

// TestBinarySize fails when the CLI outgrows its budget: a dependency that
// drags in Kubernetes clients or a cloud SDK shows here first.
func TestBinarySize(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "signet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > sizeBudget {
		t.Fatalf("the signet binary is %.1f MB, over its budget of %.1f MB", float64(fi.Size())/1e6, float64(sizeBudget)/1e6)
	}
	t.Logf("signet is %.1f MB (budget %.1f MB)", float64(fi.Size())/1e6, float64(sizeBudget)/1e6)
}
