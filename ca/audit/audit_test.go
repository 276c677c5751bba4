package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriteOneLinePerRecord(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	l.now = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }
	err := l.Write(
		Record{Event: X509Issue, Actor: "spiffe://td/signet/agent/join/n", SPIFFEID: "spiffe://td/w", EntryID: "e1", Serial: "0a", Result: Success},
		Record{Event: RequestRefuse, Actor: "admin:uid=1000", Result: Refused, Reason: "not allowed"},
	)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("wrote %d lines; want 2:\n%s", len(lines), buf.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"time": "2026-01-02T03:04:05Z", "event": "svid.x509.issue", "actor": "spiffe://td/signet/agent/join/n",
		"spiffe_id": "spiffe://td/w", "entry_id": "e1", "serial": "0a", "result": "success"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("field %q = %q; want %q", k, got[k], v)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteReportsFailure(t *testing.T) {
	if err := New(failingWriter{}).Write(Record{Event: NodeAttest}); err == nil {
		t.Fatal("Write to a failing writer succeeded")
	}
}

func TestOpenAppends(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.log")
	for i := 0; i < 2; i++ {
		l, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Write(Record{Event: EntryCreate, Actor: "a", Result: Success}); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	raw, _ := os.ReadFile(p)
	if n := strings.Count(string(raw), "\n"); n != 2 {
		t.Fatalf("%d lines after two opens; want 2 (append, not truncate)", n)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v; want 0600", fi.Mode().Perm())
	}
}
