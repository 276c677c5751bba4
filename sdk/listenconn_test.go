package sdk

import (
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/signet-id/signet/sdk/authz"
)

// TestMeteredConnMinutes: a listener's connection counts one call per
// minute in which it read or wrote, with that minute's bytes; a minute is
// counted when the next begins, when it has passed with no read or write,
// or at close; nothing counts before the peer is verified, nor for a
// connection whose peer never is.
func TestMeteredConnMinutes(t *testing.T) {
	peer := "spiffe://example.org/ns/db/sa/client"
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	clock := t0
	src := &Source{}
	conn := func() (*meteredConn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		go func() { // the peer: echoes what it reads
			buf := make([]byte, 1024)
			for {
				n, err := b.Read(buf)
				if err != nil {
					return
				}
				if _, err := b.Write(buf[:n]); err != nil {
					return
				}
			}
		}()
		return &meteredConn{Conn: a, src: src, now: func() time.Time { return clock }}, b
	}
	roundTrip := func(c *meteredConn, n int) {
		t.Helper()
		if _, err := c.Write(make([]byte, n)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, n)
		for got := 0; got < n; {
			m, err := c.Read(buf[got:])
			if err != nil {
				t.Fatal(err)
			}
			got += m
		}
	}
	counted := func() map[trafficKey]Traffic {
		counts, _ := src.traffic.take()
		out := map[trafficKey]Traffic{}
		for k, v := range counts {
			out[k] = *v
		}
		return out
	}
	minute := func(i int64) trafficKey {
		return trafficKey{peer: peer, method: authz.ConnectionMethod, minute: t0.Unix() + 60*i}
	}

	c, _ := conn()
	roundTrip(c, 100) // the handshake, before the peer is verified
	c.verified(peer)
	roundTrip(c, 10)
	clock = t0.Add(30 * time.Second)
	roundTrip(c, 10)
	if got := counted(); len(got) != 0 {
		t.Fatalf("counted within the minute: %v", got)
	}
	clock = t0.Add(70 * time.Second) // the next minute begins
	roundTrip(c, 5)
	want := map[trafficKey]Traffic{minute(0): {Calls: 1, BytesIn: 120, BytesOut: 120}}
	if got := counted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the first minute: %v, want %v", got, want)
	}
	clock = t0.Add(3 * time.Minute) // rest: the timer counts minute 1
	c.flushIfPast()
	want = map[trafficKey]Traffic{minute(1): {Calls: 1, BytesIn: 5, BytesOut: 5}}
	if got := counted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a rest: %v, want %v", got, want)
	}
	roundTrip(c, 7)
	c.Close()
	want = map[trafficKey]Traffic{minute(3): {Calls: 1, BytesIn: 7, BytesOut: 7}}
	if got := counted(); !reflect.DeepEqual(got, want) {
		t.Fatalf("at close: %v, want %v", got, want)
	}

	refused, _ := conn()
	roundTrip(refused, 100)
	refused.Close()
	if got := counted(); len(got) != 0 {
		t.Fatalf("a connection whose peer was never verified counted: %v", got)
	}
}
