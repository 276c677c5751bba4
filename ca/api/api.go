// Package api serves the CA's two gRPC APIs: Node (for agents, over mTLS)
// and Admin (for operators, on a Unix socket or over mTLS). Errors are
// turned into gRPC codes here and nowhere else, and every decision is
// audited before the answer is sent.
package api

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/ca/traffic"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/refusal"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Config is shared by the Node and Admin servers.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Store       *store.Store
	Authority   *authority.Authority
	Audit       *audit.Log
	// Unauthenticated, if set, records the refusals of callers that
	// proved no identity, limited per source; else they go to Audit.
	Unauthenticated *audit.Unauthenticated
	Metrics         *Metrics
	// Changes is notified after every entry write so Sync streams wake up.
	Changes *Notifier
	// AgentTTL is the agent SVID lifetime. If zero, one hour.
	AgentTTL time.Duration
	// X509TTL and JWTTTL are the SVID lifetimes for entries that set none.
	// If zero, one hour and five minutes.
	X509TTL time.Duration
	JWTTTL  time.Duration
	// JWTIssuer, if set, is the iss of every JWT-SVID: the CA's OIDC
	// issuer (ca/oidc).
	JWTIssuer string
	// MinTTL is the shortest SVID lifetime an entry may ask for. If zero,
	// one minute.
	MinTTL time.Duration
	// Now returns the current time. If nil, time.Now is used.
	Now func() time.Time
	// Log receives errors the caller does not see. If nil, discarded.
	Log hclog.Logger
	// Stopping, when closed, ends Sync streams so that a graceful stop does
	// not wait for agents to hang up.
	Stopping <-chan struct{}
	// Deaf, if set, returns a channel that is closed while this replica
	// does not hear the other replicas' changes (its shared store is out
	// of reach): Sync streams end and new ones are refused, so that agents
	// move to a replica that hears them instead of waiting on this one.
	Deaf func() <-chan struct{}

	// Kubernetes mode: PSAT attests agents, Pods derives the identities of
	// pods from IdentityRules, AgentPods tells whether an agent's pod is
	// alive, Policies are the AccessPolicy objects, ClusterName goes into
	// agent IDs. All nil or empty outside Kubernetes.
	PSAT      PSATAttestor
	Pods      PodIdentities
	AgentPods AgentPods
	Policies  PolicySource
	// Revocations, in Kubernetes mode, are the cluster's Revocation
	// objects, shared by every replica: the admin API makes and deletes
	// revocations there instead of in Store.
	Revocations RevocationSource
	// Traffic, if set, takes the traffic counts services report through
	// their agents (the CA's detector); it must not block.
	Traffic TrafficSink
	// Acks keep what agents acknowledged holding of the bundle, shared by
	// the replicas: Leases in Kubernetes (ca/cluster.LeaseAcks). If nil,
	// Store.
	Acks AckStore
	// Federations are the trust domains this one federates with: their
	// bundles go to agents on Sync. If nil, there are none (and the admin
	// API refuses to create any).
	Federations Federations
	// revCache, set by setDefaults, keeps the store's revocations between
	// its changes.
	revCache    *revocationCache
	ClusterName string
}

// Federations keeps the federated trust domains (ca/federation.Fetcher).
type Federations interface {
	Put(ctx context.Context, f *typesv1.FederatedTrustDomain) (*typesv1.FederatedTrustDomain, error)
	Delete(ctx context.Context, td string) error
	List(ctx context.Context) ([]*typesv1.FederatedTrustDomain, error)
	// Bundles returns the fetched bundles and a key that changes with
	// them; Changed is closed when they change.
	Bundles() ([]*typesv1.Bundle, string)
	Changed() <-chan struct{}
}

// PSATAttestor verifies a Kubernetes projected service-account token for
// an agent on node, and returns the pod it is bound to (ca/nodeattest).
// An error with a method AgentFault() bool that returns true is the
// agent's fault, and its text is safe to return and audit.
type PSATAttestor interface {
	Attest(ctx context.Context, token, node string) (AgentPod, error)
}

// AgentPod is the pod of an agent that attested with its token.
type AgentPod struct {
	Namespace string
	Name      string
	UID       string
}

// agentFault reports whether err is the attesting agent's fault.
func agentFault(err error) bool {
	var f interface{ AgentFault() bool }
	return errors.As(err, &f) && f.AgentFault()
}

// PodIdentities are identities derived from pods (ca/podidentity). Every
// method takes the agent's node and answers only for pods bound to it.
type PodIdentities interface {
	// ForNode returns the identities of the pods bound to node.
	ForNode(node string, parent spiffeid.ID) []entry.Entry
	// Changed returns channels closed at the next change of node's pods,
	// and of anything that concerns every node (rules, namespaces, nodes).
	Changed(node string) (pods, all <-chan struct{})
	// Lookup returns the pod entries among ids whose pods are on node.
	Lookup(ctx context.Context, ids []string, node string, parent spiffeid.ID) (map[string]entry.Entry, error)
	// Pull returns the identities of pod uid, confirmed with the API
	// server to be bound to node (entry.ErrPodNotOnNode otherwise).
	Pull(ctx context.Context, uid, node string, parent spiffeid.ID) ([]entry.Entry, error)
}

// AgentPods are the cluster's agent pods (ca/agentpod).
type AgentPods interface {
	// AgentPod reports whether pod uid runs an agent on node (alive), or
	// else why not; known is false when this replica has not seen the pod
	// yet (it was created a moment ago, or never existed).
	AgentPod(node, uid string) (alive, known bool, reason string)
	// AgentEvicted reports whether an operator evicted the agent pod uid,
	// at any replica, and why.
	AgentEvicted(uid string) (string, bool)
	// EvictAgentPods evicts the agent pods that run on node, for all
	// replicas, and returns their UIDs (none: no agent pod runs there).
	EvictAgentPods(ctx context.Context, node, agentID, reason string) ([]string, error)
}

// RevocationSource is the Revocation objects of the cluster
// (ca/clusterrevocation).
type RevocationSource interface {
	Revocations() []*typesv1.Revocation
	// Changed returns a channel closed at the next change of Revocations.
	Changed() <-chan struct{}
	Create(ctx context.Context, r *typesv1.Revocation) (*typesv1.Revocation, error)
	// Delete returns store.ErrNotFound for an ID it does not hold.
	Delete(ctx context.Context, id string) error
}

// InForce returns every revocation in force at now: the store's and
// the cluster's. Every agent call checks them, so the store's are read
// again only after the store changed (Changes).
func (c *Config) InForce(ctx context.Context, now time.Time) ([]*typesv1.Revocation, error) {
	stored, err := c.storeRevocations(ctx)
	if err != nil {
		return nil, err
	}
	var rs []*typesv1.Revocation
	if c.Revocations != nil {
		stored = append(slices.Clip(stored), c.Revocations.Revocations()...)
	}
	for _, r := range stored {
		if r.GetExpiresAt() > now.Unix() {
			rs = append(rs, r)
		}
	}
	return rs, nil
}

// revocationCache holds the store's revocations (expired ones too, until
// pruned) until the store's next change.
type revocationCache struct {
	mu    sync.Mutex
	list  []*typesv1.Revocation
	valid <-chan struct{} // closed at the store's next change
}

func (c *Config) storeRevocations(ctx context.Context) ([]*typesv1.Revocation, error) {
	rc := c.revCache
	if rc == nil {
		return c.Store.ListRevocations(ctx, time.Unix(0, 0))
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.valid != nil {
		select {
		case <-rc.valid:
		default:
			return rc.list, nil
		}
	}
	// Taken before the read: a change while it reads makes the next call
	// read again.
	valid := c.Changes.Wait()
	list, err := c.Store.ListRevocations(ctx, time.Unix(0, 0))
	if err != nil {
		return nil, err
	}
	rc.list, rc.valid = list, valid
	return list, nil
}

// TrafficSink takes services' traffic counts, and tells what it learned
// of them (the CA's detector).
type TrafficSink interface {
	ReportTraffic(counts []*typesv1.TrafficCount)
	Observations(since time.Time, keep func(server string) bool) []traffic.Observation
}

// AckStore keeps each agent's last bundle acknowledgement.
type AckStore interface {
	PutBundleAck(ctx context.Context, ack *typesv1.BundleAck) error
	ListBundleAcks(ctx context.Context) ([]*typesv1.BundleAck, error)
}

// PolicySource is the AccessPolicy objects of the cluster
// (ca/accesspolicy).
type PolicySource interface {
	Policies() []*typesv1.AccessPolicy
	// Changed returns a channel closed at the next change of Policies.
	Changed() <-chan struct{}
}

// SetDefaults fills in what is unset; the servers do it on their copies,
// and a caller that uses the Config's own methods does it first.
func (c *Config) SetDefaults() { c.setDefaults() }

func (c *Config) setDefaults() {
	if c.AgentTTL == 0 {
		c.AgentTTL = time.Hour
	}
	if c.X509TTL == 0 {
		c.X509TTL = time.Hour
	}
	if c.JWTTTL == 0 {
		c.JWTTTL = 5 * time.Minute
	}
	if c.MinTTL == 0 {
		c.MinTTL = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = hclog.NewNullLogger()
	}
	if c.Changes == nil {
		c.Changes = NewNotifier()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if c.revCache == nil {
		c.revCache = &revocationCache{}
	}
	if c.Acks == nil && c.Store != nil {
		c.Acks = c.Store
	}
}

// Notifier wakes every waiter when something changed.
type Notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewNotifier returns a Notifier.
func NewNotifier() *Notifier { return &Notifier{ch: make(chan struct{})} }

// Wait returns a channel closed at the next Notify.
func (n *Notifier) Wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

// Notify wakes all current waiters.
func (n *Notifier) Notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	close(n.ch)
	n.ch = make(chan struct{})
}

// Metrics are the CA's Prometheus metrics.
type Metrics struct {
	issued        *prometheus.CounterVec
	signDuration  *prometheus.HistogramVec
	refusals      *prometheus.CounterVec
	attestations  *prometheus.CounterVec
	trafficCounts prometheus.Counter
	syncStreams   prometheus.Gauge
}

// NewMetrics registers the API metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_ca_svids_issued_total", Help: "SVIDs issued, by type (x509, jwt, agent).",
		}, []string{"type"}),
		signDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "signet_ca_sign_duration_seconds", Help: "Time to check and sign one SVID request, by type.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
		}, []string{"type"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_ca_refusals_total", Help: "Requests refused, by API method.",
		}, []string{"method"}),
		attestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signet_ca_node_attestations_total", Help: "Node attestations, by method and result.",
		}, []string{"method", "result"}),
		trafficCounts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "signet_ca_traffic_counts_total", Help: "Traffic counts (server, caller, method, minute) services reported through their agents.",
		}),
		syncStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "signet_ca_sync_streams", Help: "Agents' Sync streams open on this replica.",
		}),
	}
	reg.MustRegister(m.issued, m.signDuration, m.refusals, m.attestations, m.trafficCounts, m.syncStreams)
	return m
}

// BundleProto returns the protobuf form of b.
func BundleProto(b authority.Bundle) (*typesv1.Bundle, error) {
	pb := &typesv1.Bundle{TrustDomain: b.TrustDomain.Name(), Sequence: b.Sequence, RefreshHintSeconds: 300}
	for _, r := range b.X509Roots {
		pb.X509Authorities = append(pb.X509Authorities, r.Raw)
	}
	for _, k := range b.JWTKeys {
		der, err := x509.MarshalPKIXPublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("api: marshal JWT key %s: %w", k.ID, err)
		}
		pb.JwtAuthorities = append(pb.JwtAuthorities, &typesv1.JWTKey{KeyId: k.ID, PublicKey: der, ExpiresAt: k.NotAfter.Unix()})
	}
	return pb, nil
}

// auditOrFail writes records; if that fails the caller must not get a
// success it has no record of.
func (c *Config) auditOrFail(recs ...audit.Record) error {
	if err := c.Audit.Write(recs...); err != nil {
		c.Log.Error("audit write failed", "error", err)
		if diskFull(err) {
			return status.Error(codes.Unavailable, "audit log unavailable: "+diskFullMessage)
		}
		return status.Error(codes.Internal, "audit log unavailable")
	}
	return nil
}

// diskFullMessage is what callers are told when the CA's disk is full: a
// cause they can act on, and no detail of the CA's files.
const diskFullMessage = "the CA's disk is full (no space left on device)"

// diskFull says whether err is a full disk (of the audit log or the
// SQLite database).
func diskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || strings.Contains(err.Error(), "no space left on device") ||
		strings.Contains(err.Error(), "database or disk is full")
}

// auditUnauthenticated records the refusal of a caller that proved no
// identity: in full up to a limit per source address, then counted (see
// audit.Unauthenticated), so that anyone who can reach the CA cannot fill
// its disk.
func (c *Config) auditUnauthenticated(ctx context.Context, rec audit.Record) error {
	src := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		src = p.Addr.String()
		if host, _, err := net.SplitHostPort(src); err == nil {
			src = host
		}
	}
	if c.Unauthenticated == nil {
		rec.Source = src
		return c.auditOrFail(rec)
	}
	if err := c.Unauthenticated.Write(src, rec); err != nil {
		c.Log.Error("audit write failed", "error", err)
		return status.Error(codes.Internal, "audit log unavailable")
	}
	return nil
}

// refuse audits a refusal and returns the gRPC error for it.
func (c *Config) refuse(method string, code codes.Code, rec audit.Record) error {
	return c.refuseAs(method, code, rec, "", nil)
}

// refuseAs is refuse with a reason the agent acts on (internal/refusal).
func (c *Config) refuseAs(method string, code codes.Code, rec audit.Record, reason string, metadata map[string]string) error {
	rec.Event = audit.RequestRefuse
	rec.Result = audit.Refused
	c.Metrics.refusals.WithLabelValues(method).Inc()
	if err := c.auditOrFail(rec); err != nil {
		return err
	}
	return refusalError(code, rec.Reason, reason, metadata)
}

// refuseUnauthenticated is refuse for a caller that proved no identity.
func (c *Config) refuseUnauthenticated(ctx context.Context, method string, code codes.Code, rec audit.Record) error {
	rec.Event = audit.RequestRefuse
	rec.Result = audit.Refused
	c.Metrics.refusals.WithLabelValues(method).Inc()
	if err := c.auditUnauthenticated(ctx, rec); err != nil {
		return err
	}
	return status.Error(code, rec.Reason)
}

func refusalError(code codes.Code, msg, reason string, metadata map[string]string) error {
	if reason == "" {
		return status.Error(code, msg)
	}
	return refusal.Error(code, msg, reason, metadata)
}

// internal logs err and returns a gRPC error that does not leak details.
func (c *Config) internal(ctx context.Context, what string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled) {
		return status.Error(codes.Canceled, what+": canceled")
	}
	c.Log.Error(what, "error", err)
	if diskFull(err) {
		return status.Error(codes.Unavailable, what+" failed: "+diskFullMessage)
	}
	return status.Error(codes.Internal, what+" failed")
}
