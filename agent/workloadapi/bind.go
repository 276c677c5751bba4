package workloadapi

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/internal/peercred"
)

// BindStreams returns a server option that ends every stream when the
// process that opened it exits or executes another program: what was
// attested is then no longer the reader of the stream (a connection can
// be handed to another process).
func BindStreams() grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		creds, ok := peercred.FromContext(ss.Context())
		if !ok {
			return handler(srv, ss)
		}
		ctx, cancel := context.WithCancelCause(ss.Context())
		defer cancel(nil)
		go func() {
			if err := creds.Watch(ctx); err != nil {
				cancel(err)
			}
		}()
		err := handler(srv, &boundStream{ServerStream: ss, ctx: ctx})
		if cause := context.Cause(ctx); errors.Is(cause, peercred.ErrProcessGone) || errors.Is(cause, peercred.ErrExecuted) {
			return status.Error(codes.PermissionDenied, "stream ended: "+cause.Error())
		}
		return err
	})
}

type boundStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *boundStream) Context() context.Context { return s.ctx }
