package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BenchmarkCreate5000EntriesCLI times `signet entry create --file` with
// 5,000 entries against a running signet-ca, the whole path a user takes:
// CLI start, JSON parse, one admin call, validation, one SQLite transaction,
// audit lines.
func BenchmarkCreate5000EntriesCLI(b *testing.B) {
	type e struct {
		SPIFFEID  string   `json:"spiffe_id"`
		ParentID  string   `json:"parent_id"`
		Selectors []string `json:"selectors"`
	}
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		startCA(b, dir)
		var f struct {
			Entries []e `json:"entries"`
		}
		for i := 0; i < 5000; i++ {
			f.Entries = append(f.Entries, e{fmt.Sprintf("spiffe://example.org/w/%d", i), "spiffe://example.org/signet/agent/join/node1", []string{fmt.Sprintf("unix:uid:%d", i)}})
		}
		raw, _ := json.Marshal(f)
		file := filepath.Join(dir, "entries.json")
		os.WriteFile(file, raw, 0o600)
		cmd := exec.Command(filepath.Join(binDir, "signet"), "--admin-socket", filepath.Join(dir, "admin.sock"), "entry", "create", "--file", file, "-o", "json")
		b.StartTimer()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
}
