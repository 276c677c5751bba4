package sdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

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

// refusalTransport reports refusals from HTTP round trips.
type refusalTransport struct {
	http.RoundTripper
	src *Source
}

func (t *refusalTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.RoundTripper.RoundTrip(r)
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
			return refusedStatus(src, invoker(ctx, method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			return s, refusedStatus(src, err)
		}),
	}
}

func refusedStatus(src *Source, err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable || !strings.Contains(st.Message(), badCertificate) {
		return err
	}
	return status.Error(codes.PermissionDenied, refused(src, errors.New(st.Message())).Error())
}
