package sdk

import (
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/signet-id/signet/sdk/authz"
)

// meteredConn is the network connection beneath a TLS connection of
// Listen, counting its traffic for the Source. A plain TLS connection
// carries no calls the SDK could see, so it is counted under
// authz.ConnectionMethod by the minute: one call for each minute in which
// it read or wrote, with the bytes of that minute on the wire (the
// handshake and TLS's framing included). Nothing counts unless the
// handshake verifies the peer. A minute is counted when the next begins
// or, if the connection then rests, a second after it ends, and when the
// connection closes.
type meteredConn struct {
	net.Conn
	src *Source
	now func() time.Time // time.Now but in tests

	mu      sync.Mutex
	peer    string // set by the handshake's verification
	minute  int64  // of the bytes held in in and out; 0: none held
	in, out int64
	flush   *time.Timer
	closed  bool
}

func (c *meteredConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.count(int64(n), 0)
	}
	return n, err
}

func (c *meteredConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.count(0, int64(n))
	}
	return n, err
}

// Close counts the minute held, then closes the connection.
func (c *meteredConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.flushLocked()
	if c.flush != nil {
		c.flush.Stop()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// verified names the peer, once the handshake has verified it.
func (c *meteredConn) verified(peer string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peer = peer
}

func (c *meteredConn) count(in, out int64) {
	now := c.now()
	minute := now.Unix() / 60 * 60
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if c.minute != minute {
		c.flushLocked()
		c.minute = minute
		// Count this minute soon after it ends, should no read or
		// write come to do it.
		wait := time.Unix(minute+60, 0).Sub(now) + time.Second
		if c.flush == nil {
			c.flush = time.AfterFunc(wait, c.flushIfPast)
		} else {
			c.flush.Reset(wait)
		}
	}
	c.in += in
	c.out += out
}

func (c *meteredConn) flushIfPast() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.minute != 0 && c.minute < c.now().Unix()/60*60 {
		c.flushLocked()
	}
}

// flushLocked counts the minute held, once the peer is known.
func (c *meteredConn) flushLocked() {
	if c.minute == 0 || c.peer == "" {
		return
	}
	c.src.traffic.add(c.peer, authz.ConnectionMethod, Traffic{Calls: 1, BytesIn: c.in, BytesOut: c.out}, c.minute)
	c.minute, c.in, c.out = 0, 0, 0
}

// meteredConfig returns base for each handshake on a meteredConn, with a
// verification that names the peer to it once base's has passed. Session
// tickets still come from base (crypto/tls takes automatic ticket keys
// from the listener's configuration).
func meteredConfig(base *tls.Config) *tls.Config {
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		mc, ok := hello.Conn.(*meteredConn)
		if !ok {
			return nil, nil
		}
		own := base.Clone()
		verify := base.VerifyConnection
		own.VerifyConnection = func(cs tls.ConnectionState) error {
			if verify != nil {
				if err := verify(cs); err != nil {
					return err
				}
			}
			if id, err := peerIDOfState(cs); err == nil {
				mc.verified(id.String())
			}
			return nil
		}
		return own, nil
	}
	return cfg
}
