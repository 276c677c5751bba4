package workloadapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"sync"
	"testing"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestAuditorWritesEveryRecordAndCountsDrops(t *testing.T) {
	var out lockedBuffer
	a := NewAuditor(&out, 4096)
	for i := 0; i < 1000; i++ {
		a.Log(Record{Event: "workload.fetch_x509_svid", PID: int32(i), Result: "success"})
	}
	a.Close()
	n := 0
	sc := bufio.NewScanner(&out.b)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		if r.PID != int32(n) {
			t.Fatalf("line %d has pid %d", n, r.PID)
		}
		n++
	}
	if n != 1000 || a.Dropped() != 0 {
		t.Fatalf("%d lines, %d dropped; want 1000 and 0", n, a.Dropped())
	}

	// A writer that blocks fills the buffer: Log never blocks, drops count.
	block := make(chan struct{})
	b := NewAuditor(blockingWriter(block), 2)
	for i := 0; i < 10; i++ {
		b.Log(Record{Event: "x"})
	}
	if b.Dropped() == 0 {
		t.Fatal("no drops with a stuck writer and a buffer of 2")
	}
	close(block)
	b.Close()
}

type blockingWriter chan struct{}

func (w blockingWriter) Write(p []byte) (int, error) {
	<-w
	return len(p), nil
}

// TestAuditorLogAfterClose: a record logged after Close (a handler still
// answering while the agent stops) is dropped and counted, never a panic.
func TestAuditorLogAfterClose(t *testing.T) {
	var out lockedBuffer
	a := NewAuditor(&out, 16)
	a.Close()
	a.Log(Record{Event: "workload.fetch_x509_svid", Result: "success"})
	a.Close()
	if a.Dropped() != 1 {
		t.Fatalf("dropped %d, want 1", a.Dropped())
	}
}
