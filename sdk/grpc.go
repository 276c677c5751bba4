package sdk

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/sdk/authz"
)

// GRPCServerOptions returns the options that make a gRPC server mutually
// authenticated and authorized: ServerCredentials and both interceptors,
// and a stats handler that counts every call in the source's traffic
// (Source.TrafficTotals, and the reports of Follow).
func GRPCServerOptions(src *Source, az *authz.Authorizer) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(ServerCredentials(src, az)),
		grpc.ChainUnaryInterceptor(UnaryServerInterceptor(az)),
		grpc.ChainStreamInterceptor(StreamServerInterceptor(az)),
		grpc.StatsHandler(statsHandler{src: src}),
	}
}

// deniedMessage is the status message of a call the policy denied.
const deniedMessage = "not allowed by policy"

// ServerCredentials are mutual TLS with the source's SVID; peers that az
// would deny whatever they called, and revoked peers, are refused at the
// handshake, and connections whose peer becomes revoked are closed.
func ServerCredentials(src *Source, az *authz.Authorizer) credentials.TransportCredentials {
	return transportCredentials{TransportCredentials: credentials.NewTLS(src.serverConfig(handshakeAuthorizer(az))), src: src}
}

// ClientCredentials are mutual TLS with the source's SVID, to servers that
// server authorizes and that are not revoked; connections to a server
// that becomes revoked are closed.
func ClientCredentials(src *Source, server tlsconfig.Authorizer) credentials.TransportCredentials {
	return transportCredentials{TransportCredentials: credentials.NewTLS(src.clientConfig(server)), src: src}
}

// PeerIDFromContext returns the SPIFFE ID of a gRPC call's peer, on a
// server or client with the credentials of this package.
func PeerIDFromContext(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return spiffeid.ID{}, false
	}
	id, err := peerIDOfState(ti.State)
	return id, err == nil
}

// peerAttributes reads where a gRPC call's peer runs from its
// certificate.
func peerAttributes(ctx context.Context) authz.Attributes {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return authz.Attributes{}
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return authz.Attributes{}
	}
	return authz.AttributesOf(ti.State.PeerCertificates[0])
}

func authorize(ctx context.Context, az *authz.Authorizer, method string) (context.Context, error) {
	id, ok := PeerIDFromContext(ctx)
	if !ok || !az.CheckFrom(id, peerAttributes(ctx), "", method) {
		return nil, status.Error(codes.PermissionDenied, deniedMessage)
	}
	return context.WithValue(ctx, peerKey{}, id), nil
}

// UnaryServerInterceptor authorizes every unary call before its handler
// runs (PermissionDenied otherwise); the handler reads the caller with
// CallerID.
func UnaryServerInterceptor(az *authz.Authorizer) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := authorize(ctx, az, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor authorizes every stream before its handler runs.
func StreamServerInterceptor(az *authz.Authorizer) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := authorize(ss.Context(), az, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &peerStream{ServerStream: ss, ctx: ctx})
	}
}

type peerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *peerStream) Context() context.Context { return s.ctx }
