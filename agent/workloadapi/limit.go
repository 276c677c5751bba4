package workloadapi

import (
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits bound what one caller, and all callers together, may hold of the
// Workload API. The socket is open to every local process, so without
// them one unprivileged user could hold enough idle connections to starve
// every workload of its SVID, or push the agent past its memory limit.
type Limits struct {
	// PerCaller is how many connections one caller (a uid; in Kubernetes
	// mode, a pod) may hold open. If zero, 32.
	PerCaller int
	// Total is how many connections all callers may hold. If zero, 4096.
	Total int
	// Rate is how many new connections per second one caller may open,
	// with bursts of PerCaller. If zero, 20.
	Rate float64
	// StreamsPerConn is how many RPCs may run at once on one connection.
	// If zero, 16.
	StreamsPerConn uint32
	// Idle closes a connection with no RPC for this long. If zero, one
	// minute. Clients of the SPIFFE Workload API reconnect by themselves.
	Idle time.Duration
	// Handshake is how long a new connection may take to start HTTP/2. If
	// zero, five seconds.
	Handshake time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.PerCaller == 0 {
		l.PerCaller = 32
	}
	if l.Total == 0 {
		l.Total = 4096
	}
	if l.Rate == 0 {
		l.Rate = 20
	}
	if l.StreamsPerConn == 0 {
		l.StreamsPerConn = 16
	}
	if l.Idle == 0 {
		l.Idle = time.Minute
	}
	if l.Handshake == 0 {
		l.Handshake = 5 * time.Second
	}
	return l
}

// ServerOptions are the gRPC server's share of the limits: streams per
// connection, the idle timeout, the handshake timeout.
func (l Limits) ServerOptions() []grpc.ServerOption {
	l = l.withDefaults()
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(l.StreamsPerConn),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.Idle}),
		grpc.ConnectionTimeout(l.Handshake),
	}
}

// CallerKey names the caller of a new connection for the limits, such as
// "uid:1000" or "pod:<uid>"; "" exempts it from the per-caller limits
// (root's processes on the host, which could stop the agent anyway).
type CallerKey func(net.Conn) (string, error)

// LimitListener closes, as soon as they are accepted, the connections of a
// caller that holds PerCaller already or opens them faster than Rate, and
// any beyond Total; refused is told why (a metric).
func LimitListener(inner net.Listener, lim Limits, key CallerKey, refused func(reason string)) net.Listener {
	return &limitListener{Listener: inner, lim: lim.withDefaults(), key: key, refused: refused, callers: map[string]*callerState{}}
}

type limitListener struct {
	net.Listener
	lim     Limits
	key     CallerKey
	refused func(string)

	mu      sync.Mutex
	total   int
	callers map[string]*callerState
}

type callerState struct {
	open   int
	tokens float64
	at     time.Time
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		k, err := l.key(c)
		if err != nil {
			l.refuse(c, "unidentified")
			continue
		}
		if reason := l.admit(k); reason != "" {
			l.refuse(c, reason)
			continue
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			l.release(k)
			l.refuse(c, "not a unix socket")
			continue
		}
		return &limitedConn{UnixConn: uc, release: func() { l.release(k) }}, nil
	}
}

func (l *limitListener) refuse(c net.Conn, reason string) {
	c.Close()
	if l.refused != nil {
		l.refused(reason)
	}
}

// admit counts a new connection of caller k, or says why it may not have
// one.
func (l *limitListener) admit(k string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k == "" {
		if l.total >= l.lim.Total {
			return "total connections"
		}
		l.total++
		return ""
	}
	now := time.Now()
	st := l.callers[k]
	if st == nil {
		if len(l.callers) > 4*l.lim.Total {
			for key, s := range l.callers {
				if s.open == 0 {
					delete(l.callers, key)
				}
			}
		}
		st = &callerState{tokens: float64(l.lim.PerCaller), at: now}
		l.callers[k] = st
	}
	st.tokens = min(float64(l.lim.PerCaller), st.tokens+now.Sub(st.at).Seconds()*l.lim.Rate)
	st.at = now
	switch {
	case st.open >= l.lim.PerCaller:
		return "per-caller connections"
	case st.tokens < 1:
		return "per-caller rate"
	case l.total >= l.lim.Total:
		return "total connections"
	}
	st.tokens--
	st.open++
	l.total++
	return ""
}

func (l *limitListener) release(k string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if k == "" {
		l.total--
		return
	}
	if st := l.callers[k]; st != nil && st.open > 0 {
		st.open--
		l.total--
	}
}

// limitedConn gives its caller's share back when closed. It keeps the
// Unix connection's methods (SyscallConn: peer credentials).
type limitedConn struct {
	*net.UnixConn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	c.once.Do(c.release)
	return c.UnixConn.Close()
}
