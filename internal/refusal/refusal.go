// Package refusal names the CA's refusals that an agent acts on, in gRPC
// error details (google.rpc.ErrorInfo), so that the agent reacts to what a
// refusal means rather than to its wording, which is for people.
package refusal

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the ErrorInfo domain of Signet's refusals.
const Domain = "signet.dev"

// Reasons.
const (
	// Agent: the CA no longer accepts the calling agent (unknown, evicted,
	// or an SVID replaced by a newer attestation). The agent keeps serving
	// what it holds and attests again if it can.
	Agent = "AGENT_REFUSED"
	// Entry: an entry the agent asked for is not its own (any more), for
	// example the identity of a pod that left the node. Metadata EntryID
	// names it.
	Entry = "ENTRY_REFUSED"
	// ReplicaDeaf: the CA replica does not hear the other replicas'
	// changes (its shared store is out of reach), so it cannot serve the
	// agent's Sync stream. The agent tries another replica.
	ReplicaDeaf = "REPLICA_DEAF"
)

// EntryID is the metadata key of the refused entry's ID.
const EntryID = "entry_id"

// Error is a gRPC status error with message msg that carries reason (one
// of the constants above) and metadata.
func Error(code codes.Code, msg, reason string, metadata map[string]string) error {
	st := status.New(code, msg)
	if with, err := st.WithDetails(&errdetails.ErrorInfo{Domain: Domain, Reason: reason, Metadata: metadata}); err == nil {
		st = with
	}
	return st.Err()
}

// Of returns the reason and metadata err carries, or "" if it is not one
// of Signet's named refusals.
func Of(err error) (reason string, metadata map[string]string) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return "", nil
	}
	for _, d := range se.GRPCStatus().Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason(), info.GetMetadata()
		}
	}
	return "", nil
}
