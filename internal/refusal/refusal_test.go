package refusal_test

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/internal/refusal"
)

func TestRoundTrip(t *testing.T) {
	err := refusal.Error(codes.PermissionDenied, `MintX509SVIDs: entry "x" is not parented to the calling agent`, refusal.Entry, map[string]string{refusal.EntryID: "x"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("code %s", status.Code(err))
	}
	// Through the wire form, as the agent receives it.
	back := status.FromProto(status.Convert(err).Proto()).Err()
	reason, meta := refusal.Of(fmt.Errorf("mint: %w", back))
	if reason != refusal.Entry || meta[refusal.EntryID] != "x" {
		t.Errorf("Of = %q %v", reason, meta)
	}
}

// TestWordingDoesNotCount: a message that reads like a refusal but carries
// no ErrorInfo of Signet's domain names nothing.
func TestWordingDoesNotCount(t *testing.T) {
	other, _ := status.New(codes.PermissionDenied, "agent evicted").WithDetails(&errdetails.ErrorInfo{Domain: "example.com", Reason: refusal.Agent})
	for _, err := range []error{
		nil,
		errors.New("agent evicted"),
		status.Error(codes.PermissionDenied, `agent SVID is no longer valid; entry "k8s:uid:rule"`),
		other.Err(),
	} {
		if reason, meta := refusal.Of(err); reason != "" || meta != nil {
			t.Errorf("Of(%v) = %q %v", err, reason, meta)
		}
	}
}
