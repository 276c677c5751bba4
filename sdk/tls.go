package sdk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/signet-id/signet/sdk/authz"
)

// ServerTLSConfig returns a TLS configuration that presents the source's
// SVID, requires a client SVID from a trusted bundle, and refuses at the
// handshake every peer that az would deny whatever it called, and every
// peer whose certificate chain is revoked (on resumed sessions too).
func ServerTLSConfig(src *Source, az *authz.Authorizer) *tls.Config {
	return src.serverConfig(handshakeAuthorizer(az))
}

func handshakeAuthorizer(az *authz.Authorizer) tlsconfig.Authorizer {
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		var leaf *x509.Certificate
		if len(chains) > 0 && len(chains[0]) > 0 {
			leaf = chains[0][0]
		}
		if az == nil || !az.CheckConnectFrom(id, authz.AttributesOf(leaf)) {
			return fmt.Errorf("%w: %s", errDenied, id)
		}
		return nil
	}
}

// ClientTLSConfig returns a TLS configuration that presents the source's
// SVID and accepts only servers that server authorizes (go-spiffe's
// tlsconfig.AuthorizeID, AuthorizeMemberOf, ...) and that are not
// revoked.
func ClientTLSConfig(src *Source, server tlsconfig.Authorizer) *tls.Config {
	return src.clientConfig(server)
}

// Listen listens on a TCP address and returns a listener of mutually
// authenticated TLS connections; peers az would deny are refused at
// the handshake (a peer may connect when some allow rule names it, on
// any method; authz.ConnectionMethod allows the connection and no call).
// Use PeerIDOfConn to learn who is calling. A connection whose peer
// becomes revoked is closed. The connections are *tls.Conn; the traffic
// of each is counted under authz.ConnectionMethod, one call per minute in
// which it reads or writes, with its bytes on the wire (TrafficTotals, and
// the reports the Source sends).
func Listen(network, addr string, src *Source, az *authz.Authorizer) (net.Listener, error) {
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return trackingListener{Listener: l, config: meteredConfig(ServerTLSConfig(src, az)), src: src}, nil
}

// trackingListener makes the TLS connections of Listen, hands the
// Source every one it accepts, and counts their traffic.
type trackingListener struct {
	net.Listener
	config *tls.Config
	src    *Source
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := tls.Server(&meteredConn{Conn: c, src: l.src, now: l.src.clock}, l.config)
	l.src.conns.addTLS(tc)
	return tc, nil
}

// Dial connects to a server over mutually authenticated TLS and completes
// the handshake; server decides which server identities are acceptable.
// The connection is a *tls.Conn. A server that refuses this client's
// identity makes the handshake fail with a *RefusedError or, in TLS 1.3
// (where the server checks the client after the client's side of the
// handshake), the first read or write fail with an error for which
// IsRefused reports true.
func Dial(ctx context.Context, network, addr string, src *Source, server tlsconfig.Authorizer) (net.Conn, error) {
	d := tls.Dialer{Config: ClientTLSConfig(src, server)}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, refused(src, err)
	}
	src.conns.addTLS(c.(*tls.Conn))
	return c, nil
}

// PeerIDOfConn returns the SPIFFE ID of the peer of a connection from
// Listen or Dial, completing the handshake if it has not happened yet.
func PeerIDOfConn(c net.Conn) (spiffeid.ID, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("sdk: not a TLS connection")
	}
	if err := tc.Handshake(); err != nil {
		return spiffeid.ID{}, err
	}
	return peerIDOfState(tc.ConnectionState())
}

func peerIDOfState(st tls.ConnectionState) (spiffeid.ID, error) {
	if len(st.PeerCertificates) == 0 || len(st.PeerCertificates[0].URIs) != 1 {
		return spiffeid.ID{}, fmt.Errorf("sdk: peer has no SVID")
	}
	return spiffeid.FromURI(st.PeerCertificates[0].URIs[0])
}
