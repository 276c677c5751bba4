package sdk

import (
	"context"
	"encoding/hex"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
)

// ackPoll is how often the source looks whether the roots it holds
// changed: reading them costs nothing, and an operator waiting for a root
// to reach every workload waits at most this long for this one.
const ackPoll = time.Second

// ackBundles tells the agent which roots of its trust domain the source
// holds (signet.workload.v1.Bundles), at the start and whenever they
// change, until ctx ends, so that the CA can show which workloads have a
// new root before it is activated. An agent without the extension ends
// it.
func (s *Source) ackBundles(ctx context.Context) {
	conn, err := grpc.NewClient(s.target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	client := workloadv1.NewBundlesClient(conn)
	var sent []string
	t := time.NewTicker(ackPoll)
	defer t.Stop()
	for {
		if held := s.heldRoots(); held != nil && !slices.Equal(held, sent) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			req := &workloadv1.AckBundleRequest{X509Authorities: held}
			if svid, err := s.GetX509SVID(); err == nil {
				req.SpiffeId = svid.ID.String()
			}
			_, err := client.Ack(cctx, req)
			cancel()
			switch status.Code(err) {
			case codes.OK:
				sent = held
			case codes.Unimplemented:
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// heldRoots returns the key IDs (hex subject key identifier) of the roots
// the source holds for its trust domain, sorted; nil if none.
func (s *Source) heldRoots() []string {
	b, err := s.GetX509BundleForTrustDomain(s.td)
	if err != nil {
		return nil
	}
	var ids []string
	for _, r := range b.X509Authorities() {
		ids = append(ids, hex.EncodeToString(r.SubjectKeyId))
	}
	slices.Sort(ids)
	return ids
}
