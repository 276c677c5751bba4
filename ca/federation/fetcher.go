package federation

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"github.com/signet-id/signet/ca/audit"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Store keeps the federation relationships and their bundles.
type Store interface {
	ListFederations(ctx context.Context) ([]*typesv1.FederatedTrustDomain, error)
	PutFederation(ctx context.Context, f *typesv1.FederatedTrustDomain) error
	DeleteFederation(ctx context.Context, td string) error
}

// Fetcher keeps the federated trust domains: it is the one writer of the
// store's relationships (the admin API goes through Put and Delete), it
// fetches each bundle when due, and it holds the bundles for the agent
// API. A failed fetch keeps the last bundle: nothing breaks while an
// endpoint is away.
type Fetcher struct {
	store Store
	log   hclog.Logger
	// Now is the clock; tests replace it.
	Now func() time.Time
	// OnFetch, if set, is told of every fetch (trust domain, error).
	OnFetch func(td string, err error)
	audit   *audit.Log

	kick    chan struct{}
	writeMu sync.Mutex // serializes writes of relationships

	mu       sync.Mutex
	failures map[string]int
	bundles  []*typesv1.Bundle
	key      string
	changed  chan struct{}
}

// NewFetcher returns a fetcher of the relationships in store; every
// fetched bundle that differs from the one before is audited
// (federation.bundle).
func NewFetcher(store Store, log hclog.Logger, auditLog *audit.Log) *Fetcher {
	return &Fetcher{store: store, log: log, audit: auditLog, Now: time.Now, kick: make(chan struct{}, 1), failures: map[string]int{}, changed: make(chan struct{})}
}

// Load reads the stored bundles, so that agents get them before the
// first fetch.
func (f *Fetcher) Load(ctx context.Context) error {
	all, err := f.store.ListFederations(ctx)
	if err != nil {
		return err
	}
	f.publish(all)
	return nil
}

// Bundles returns the federated trust domains' bundles (sorted by trust
// domain), and a key that changes when they do.
func (f *Fetcher) Bundles() ([]*typesv1.Bundle, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bundles, f.key
}

// Changed is closed when the bundles change.
func (f *Fetcher) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func (f *Fetcher) publish(all []*typesv1.FederatedTrustDomain) {
	var bundles []*typesv1.Bundle
	var key strings.Builder
	for _, r := range all {
		if b := r.GetBundle(); b != nil {
			bundles = append(bundles, b)
			raw, _ := proto.MarshalOptions{Deterministic: true}.Marshal(b)
			fmt.Fprintf(&key, "%s:%x;", b.GetTrustDomain(), raw)
		}
	}
	sort.Slice(bundles, func(i, j int) bool { return bundles[i].GetTrustDomain() < bundles[j].GetTrustDomain() })
	f.mu.Lock()
	defer f.mu.Unlock()
	if key.String() == f.key {
		return
	}
	f.bundles, f.key = bundles, key.String()
	close(f.changed)
	f.changed = make(chan struct{})
}

// List returns the relationships.
func (f *Fetcher) List(ctx context.Context) ([]*typesv1.FederatedTrustDomain, error) {
	return f.store.ListFederations(ctx)
}

// Put creates or replaces a relationship (already checked) and fetches its
// bundle at once, in the background.
func (f *Fetcher) Put(ctx context.Context, r *typesv1.FederatedTrustDomain) (*typesv1.FederatedTrustDomain, error) {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	r = proto.Clone(r).(*typesv1.FederatedTrustDomain)
	r.RefreshedAt, r.NextRefreshAt, r.LastError = 0, 0, ""
	if err := f.store.PutFederation(ctx, r); err != nil {
		return nil, err
	}
	f.mu.Lock()
	delete(f.failures, r.GetTrustDomain())
	f.mu.Unlock()
	f.reload(ctx)
	f.Kick()
	return r, nil
}

// Delete forgets a relationship; agents drop its bundle.
func (f *Fetcher) Delete(ctx context.Context, td string) error {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	if err := f.store.DeleteFederation(ctx, td); err != nil {
		return err
	}
	f.reload(ctx)
	return nil
}

// Reload reads the relationships again (after the store changed under
// the fetcher: another replica's write).
func (f *Fetcher) Reload(ctx context.Context) { f.reload(ctx) }

func (f *Fetcher) reload(ctx context.Context) {
	all, err := f.store.ListFederations(ctx)
	if err != nil {
		f.log.Error("could not read the federated trust domains", "error", err)
		return
	}
	f.publish(all)
}

// Kick makes Run look at every relationship now.
func (f *Fetcher) Kick() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run fetches every bundle when it is due until ctx ends.
func (f *Fetcher) Run(ctx context.Context) {
	for {
		next := f.round(ctx)
		wait := time.Minute
		if !next.IsZero() {
			wait = min(max(next.Sub(f.Now()), 0), wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-f.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// round fetches the due bundles and returns when the next one is due.
func (f *Fetcher) round(ctx context.Context) time.Time {
	all, err := f.store.ListFederations(ctx)
	if err != nil {
		if ctx.Err() == nil {
			f.log.Error("could not read the federated trust domains", "error", err)
		}
		return f.Now().Add(10 * time.Second)
	}
	var next time.Time
	for _, r := range all {
		due := time.Unix(r.GetNextRefreshAt(), 0)
		if r.GetNextRefreshAt() == 0 || !f.Now().Before(due) {
			due = f.refresh(ctx, r)
		}
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	return next
}

// refresh fetches one bundle and stores the result, unless the
// relationship changed or went away meanwhile; it returns when to fetch
// again.
func (f *Fetcher) refresh(ctx context.Context, r *typesv1.FederatedTrustDomain) time.Time {
	td := r.GetTrustDomain()
	b, err := Fetch(ctx, r)
	if ctx.Err() != nil {
		return f.Now()
	}
	if f.OnFetch != nil {
		f.OnFetch(td, err)
	}
	now := f.Now()
	upd := proto.Clone(r).(*typesv1.FederatedTrustDomain)
	var next time.Time
	f.mu.Lock()
	failures := 0
	if err != nil {
		f.failures[td]++
		failures = f.failures[td]
	} else {
		delete(f.failures, td)
	}
	f.mu.Unlock()
	if err != nil {
		// 10 s, 20 s, 40 s... up to the bundle's own refresh interval.
		limit := DefaultRefresh
		if r.GetBundle() != nil {
			if old, err := FromProto(r.GetBundle()); err == nil {
				limit = RefreshAfter(old)
			}
		}
		next = now.Add(min(10*time.Second<<min(failures-1, 10), limit))
		upd.LastError = err.Error()
		f.log.Warn("could not fetch a federated bundle; keeping the last one", "trust_domain", td, "url", r.GetBundleEndpointUrl(), "error", err, "retry_in", next.Sub(now).Round(time.Second))
	} else {
		pb, perr := ToProto(b)
		if perr != nil {
			upd.LastError = perr.Error()
			next = now.Add(DefaultRefresh)
		} else {
			if !proto.Equal(pb, r.GetBundle()) {
				f.log.Info("federated bundle changed", "trust_domain", td, "x509_authorities", len(pb.GetX509Authorities()), "jwt_authorities", len(pb.GetJwtAuthorities()))
				rec := audit.Record{Event: audit.FederationBundle, Actor: "signet-ca", TrustDomain: td, URL: r.GetBundleEndpointUrl(), Result: audit.Success,
					Reason: fmt.Sprintf("%d X.509 authorities, %d JWT authorities", len(pb.GetX509Authorities()), len(pb.GetJwtAuthorities()))}
				if err := f.audit.Write(rec); err != nil {
					f.log.Error("could not write the audit record of a federated bundle", "trust_domain", td, "error", err)
				}
			}
			upd.Bundle, upd.LastError = pb, ""
			upd.RefreshedAt = now.Unix()
			next = now.Add(RefreshAfter(b))
		}
	}
	upd.NextRefreshAt = next.Unix()
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	cur, err := f.current(ctx, td)
	if err != nil || cur == nil || !sameEndpoint(cur, r) {
		// Deleted or replaced while we fetched (or not yet seen by the
		// store's informer): looked at again shortly.
		return now.Add(time.Second)
	}
	if err := f.store.PutFederation(ctx, upd); err != nil {
		f.log.Error("could not store a federated bundle", "trust_domain", td, "error", err)
		return now.Add(10 * time.Second)
	}
	f.reload(ctx)
	return next
}

func (f *Fetcher) current(ctx context.Context, td string) (*typesv1.FederatedTrustDomain, error) {
	all, err := f.store.ListFederations(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range all {
		if r.GetTrustDomain() == td {
			return r, nil
		}
	}
	return nil, nil
}

func sameEndpoint(a, b *typesv1.FederatedTrustDomain) bool {
	return a.GetBundleEndpointUrl() == b.GetBundleEndpointUrl() && a.GetProfile() == b.GetProfile() &&
		a.GetEndpointSpiffeId() == b.GetEndpointSpiffeId() && string(a.GetEndpointCa()) == string(b.GetEndpointCa())
}

func sortKeys(keys []*typesv1.JWTKey) {
	sort.Slice(keys, func(i, j int) bool { return keys[i].GetKeyId() < keys[j].GetKeyId() })
}
