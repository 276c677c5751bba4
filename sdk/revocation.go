package sdk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"time"
	"weak"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
	"github.com/signet-id/signet/sdk/revocation"
)

// ErrRevoked is the error of a handshake with a peer whose certificate
// chain a revocation covers.
var ErrRevoked = revocation.ErrRevoked

// checkRevoked checks a peer's chains against the revocations the source
// holds.
func (s *Source) checkRevoked(chains ...[]*x509.Certificate) error {
	set := s.revs.Load()
	for _, c := range chains {
		if err := set.Check(c); err != nil {
			return err
		}
	}
	return nil
}

// withRevocation makes an authorizer refuse revoked peers first: every
// certificate of the verified chain (the peer's intermediates and the
// root too) is checked.
func (s *Source) withRevocation(next tlsconfig.Authorizer) tlsconfig.Authorizer {
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		if err := s.checkRevoked(chains...); err != nil {
			return err
		}
		return next(id, chains)
	}
}

// verifyConnection runs on every handshake, resumed ones included, where
// crypto/tls does not call VerifyPeerCertificate (and so neither go-spiffe's
// chain check nor the authorizer): a session resumed from a ticket issued
// before a revocation must not outlive it.
func (s *Source) verifyConnection(authorize tlsconfig.Authorizer) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if err := s.checkRevoked(cs.PeerCertificates); err != nil {
			return err
		}
		if !cs.DidResume {
			return nil
		}
		id, err := peerIDOfState(cs)
		if err != nil {
			return err
		}
		return authorize(id, [][]*x509.Certificate{cs.PeerCertificates})
	}
}

// serverConfig and clientConfig are go-spiffe's mutual TLS configurations
// with revocation enforced on full and resumed handshakes.
func (s *Source) serverConfig(authorize tlsconfig.Authorizer) *tls.Config {
	authorize = s.withRevocation(authorize)
	cfg := tlsconfig.MTLSServerConfig(s, s, authorize)
	cfg.VerifyConnection = s.verifyConnection(authorize)
	return cfg
}

func (s *Source) clientConfig(authorize tlsconfig.Authorizer) *tls.Config {
	authorize = s.withRevocation(authorize)
	cfg := tlsconfig.MTLSClientConfig(s, s, authorize)
	cfg.VerifyConnection = s.verifyConnection(authorize)
	return cfg
}

// conns are the open connections of a Source's servers and clients, so
// that those whose peer becomes revoked are closed.
type conns struct {
	mu sync.Mutex
	// tls holds connections whose owner closes them (Listen, Dial, HTTP):
	// weakly, so that the set never keeps one alive.
	tls map[weak.Pointer[tls.Conn]]struct{}
	// added counts additions to tls, which drops the connections gone
	// every pruneEvery.
	added int
	// grpc holds gRPC's connections until they close.
	grpc map[*trackedConn]struct{}
}

// pruneEvery is how many connections are added between two sweeps of
// those that are gone.
const pruneEvery = 1024

func (c *conns) addTLS(tc *tls.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tls == nil {
		c.tls = map[weak.Pointer[tls.Conn]]struct{}{}
	}
	if c.added++; c.added%pruneEvery == 0 {
		for p := range c.tls {
			if p.Value() == nil {
				delete(c.tls, p)
			}
		}
	}
	c.tls[weak.Make(tc)] = struct{}{}
}

// closeRevoked closes the connections whose peer set covers, and returns
// how many.
func (c *conns) closeRevoked(set *revocation.Set) int {
	c.mu.Lock()
	var tlsConns []*tls.Conn
	for p := range c.tls {
		if tc := p.Value(); tc != nil {
			tlsConns = append(tlsConns, tc)
		} else {
			delete(c.tls, p)
		}
	}
	var grpcConns []*trackedConn
	for tc := range c.grpc {
		grpcConns = append(grpcConns, tc)
	}
	c.mu.Unlock()
	n := 0
	for _, tc := range tlsConns {
		// ConnectionState waits for a handshake under way; one not begun
		// has no peer yet, and its handshake will check.
		if st := tc.ConnectionState(); st.HandshakeComplete && set.Check(st.PeerCertificates) != nil {
			tc.Close()
			n++
		}
	}
	for _, tc := range grpcConns {
		if set.Check(tc.peer) != nil {
			tc.Close()
			n++
		}
	}
	return n
}

// trackedConn is a gRPC connection the Source closes if its peer becomes
// revoked.
type trackedConn struct {
	net.Conn
	peer  []*x509.Certificate
	conns *conns
	once  sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.conns.mu.Lock()
		delete(t.conns.grpc, t)
		t.conns.mu.Unlock()
	})
	return t.Conn.Close()
}

func (c *conns) track(conn net.Conn, info credentials.AuthInfo) net.Conn {
	ti, ok := info.(credentials.TLSInfo)
	if !ok {
		return conn
	}
	t := &trackedConn{Conn: conn, peer: ti.State.PeerCertificates, conns: c}
	c.mu.Lock()
	if c.grpc == nil {
		c.grpc = map[*trackedConn]struct{}{}
	}
	c.grpc[t] = struct{}{}
	c.mu.Unlock()
	return t
}

// transportCredentials are gRPC's TLS credentials on a Source's
// configuration, whose connections the Source tracks.
type transportCredentials struct {
	credentials.TransportCredentials
	src *Source
}

func (t transportCredentials) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := t.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	return t.src.conns.track(conn, info), info, nil
}

func (t transportCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := t.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return t.src.conns.track(conn, info), info, nil
}

func (t transportCredentials) Clone() credentials.TransportCredentials {
	return transportCredentials{TransportCredentials: t.TransportCredentials.Clone(), src: t.src}
}

// followRevocations keeps the source's revocations current from the
// agent's extension service until ctx ends, and closes the connections
// they cover as they arrive. An agent without the extension (another
// SPIFFE implementation) ends it: peers are then checked against nothing.
func (s *Source) followRevocations(ctx context.Context) {
	conn, err := grpc.NewClient(s.target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	client := workloadv1.NewRevocationsClient(conn)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		stream, err := client.Watch(ctx, &workloadv1.WatchRevocationsRequest{})
		for err == nil {
			var resp *workloadv1.WatchRevocationsResponse
			if resp, err = stream.Recv(); err == nil {
				backoff = 100 * time.Millisecond
				set := revocation.New(resp.GetRevocations())
				s.revs.Store(set)
				s.conns.closeRevoked(set)
				s.enforceLater(ctx, set)
				s.revUpdates.Add(1)
			}
		}
		if status.Code(err) == codes.Unimplemented {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// enforceLater closes, when a revocation of set comes into force (a CA
// key's, after its grace), the connections it then covers, unless newer
// revocations arrived meanwhile.
func (s *Source) enforceLater(ctx context.Context, set *revocation.Set) {
	next := set.NextEnforcement(time.Now())
	if next.IsZero() {
		return
	}
	time.AfterFunc(time.Until(next), func() {
		if ctx.Err() != nil || s.revs.Load() != set {
			return
		}
		s.conns.closeRevoked(set)
		s.enforceLater(ctx, set)
	})
}
