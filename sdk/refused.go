package sdk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RefusedError is what a client of the SDK gets when the server refused
// it at the TLS handshake: the server's authorization allows this client's
// SPIFFE ID no call (or the server does not trust its trust domain).
// Asking again will not help, so it is not a temporary error, and gRPC
// calls made with GRPCClientOptions fail with PermissionDenied rather
// than Unavailable.
type RefusedError struct {
	// ID is the client's own SPIFFE ID, the one the server refused.
	ID spiffeid.ID
	// Err is the TLS error as it arrived ("remote error: tls: bad
	// certificate").
	Err error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("sdk: refused by the server's authorization at the TLS handshake: it allows %s no call, or does not trust its trust domain (%v)", e.ID, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Temporary reports false: a refusal stands until the server's policy
// changes.
func (e *RefusedError) Temporary() bool { return false }

// badCertificate is how a TLS server's refusal of the client's
// certificate reaches the client (the alert bad_certificate).
const badCertificate = "remote error: tls: bad certificate"

// refused turns a refusal of the client's certificate in err into a
// RefusedError, and leaves other errors alone.
func refused(src *Source, err error) error {
	if err == nil || !strings.Contains(err.Error(), badCertificate) {
		return err
	}
	var already *RefusedError
	if errors.As(err, &already) {
		return err
	}
	id, _ := src.ID()
	return &RefusedError{ID: id, Err: err}
}

// IsRefused reports whether err, from a connection this client made, is
// the server refusing its identity at the TLS handshake.
func IsRefused(err error) bool {
	var re *RefusedError
	return errors.As(err, &re) || err != nil && strings.Contains(err.Error(), badCertificate)
}

// probeRefused tells a refusal from other failures of a connection to
// addr: a TLS 1.3 server checks the client after the client's side of the
// handshake, and a client that writes at once (HTTP/2, gRPC) may see its
// write fail ("broken pipe", "connection reset") before it reads the
// server's alert. The probe connects again and writes nothing, so the
// alert, if the server sends one, is what it reads.
func probeRefused(ctx context.Context, src *Source, server tlsconfig.Authorizer, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	d := tls.Dialer{Config: ClientTLSConfig(src, server)}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return strings.Contains(err.Error(), badCertificate)
	}
	defer c.Close()
	// An accepted client hears nothing until it speaks: give up soon.
	c.SetReadDeadline(time.Now().Add(time.Second))
	_, err = c.Read(make([]byte, 1))
	return err != nil && strings.Contains(err.Error(), badCertificate)
}

// refusalTransport reports refusals from HTTP round trips.
type refusalTransport struct {
	http.RoundTripper
	src    *Source
	server tlsconfig.Authorizer
}

func (t *refusalTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.RoundTripper.RoundTrip(r)
	// A failed round trip that the caller did not cancel may be a refusal
	// that arrived as a broken connection.
	if err != nil && !strings.Contains(err.Error(), badCertificate) && r.Context().Err() == nil && r.URL.Scheme == "https" {
		host := r.URL.Host
		if r.URL.Port() == "" {
			host = net.JoinHostPort(r.URL.Hostname(), "443")
		}
		if probeRefused(r.Context(), t.src, t.server, host) {
			id, _ := t.src.ID()
			return resp, &RefusedError{ID: id, Err: err}
		}
	}
	return resp, refused(t.src, err)
}

// GRPCClientOptions returns the dial options of a gRPC client: mutual TLS
// with the source's SVID to servers that server authorizes
// (ClientCredentials), and interceptors that turn a refusal at the
// handshake into PermissionDenied with a RefusedError's message, so that
// it is not retried as an unavailable server would be.
func GRPCClientOptions(src *Source, server tlsconfig.Authorizer) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(ClientCredentials(src, server)),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return refusedStatus(ctx, src, server, cc.Target(), invoker(ctx, method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			return s, refusedStatus(ctx, src, server, cc.Target(), err)
		}),
	}
}

// refusedStatus turns an Unavailable that is a refusal into
// PermissionDenied; one that does not say so is probed to tell (target is
// a host:port, or dns:///host:port).
func refusedStatus(ctx context.Context, src *Source, server tlsconfig.Authorizer, target string, err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return err
	}
	if !strings.Contains(st.Message(), badCertificate) {
		addr := target
		if i := strings.LastIndex(addr, "/"); i >= 0 {
			addr = addr[i+1:]
		}
		if _, _, splitErr := net.SplitHostPort(addr); splitErr != nil || !probeRefused(context.WithoutCancel(ctx), src, server, addr) {
			return err
		}
	}
	id, _ := src.ID()
	return status.Error(codes.PermissionDenied, (&RefusedError{ID: id, Err: errors.New(st.Message())}).Error())
}
