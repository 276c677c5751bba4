package workloadapi

import (
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimitListener: one caller holds at most PerCaller connections; a
// closed one gives its place back; exempt callers count toward the total
// only; refusals are reported.
func TestLimitListener(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	inner, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var key atomic.Value
	key.Store("uid:1000")
	var refused atomic.Int32
	l := LimitListener(inner, Limits{PerCaller: 3, Total: 5, Rate: 1e9}, func(net.Conn) (string, error) { return key.Load().(string), nil },
		func(string) { refused.Add(1) })
	defer l.Close()
	accepted := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	waitRefused := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for refused.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("refused %d, want %d", refused.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	var held []net.Conn
	for i := 0; i < 5; i++ {
		dial()
	}
	for i := 0; i < 3; i++ {
		held = append(held, <-accepted)
	}
	waitRefused(2)
	// A place given back is taken again.
	held[0].Close()
	dial()
	<-accepted
	// Exempt callers: up to the total (5), whatever the per-caller limit.
	key.Store("")
	dial()
	dial()
	<-accepted
	<-accepted
	dial()
	waitRefused(3)
	select {
	case c := <-accepted:
		t.Fatalf("a connection beyond the total was accepted: %v", c.RemoteAddr())
	default:
	}
}

// TestLimitRate: a caller that closes its connections at once still
// opens no more than Rate a second beyond its burst.
func TestLimitRate(t *testing.T) {
	l := &limitListener{lim: Limits{PerCaller: 3, Total: 100, Rate: 0.001}.withDefaults(), callers: map[string]*callerState{}}
	for i := 0; i < 3; i++ {
		if r := l.admit("uid:1"); r != "" {
			t.Fatalf("connection %d refused: %s", i, r)
		}
		l.release("uid:1")
	}
	if r := l.admit("uid:1"); r != "per-caller rate" {
		t.Fatalf("fourth connection in a burst: %q, want the rate limit", r)
	}
	if r := l.admit("uid:2"); r != "" {
		t.Fatalf("another caller: %s", r)
	}
}
