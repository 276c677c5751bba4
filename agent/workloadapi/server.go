// Package workloadapi serves the SPIFFE Workload API on a Unix socket, from
// the proto go-spiffe generates. Every call is attested from the socket's
// peer credentials, answered from the agent's cache (no round trip to the
// CA for X509-SVIDs), checked against PID reuse, and audited.
package workloadapi

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
)

// Attestor describes a calling process by its selectors (agent/attest).
type Attestor interface {
	// Attest returns all the caller's selectors, waiting (within the
	// attestor's patience) for a container the kubelet does not list yet.
	Attest(ctx context.Context, caller peercred.Creds) ([]selector.Selector, error)
	// AttestEarly answers without that wait: podOnly says the selectors
	// are the caller's pod's only, and Attest is to complete them.
	AttestEarly(ctx context.Context, caller peercred.Creds) (sels []selector.Selector, podOnly bool, err error)
}

// JWTMinter gets JWT-SVIDs for entries.
type JWTMinter interface {
	FetchJWTSVID(ctx context.Context, entryID string, audience []string) (string, time.Time, error)
}

// Config configures a Handler.
type Config struct {
	Cache    *cache.Cache
	Attestor Attestor
	JWT      JWTMinter
	// Audit receives one record per answer. If nil, nothing is audited.
	Audit *Auditor
	// SyncWait is how long a call made before the agent's first sync waits
	// for it. If zero, ten seconds.
	SyncWait time.Duration
	Log      hclog.Logger
	// Metrics, if set, count answers.
	Metrics *Metrics
	// Pods, if set (Kubernetes mode), is asked for the identities of a
	// caller's pod when none have arrived yet.
	Pods PodPuller
}

// PodPuller gets the identities of a pod on this node from the CA and puts
// them in the cache.
type PodPuller interface {
	PullPod(ctx context.Context, uid string) error
}

// pullPod asks for the caller's pod identities; it reports whether it
// asked, so that the caller looks at the cache again.
func (h *Handler) pullPod(ctx context.Context, c caller) bool {
	if h.cfg.Pods == nil {
		return false
	}
	var uid string
	for _, s := range c.selectors {
		if v, ok := selector.PodUIDOf(s); ok {
			uid = v
		}
	}
	if uid == "" {
		return false
	}
	if err := h.cfg.Pods.PullPod(ctx, uid); err != nil {
		h.cfg.Log.Warn("asking the CA for the pod's identities failed", "pod_uid", uid, "error", err)
		return false
	}
	return true
}

// Handler implements workload.SpiffeWorkloadAPIServer.
type Handler struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	cfg Config
}

// New returns a Handler.
func New(cfg Config) *Handler {
	if cfg.SyncWait == 0 {
		cfg.SyncWait = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	return &Handler{cfg: cfg}
}

// caller is an attested caller of the Workload API.
type caller struct {
	creds     peercred.Creds
	selectors []selector.Selector
	// partial: the caller's container was not at the kubelet yet, so the
	// selectors are the pod's only (Attestor.AttestEarly).
	partial bool
}

func (c caller) selectorStrings() []string {
	out := make([]string, len(c.selectors))
	for i, s := range c.selectors {
		out[i] = s.String()
	}
	return out
}

// attest checks the security header and attests the caller.
func (h *Handler) attest(ctx context.Context, event string) (caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		h.refuse(caller{}, event, "security header missing from request")
		return caller{}, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	creds, ok := peercred.FromContext(ctx)
	if !ok {
		return caller{}, status.Error(codes.Internal, "no peer credentials on the connection")
	}
	sels, podOnly, err := h.cfg.Attestor.AttestEarly(ctx, creds)
	c := caller{creds: creds, selectors: sels, partial: podOnly}
	if err == nil {
		err = creds.Check()
	}
	if err != nil {
		h.refuse(c, event, "attestation failed: "+err.Error())
		return caller{}, status.Error(codes.PermissionDenied, "could not attest the calling process")
	}
	return c, nil
}

// complete attests a caller again, waiting for its container to show at
// the kubelet, when the first answer had the pod's selectors only.
func (h *Handler) complete(ctx context.Context, c *caller, event string) error {
	sels, err := h.cfg.Attestor.Attest(ctx, c.creds)
	if err == nil {
		err = c.creds.Check()
	}
	if err != nil {
		h.refuse(*c, event, "attestation failed: "+err.Error())
		return status.Error(codes.PermissionDenied, "could not attest the calling process")
	}
	c.selectors, c.partial = sels, false
	return nil
}

// lookUp returns a snapshot after the first sync in which the caller's
// entries are found if it has any: when none match, its attestation is
// completed (a container the kubelet did not list yet) and the CA is asked
// for its pod's identities.
func (h *Handler) lookUp(ctx context.Context, c *caller, event string) (*cache.Snapshot, <-chan struct{}, error) {
	snap, changed := h.synced(ctx)
	if len(snap.MatchEntries(c.selectors)) == 0 && c.partial {
		if err := h.complete(ctx, c, event); err != nil {
			return nil, nil, err
		}
	}
	if len(snap.MatchEntries(c.selectors)) == 0 && h.pullPod(ctx, *c) {
		snap, changed = h.cfg.Cache.Snapshot()
	}
	return snap, changed, nil
}

func (h *Handler) refuse(c caller, event, reason string) {
	h.cfg.Metrics.answer(event, "refused")
	h.cfg.Audit.Log(Record{Event: event, PID: c.creds.PID, UID: c.creds.UID, Selectors: c.selectorStrings(), Result: "refused", Reason: reason})
}

func (h *Handler) grant(c caller, event string, ids []string) {
	h.cfg.Metrics.answer(event, "success")
	h.cfg.Audit.Log(Record{Event: event, PID: c.creds.PID, UID: c.creds.UID, Selectors: c.selectorStrings(), SPIFFEIDs: ids, Result: "success"})
}

var (
	errNoIdentity      = status.Error(codes.PermissionDenied, "no identity issued")
	errWorkloadKeyOnly = status.Error(codes.PermissionDenied, "no identity issued: the caller's identities are signed only for keys it makes itself (signet.workload.v1.Keys, the Signet SDK's WithWorkloadKey)")
)

// agentHeld reports whether any of es is minted by the agent with a key of
// its own (not workload-key only).
func agentHeld(es []entry.Entry) bool {
	for _, e := range es {
		if !e.WorkloadKey {
			return true
		}
	}
	return false
}

// synced returns a snapshot after the first sync, or the current one once
// SyncWait has passed.
func (h *Handler) synced(ctx context.Context) (*cache.Snapshot, <-chan struct{}) {
	deadline := time.NewTimer(h.cfg.SyncWait)
	defer deadline.Stop()
	for {
		snap, changed := h.cfg.Cache.Snapshot()
		if snap.Synced {
			return snap, changed
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return snap, changed
		case <-deadline.C:
			return snap, changed
		}
	}
}

func ids(items []*cache.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.Entry.SPIFFEID.String()
	}
	return out
}

func sameItems(a, b []*cache.Item) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FetchX509SVID implements the Workload API: it sends the caller's SVIDs
// and again whenever they or the bundle change. In order: attest the
// caller; look its entries up (completing a pod-only attestation, asking
// the CA for its pod's identities); wait for the SVIDs of entries the
// agent is still minting; then stream.
func (h *Handler) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	const event = "workload.fetch_x509_svid"
	ctx := stream.Context()
	c, err := h.attest(ctx, event)
	if err != nil {
		return err
	}
	snap, changed, err := h.lookUp(ctx, &c, event)
	if err != nil {
		return err
	}
	if snap, changed, err = h.minted(ctx, c, event, snap, changed, time.Now().Add(h.cfg.SyncWait)); err != nil || snap == nil {
		return err
	}
	var sent []*cache.Item
	var sentFed []*cache.Bundle
	var completed <-chan caller
	for {
		items := snap.Match(c.selectors)
		if len(items) == 0 {
			// The caller's identities went away (or were replaced).
			return h.noIdentity(c, event, snap.MatchEntries(c.selectors))
		}
		fed := snap.FederatedFor(itemEntries(items))
		if !sameItems(items, sent) || !slices.Equal(fed, sentFed) {
			wire, err := x509Response(snap, c.selectors, items, fed)
			if err != nil {
				return status.Error(codes.Internal, "marshal response")
			}
			if err := stream.SendMsg(wire); err != nil {
				return err
			}
			h.grant(c, event, ids(items))
			sent, sentFed = items, fed
			if c.partial && completed == nil {
				// The caller has its pod's identities; learn its container
				// too, for entries that select on it, for as long as the
				// stream lasts: a loaded kubelet may report a new
				// container late, and the stream keeps what it has.
				completed = h.completeLater(ctx, c, event, ids(items))
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			snap, changed = h.cfg.Cache.Snapshot()
		case full, ok := <-completed:
			completed = nil
			if !ok {
				return status.Error(codes.PermissionDenied, "could not attest the calling process")
			}
			// The full attestation (audited already): entries that select
			// on the container may now match. The stream keeps its own
			// handle on the process.
			c.selectors, c.partial = full.selectors, false
			snap, changed = h.cfg.Cache.Snapshot()
		}
	}
}

// minted waits, until deadline, while the caller's entries have no SVID
// yet and the agent mints some of them (an entry that just arrived), and
// returns the snapshot in which the caller has SVIDs. A caller with none
// coming is refused; a nil snapshot means ctx ended.
func (h *Handler) minted(ctx context.Context, c caller, event string, snap *cache.Snapshot, changed <-chan struct{}, deadline time.Time) (*cache.Snapshot, <-chan struct{}, error) {
	for len(snap.Match(c.selectors)) == 0 {
		matched := snap.MatchEntries(c.selectors)
		if !agentHeld(matched) || !time.Now().Before(deadline) {
			return nil, nil, h.noIdentity(c, event, matched)
		}
		select {
		case <-ctx.Done():
			return nil, nil, nil
		case <-changed:
		case <-time.After(time.Until(deadline)):
		}
		snap, changed = h.cfg.Cache.Snapshot()
	}
	return snap, changed, nil
}

// noIdentity refuses a caller that has no SVID to get: its entries, if
// any (matched), are all for keys the workload makes itself.
func (h *Handler) noIdentity(c caller, event string, matched []entry.Entry) error {
	if len(matched) > 0 && !agentHeld(matched) {
		h.refuse(c, event, "the caller's identities are workload-key only")
		return errWorkloadKeyOnly
	}
	h.refuse(c, event, "no entry matches the caller's selectors")
	return errNoIdentity
}

// completeTimeout bounds how long the agent keeps trying to complete an
// attestation answered on a pod's selectors.
const completeTimeout = 2 * time.Minute

// completeLater attests a caller again until its container shows at the
// kubelet (backing off to every 10 s), audits the full attestation of the
// caller that holds the SVIDs ids, and sends it on the channel for the
// stream, if it is still open. It goes on after the caller has closed the
// stream (a one-shot client leaves at its first answer): the audit record
// says which container got the SVIDs. It stops, closing the channel
// without a value, when the process is gone or after completeTimeout.
func (h *Handler) completeLater(ctx context.Context, c caller, event string, ids []string) <-chan caller {
	out := make(chan caller, 1)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), completeTimeout)
	// The connection closes its handle on the process when the caller
	// leaves; this goroutine may outlive it.
	creds, release := c.creds.Clone()
	c.creds = creds
	go func() {
		defer cancel()
		defer release()
		backoff := time.Second
		for {
			sels, err := h.cfg.Attestor.Attest(ctx, c.creds)
			// Whatever the kubelet said: is the caller still there?
			if cerr := c.creds.Check(); cerr != nil {
				err = cerr
			}
			if err == nil {
				c.selectors, c.partial = sels, false
				h.grant(c, event, ids)
				out <- c
				return
			}
			if ctx.Err() != nil || errors.Is(err, peercred.ErrProcessGone) || errors.Is(err, peercred.ErrExecuted) {
				h.refuse(c, event, "attestation not completed: "+err.Error())
				close(out)
				return
			}
			h.cfg.Log.Debug("the caller's container is not at the kubelet yet; trying again", "pid", c.creds.PID, "error", err, "in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}()
	return out
}

// FetchX509Bundles implements the Workload API: the trust domain's bundle
// and the federated bundles of the caller's entries.
func (h *Handler) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	return h.streamBundles(stream.Context(), "workload.fetch_x509_bundles", func(bs []*cache.Bundle) error {
		m := make(map[string][]byte, len(bs))
		for _, b := range bs {
			m[b.TrustDomain.IDString()] = b.X509DER
		}
		return stream.Send(&workload.X509BundlesResponse{Bundles: m})
	})
}

// FetchJWTBundles implements the Workload API, as FetchX509Bundles.
func (h *Handler) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	return h.streamBundles(stream.Context(), "workload.fetch_jwt_bundles", func(bs []*cache.Bundle) error {
		m := make(map[string][]byte, len(bs))
		for _, b := range bs {
			m[b.TrustDomain.IDString()] = b.JWKS
		}
		return stream.Send(&workload.JWTBundlesResponse{Bundles: m})
	})
}

// streamBundles sends the bundles to an attested caller that has an
// identity (the trust domain's first, then the federated ones its entries
// name), and again whenever they change.
func (h *Handler) streamBundles(ctx context.Context, event string, send func([]*cache.Bundle) error) error {
	c, err := h.attest(ctx, event)
	if err != nil {
		return err
	}
	snap, changed, err := h.lookUp(ctx, &c, event)
	if err != nil {
		return err
	}
	var sent []*cache.Bundle
	for {
		entries := snap.MatchEntries(c.selectors)
		if len(entries) == 0 {
			h.refuse(c, event, "no entry matches the caller's selectors")
			return errNoIdentity
		}
		bundles := append([]*cache.Bundle{snap.Bundle}, snap.FederatedFor(entries)...)
		if !slices.Equal(bundles, sent) {
			if err := send(bundles); err != nil {
				return err
			}
			h.grant(c, event, nil)
			sent = bundles
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			snap, changed = h.cfg.Cache.Snapshot()
		}
	}
}

// FetchJWTSVID implements the Workload API: one JWT-SVID per identity of
// the caller (or only the one asked for).
func (h *Handler) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	const event = "workload.fetch_jwt_svid"
	c, err := h.attest(ctx, event)
	if err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 {
		h.refuse(c, event, "audience is empty")
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	for _, a := range req.GetAudience() {
		if a == "" {
			h.refuse(c, event, "empty audience")
			return nil, status.Error(codes.InvalidArgument, "audience must not be empty")
		}
	}
	if want := req.GetSpiffeId(); want != "" {
		if _, err := spiffeid.FromString(want); err != nil {
			h.refuse(c, event, "bad spiffe_id")
			return nil, status.Errorf(codes.InvalidArgument, "spiffe_id %q: %v", want, err)
		}
	}
	snap, _, err := h.lookUp(ctx, &c, event)
	if err != nil {
		return nil, err
	}
	// One JWT-SVID per SPIFFE ID, in ID order; only the asked-for ID when
	// the request names one (the common case: filter before sorting).
	var entries []entry.Entry
	for _, e := range snap.MatchEntries(c.selectors) {
		if want := req.GetSpiffeId(); want == "" || e.SPIFFEID.String() == want {
			entries = append(entries, e)
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].SPIFFEID.String() < entries[j].SPIFFEID.String() })
	resp := &workload.JWTSVIDResponse{}
	seen := map[string]bool{}
	for _, e := range entries {
		id := e.SPIFFEID.String()
		if seen[id] {
			continue
		}
		seen[id] = true
		tok, _, err := h.cfg.JWT.FetchJWTSVID(ctx, e.ID, req.GetAudience())
		if err != nil {
			h.cfg.Log.Warn("JWT-SVID unavailable", "spiffe_id", id, "error", err)
			h.refuse(c, event, "JWT-SVID unavailable: "+err.Error())
			return nil, status.Error(codes.Unavailable, "could not get a JWT-SVID from the CA")
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: id, Svid: tok})
	}
	if len(resp.Svids) == 0 {
		h.refuse(c, event, "no entry matches the caller's selectors")
		return nil, errNoIdentity
	}
	var got []string
	for _, s := range resp.Svids {
		got = append(got, s.SpiffeId)
	}
	h.grant(c, event, got)
	return resp, nil
}

// ValidateJWTSVID implements the Workload API. Any local process may
// validate a token: the answer holds nothing the token does not.
func (h *Handler) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	const event = "workload.validate_jwt_svid"
	c, err := h.attest(ctx, event)
	if err != nil {
		return nil, err
	}
	if req.GetAudience() == "" {
		h.refuse(c, event, "audience is empty")
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		h.refuse(c, event, "svid is empty")
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	snap, _ := h.cfg.Cache.Snapshot()
	// Tokens of this trust domain, and of every federated one.
	set := jwtbundle.NewSet(jwtbundle.FromJWTAuthorities(snap.Bundle.TrustDomain, snap.Bundle.JWTKeys))
	for _, fb := range snap.Federated {
		set.Add(jwtbundle.FromJWTAuthorities(fb.TrustDomain, fb.JWTKeys))
	}
	svid, err := jwtsvid.ParseAndValidate(req.GetSvid(), set, []string{req.GetAudience()})
	if err != nil {
		reason := strings.TrimPrefix(err.Error(), "jwtsvid: ")
		h.refuse(c, event, "invalid JWT-SVID: "+reason)
		return nil, status.Errorf(codes.InvalidArgument, "invalid JWT-SVID: %s", reason)
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Error(codes.Internal, "claims do not convert")
	}
	h.grant(c, event, []string{svid.ID.String()})
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

func itemEntries(items []*cache.Item) []entry.Entry {
	out := make([]entry.Entry, len(items))
	for i, it := range items {
		out[i] = it.Entry
	}
	return out
}

// x509Response is the marshaled FetchX509SVID answer for items, memoized in
// the snapshot per selector set.
func x509Response(snap *cache.Snapshot, sels []selector.Selector, items []*cache.Item, fed []*cache.Bundle) (wireMessage, error) {
	var key strings.Builder
	key.WriteString("x509svid")
	for _, s := range selector.Canonical(sels) {
		key.WriteByte(0)
		key.WriteString(s.String())
	}
	type result struct {
		wire wireMessage
		err  error
	}
	r := snap.Memo(key.String(), func() any {
		resp := &workload.X509SVIDResponse{Svids: make([]*workload.X509SVID, len(items))}
		for i, it := range items {
			resp.Svids[i] = it.Proto
		}
		if len(fed) > 0 {
			resp.FederatedBundles = make(map[string][]byte, len(fed))
			for _, b := range fed {
				resp.FederatedBundles[b.TrustDomain.IDString()] = b.X509DER
			}
		}
		b, err := proto.Marshal(resp)
		return result{wireMessage(b), err}
	}).(result)
	return r.wire, r.err
}
