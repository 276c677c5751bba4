package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/internal/entry"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
)

// maxAckKeys bounds the key IDs one acknowledgement may hold, and
// maxAckers the workloads the agent keeps acknowledgements of.
const (
	maxAckKeys = 64
	maxAckers  = 4096
)

// Acks holds what the SDK workloads on the node acknowledged holding of
// the trust bundle, for the agent to pass on to the CA. A workload's
// acknowledgement leaves when its process does.
type Acks struct {
	mu      sync.Mutex
	byInst  map[string]ackEntry
	changed chan struct{}
}

type ackEntry struct {
	ack *typesv1.WorkloadAck
	pid int32
}

// NewAcks returns an empty set.
func NewAcks() *Acks { return &Acks{byInst: map[string]ackEntry{}, changed: make(chan struct{})} }

// List returns the acknowledgements of workloads still running, sorted by
// instance, and a channel closed at the next change.
func (a *Acks) List() ([]*typesv1.WorkloadAck, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*typesv1.WorkloadAck, 0, len(a.byInst))
	for inst, e := range a.byInst {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", e.pid)); errors.Is(err, os.ErrNotExist) {
			delete(a.byInst, inst)
			continue
		}
		out = append(out, e.ack)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetInstance() != out[j].GetInstance() {
			return out[i].GetInstance() < out[j].GetInstance()
		}
		return out[i].GetSpiffeId() < out[j].GetSpiffeId()
	})
	return out, a.changed
}

func (a *Acks) put(ack *typesv1.WorkloadAck, pid int32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := ack.GetInstance() + " " + ack.GetSpiffeId()
	old, ok := a.byInst[key]
	if !ok && len(a.byInst) >= maxAckers {
		return status.Error(codes.ResourceExhausted, "the agent holds as many workload acknowledgements as it keeps")
	}
	a.byInst[key] = ackEntry{ack: ack, pid: pid}
	if !ok || !slices.Equal(old.ack.GetX509Authorities(), ack.GetX509Authorities()) || !slices.Equal(old.ack.GetJwtAuthorities(), ack.GetJwtAuthorities()) ||
		old.ack.GetSpiffeId() != ack.GetSpiffeId() {
		close(a.changed)
		a.changed = make(chan struct{})
	}
	return nil
}

// BundleServer serves signet.workload.v1.Bundles.
type BundleServer struct {
	workloadv1.UnimplementedBundlesServer
	h    *Handler
	acks *Acks
}

// NewBundleServer returns the Bundles service, keeping acknowledgements
// in acks.
func NewBundleServer(h *Handler, acks *Acks) *BundleServer { return &BundleServer{h: h, acks: acks} }

// Ack implements workloadv1.BundlesServer: an identified caller records
// the key IDs it holds, as its first identity and its process.
func (s *BundleServer) Ack(ctx context.Context, req *workloadv1.AckBundleRequest) (*workloadv1.AckBundleResponse, error) {
	const event = "workload.ack_bundle"
	c, snap, _, err := s.h.identified(ctx, event)
	if err != nil {
		return nil, err
	}
	x, j := req.GetX509Authorities(), req.GetJwtAuthorities()
	if len(x) > maxAckKeys || len(j) > maxAckKeys {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d key IDs of each kind", maxAckKeys)
	}
	for _, id := range append(slices.Clip(x), j...) {
		if id == "" || len(id) > 128 || strings.Trim(strings.ToLower(id), "0123456789abcdef") != "" {
			return nil, status.Errorf(codes.InvalidArgument, "key ID %.40q is not hex", id)
		}
	}
	ids := snap.MatchEntries(c.selectors)
	id := ids[0].SPIFFEID.String()
	if want := req.GetSpiffeId(); want != "" {
		if !slices.ContainsFunc(ids, func(e entry.Entry) bool { return e.SPIFFEID.String() == want }) {
			s.h.refuse(c, event, fmt.Sprintf("spiffe_id %q is not the caller's", want))
			return nil, status.Errorf(codes.PermissionDenied, "%q is not one of the caller's identities", want)
		}
		id = want
	}
	inst := fmt.Sprintf("pid %d", c.creds.PID)
	var ns, pod string
	for _, sel := range c.selectors {
		if sel.Type == "k8s" {
			if v, ok := strings.CutPrefix(sel.Value, "ns:"); ok {
				ns = v
			} else if v, ok := strings.CutPrefix(sel.Value, "pod-name:"); ok {
				pod = v
			}
		}
	}
	if pod != "" {
		inst = ns + "/" + pod + " " + inst
	}
	x, j = slices.Sorted(slices.Values(x)), slices.Sorted(slices.Values(j))
	ack := &typesv1.WorkloadAck{SpiffeId: id, Instance: inst, X509Authorities: slices.Compact(x), JwtAuthorities: slices.Compact(j), AckedAt: time.Now().Unix()}
	if err := s.acks.put(ack, c.creds.PID); err != nil {
		return nil, err
	}
	return &workloadv1.AckBundleResponse{}, nil
}
