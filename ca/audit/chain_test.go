package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeLog writes n records to a log at path, over two opens (a restart
// in the middle), and returns its lines.
func writeLog(t *testing.T, path string, n int) []string {
	t.Helper()
	for half := range 2 {
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n / 2 {
			if err := l.Write(Record{Event: EntryCreate, Actor: "admin", EntryID: string(rune('a' + half*10 + i)), Result: Success}); err != nil {
				t.Fatal(err)
			}
		}
		l.Close()
	}
	raw, _ := os.ReadFile(path)
	return strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
}

func verifyLines(lines []string) (Verification, error) {
	return Verify(strings.NewReader(strings.Join(lines, "\n") + "\n"))
}

// TestChain: a log's lines chain across a restart; an edited record, a
// removed one, an inserted one and records swapped are each found at the
// line where the chain breaks; a rotated file (starting mid-chain) checks
// on its own and after the file before it.
func TestChain(t *testing.T) {
	lines := writeLog(t, filepath.Join(t.TempDir(), "audit.log"), 8)
	v, err := verifyLines(lines)
	if err != nil || v.Records != 8 || v.First != 1 || v.Last != 8 || !v.Start {
		t.Fatalf("intact log: %+v, %v", v, err)
	}
	edited := append([]string(nil), lines...)
	edited[3] = strings.Replace(edited[3], `"actor":"admin"`, `"actor":"mallory"`, 1)
	deleted := append(append([]string(nil), lines[:5]...), lines[6:]...)
	inserted := append(append(append([]string(nil), lines[:2]...), lines[6]), lines[2:]...)
	swapped := append([]string(nil), lines...)
	swapped[4], swapped[5] = swapped[5], swapped[4]
	truncatedHash := append([]string(nil), lines...)
	truncatedHash[1] = truncatedHash[1][:20]
	for name, c := range map[string]struct {
		lines []string
		line  int
		why   string
	}{
		"edited":   {edited, 4, "was changed"},
		"deleted":  {deleted, 6, "does not follow record 5"},
		"inserted": {inserted, 3, "does not follow record 2"},
		"swapped":  {swapped, 5, "does not follow record 4"},
		"garbled":  {truncatedHash, 2, "does not start with its hash"},
	} {
		_, err := verifyLines(c.lines)
		var b *Break
		if !errors.As(err, &b) || b.Line != c.line || !strings.Contains(b.Why, c.why) {
			t.Errorf("%s: %v, want a break at line %d: %s", name, err, c.line, c.why)
		}
	}
	// After a rotation the new file starts mid-chain.
	if v, err := verifyLines(lines[3:]); err != nil || v.Start || v.First != 4 {
		t.Errorf("a rotated file: %+v, %v", v, err)
	}
}

// TestLogsWithoutChainAreRefused: a line the CA did not write (no hash)
// is a break.
func TestLogsWithoutChainAreRefused(t *testing.T) {
	var b *Break
	if _, err := Verify(strings.NewReader(`{"time":"2026-01-01T00:00:00Z","event":"entry.create"}` + "\n")); !errors.As(err, &b) || b.Line != 1 {
		t.Fatalf("an unchained line: %v", err)
	}
}

// FuzzVerify: any input gives a result or a break, never a panic, and an
// input Verify accepts still verifies with one more line chained to it.
func FuzzVerify(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/verify/*")
	for _, p := range seeds {
		raw, _ := os.ReadFile(p)
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := Verify(bytes.NewReader(in))
		if err != nil || v.Records == 0 {
			return
		}
		line, _ := chainLine(v.LastHash, v.Last+1, []byte(`{"event":"x"}`))
		more := append(bytes.TrimRight(in, "\n"), '\n')
		more = append(append(more, line...), '\n')
		if v2, err := Verify(bytes.NewReader(more)); err != nil || v2.Records != v.Records+1 {
			t.Fatalf("one more chained line: %+v, %v", v2, err)
		}
	})
}
