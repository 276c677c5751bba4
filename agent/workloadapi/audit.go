package workloadapi

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Record is one audited Workload API answer.
type Record struct {
	Time      time.Time `json:"time"`
	Event     string    `json:"event"`
	PID       int32     `json:"pid"`
	UID       uint32    `json:"uid"`
	Selectors []string  `json:"selectors,omitempty"`
	SPIFFEIDs []string  `json:"spiffe_ids,omitempty"`
	Result    string    `json:"result"`
	Reason    string    `json:"reason,omitempty"`
}

// Auditor writes records on its own goroutine, so that answering a workload
// never waits for the disk. When its buffer is full it drops records and
// counts them.
type Auditor struct {
	ch      chan Record
	w       io.Writer
	dropped atomic.Int64
	done    chan struct{}
	// mu guards closed: a record logged after Close (a handler that
	// outlives the server's stop) is dropped, not sent on a closed
	// channel.
	mu     sync.RWMutex
	closed bool
}

// NewAuditor starts an auditor writing JSON lines to w.
func NewAuditor(w io.Writer, buffer int) *Auditor {
	a := &Auditor{ch: make(chan Record, buffer), w: w, done: make(chan struct{})}
	go a.run()
	return a
}

func (a *Auditor) run() {
	defer close(a.done)
	// Records that queue up while one is written go out in one write; the
	// buffer is flushed whenever the queue is empty, so nothing waits.
	bw := bufio.NewWriterSize(a.w, 64<<10)
	enc := json.NewEncoder(bw)
	for r := range a.ch {
		enc.Encode(r)
		if len(a.ch) == 0 {
			bw.Flush()
		}
	}
	bw.Flush()
}

// Log queues r; it never blocks.
func (a *Auditor) Log(r Record) {
	if a == nil {
		return
	}
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		a.dropped.Add(1)
		return
	}
	select {
	case a.ch <- r:
	default:
		a.dropped.Add(1)
	}
}

// Dropped returns how many records a full buffer dropped.
func (a *Auditor) Dropped() int64 { return a.dropped.Load() }

// Close writes what is queued and stops.
func (a *Auditor) Close() {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.ch)
	}
	a.mu.Unlock()
	<-a.done
}
