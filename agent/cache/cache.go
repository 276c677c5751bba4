// Package cache holds what the agent knows: the entries the CA gave it, the
// trust bundle, and an X509-SVID (with its node-generated key) per entry. It
// does no I/O. Readers take an immutable Snapshot and a channel closed at the
// next change, so a Workload API stream needs no lock and no polling.
package cache

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/revocation"
)

// Bundle is the trust domain's bundle as the agent serves it.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	X509Roots   []*x509.Certificate
	JWTKeys     map[string]crypto.PublicKey
	Sequence    uint64

	// X509DER is the roots' DER, concatenated, as the Workload API sends it.
	X509DER []byte
	// JWKS is the JWT bundle as a JWKS document.
	JWKS []byte
}

// NewBundle builds a Bundle and its wire forms.
func NewBundle(td spiffeid.TrustDomain, roots []*x509.Certificate, jwtKeys map[string]crypto.PublicKey, seq uint64) (*Bundle, error) {
	b := &Bundle{TrustDomain: td, X509Roots: roots, JWTKeys: jwtKeys, Sequence: seq}
	for _, r := range roots {
		b.X509DER = append(b.X509DER, r.Raw...)
	}
	jb := jwtbundle.FromJWTAuthorities(td, jwtKeys)
	var err error
	if b.JWKS, err = jb.Marshal(); err != nil {
		return nil, err
	}
	if b.JWKS == nil {
		b.JWKS, _ = json.Marshal(map[string]any{"keys": []any{}})
	}
	return b, nil
}

// BundleFromProto converts a bundle from the CA (a federated trust
// domain's: this one's goes through the agent's own checks).
func BundleFromProto(pb *typesv1.Bundle) (*Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(pb.GetTrustDomain())
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	for _, der := range pb.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("X.509 authority: %w", err)
		}
		roots = append(roots, c)
	}
	keys := map[string]crypto.PublicKey{}
	for _, k := range pb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("JWT authority %q: %w", k.GetKeyId(), err)
		}
		keys[k.GetKeyId()] = pub
	}
	return NewBundle(td, roots, keys, pb.GetSequence())
}

// SVID is an X509-SVID and its private key, kept in wire form only: with
// thousands of SVIDs, parsed certificates and key objects would be most of
// the agent's memory, and the Workload API sends DER anyway.
type SVID struct {
	// ChainDER is the SVID and its intermediate, DER, concatenated.
	ChainDER []byte
	// KeyPKCS8 is the private key's PKCS#8 DER.
	KeyPKCS8 []byte
	NotAfter time.Time
	// RotateAt is when a new SVID should replace this one: half its life,
	// with jitter.
	RotateAt time.Time
}

// MinRotation is the shortest time between two mints of one SVID,
// whatever its lifetime: an SVID that lives a few seconds (its CA's
// intermediate about to expire caps it, or a CA that accepts very short
// lifetimes) is not re-minted in a tight loop.
const MinRotation = 5 * time.Second

// RotationTime returns when an SVID received at now should be replaced: at
// half of its remaining life, moved by up to 5% of it either way, so that
// many SVIDs issued together do not all come due together, and not before
// MinRotation. (NotBefore is backdated for clock skew, so it is not where
// the life starts.)
func RotationTime(notAfter, now time.Time) time.Time {
	return rotateAfter(notAfter.Sub(now), now)
}

// RotationAfter returns when an SVID with this validity, received at
// received, should be replaced: RotationTime over the SVID's own lifetime
// (NotAfter - NotBefore - clock.Backdate, by the CA's clock) counted from
// when it was received (by this host's clock), so that a clock here that
// is minutes off the CA's moves nothing: an SVID is never held past its
// expiry, nor re-minted in a loop.
func RotationAfter(notBefore, notAfter, received time.Time) time.Time {
	life := notAfter.Sub(notBefore) - clock.Backdate
	if life <= 0 {
		return RotationTime(notAfter, received)
	}
	return rotateAfter(life, received)
}

func rotateAfter(life time.Duration, now time.Time) time.Time {
	jitter := time.Duration((rand.Float64()*0.1 - 0.05) * float64(life))
	return now.Add(max(life/2+jitter, MinRotation))
}

// Item is one entry and, once minted, its SVID. Items are immutable.
type Item struct {
	Entry entry.Entry
	SVID  *SVID
	// Proto is the Workload API form of the SVID, with the bundle; nil until
	// the SVID exists.
	Proto *workload.X509SVID
	// bundle is the bundle Proto was built with.
	bundle *Bundle
}

// Snapshot is the cache's state at one moment. It is immutable.
type Snapshot struct {
	Bundle *Bundle
	// Federated are the federated trust domains' bundles; a workload gets
	// those its entries federate with (FederatedFor).
	Federated map[spiffeid.TrustDomain]*Bundle
	// Policies are the access policies of this node's workloads.
	Policies []*typesv1.AccessPolicy
	// Revocations are the revocations in force in the trust domain, and
	// DenyList the same signed by the CA.
	Revocations []*typesv1.Revocation
	DenyList    string
	// Items are sorted by SPIFFE ID, then entry ID.
	Items []*Item
	// Synced is true once the first sync from the CA was applied and every
	// entry had its first minting attempt.
	Synced bool

	// keys holds every "type:key" that some entry's selectors use.
	keys map[string]bool

	mu      sync.Mutex
	matches map[string][]*Item
	memo    map[string]any
}

// Memo returns the value stored under key in this snapshot, computing it
// with fn the first time. Callers use it for answers derived from the
// snapshot alone, such as a marshaled response.
func (s *Snapshot) Memo(key string, fn func() any) any {
	s.mu.Lock()
	if v, ok := s.memo[key]; ok {
		s.mu.Unlock()
		return v
	}
	s.mu.Unlock()
	v := fn()
	s.mu.Lock()
	if s.memo == nil || len(s.memo) > 1024 {
		s.memo = map[string]any{}
	}
	s.memo[key] = v
	s.mu.Unlock()
	return v
}

// FederatedFor returns the federated bundles that entries federate with
// and the agent holds, sorted by trust domain. A trust domain without a
// bundle is left out; the entries work without it.
func (s *Snapshot) FederatedFor(entries []entry.Entry) []*Bundle {
	var out []*Bundle
	seen := map[spiffeid.TrustDomain]bool{}
	for _, e := range entries {
		for _, td := range e.FederatesWith {
			if b := s.Federated[td]; b != nil && !seen[td] {
				seen[td] = true
				out = append(out, b)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain.Name() < out[j].TrustDomain.Name() })
	return out
}

// UsesKey reports whether any entry has a selector of this type and key,
// such as ("unix", "sha256"): attestors skip work no entry asks for.
func (s *Snapshot) UsesKey(typ, key string) bool { return s.keys[typ+":"+key] }

// Match returns the items with an SVID whose entry's selectors are all among
// sels. Results are cached per snapshot.
func (s *Snapshot) Match(sels []selector.Selector) []*Item {
	canon := selector.Canonical(sels)
	keyParts := make([]string, len(canon))
	for i, c := range canon {
		keyParts[i] = c.String()
	}
	key := strings.Join(keyParts, "\x00")
	s.mu.Lock()
	if m, ok := s.matches[key]; ok {
		s.mu.Unlock()
		return m
	}
	s.mu.Unlock()
	have := make(map[selector.Selector]struct{}, len(canon))
	for _, c := range canon {
		have[c] = struct{}{}
	}
	pod := inPod(canon)
	var out []*Item
	for _, it := range s.Items {
		if it.SVID != nil && matches(have, pod, it.Entry.Selectors) {
			out = append(out, it)
		}
	}
	s.mu.Lock()
	if s.matches == nil || len(s.matches) > 1024 {
		s.matches = map[string][]*Item{}
	}
	s.matches[key] = out
	s.mu.Unlock()
	return out
}

// MatchEntries is Match without the need for an SVID.
func (s *Snapshot) MatchEntries(sels []selector.Selector) []entry.Entry {
	have := make(map[selector.Selector]struct{}, len(sels))
	for _, c := range sels {
		have[c] = struct{}{}
	}
	pod := inPod(sels)
	var out []entry.Entry
	for _, it := range s.Items {
		if matches(have, pod, it.Entry.Selectors) {
			out = append(out, it.Entry)
		}
	}
	return out
}

// matches reports whether an entry's selectors are all among a caller's.
// A process in a pod (it has k8s: selectors) matches only entries that
// name at least one k8s: selector: an entry of unix: selectors alone is
// for host processes, and a root container with a binary at the same path
// must not pass for one.
func matches(have map[selector.Selector]struct{}, pod bool, want []selector.Selector) bool {
	if pod && !inPod(want) {
		return false
	}
	return hasAll(have, want)
}

func inPod(sels []selector.Selector) bool {
	for _, s := range sels {
		if s.Type == "k8s" {
			return true
		}
	}
	return false
}

func hasAll(have map[selector.Selector]struct{}, want []selector.Selector) bool {
	for _, w := range want {
		if _, ok := have[w]; !ok {
			return false
		}
	}
	return true
}

// Cache is the agent's state. It is safe for concurrent use.
type Cache struct {
	mu       sync.Mutex
	items    map[string]*Item
	bundle   *Bundle
	fed      map[spiffeid.TrustDomain]*Bundle
	policies []*typesv1.AccessPolicy
	revs     []*typesv1.Revocation
	denyList string
	synced   bool
	snap     *Snapshot
	changed  chan struct{}
}

// New returns a cache serving bundle until the CA sends another.
func New(bundle *Bundle) *Cache {
	c := &Cache{items: map[string]*Item{}, bundle: bundle, changed: make(chan struct{})}
	c.publishLocked()
	return c
}

// Snapshot returns the current state and a channel closed when it changes.
func (c *Cache) Snapshot() (*Snapshot, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snap, c.changed
}

// publishLocked makes a new snapshot of the state and wakes watchers.
func (c *Cache) publishLocked() {
	items := make([]*Item, 0, len(c.items))
	for id, it := range c.items {
		if it.SVID != nil && (it.Proto == nil || it.bundle != c.bundle) {
			it = &Item{Entry: it.Entry, SVID: it.SVID, Proto: svidProto(it.Entry, it.SVID, c.bundle), bundle: c.bundle}
			c.items[id] = it
		}
		items = append(items, it)
	}
	sort.Slice(items, func(i, j int) bool {
		a, b := items[i].Entry, items[j].Entry
		if a.SPIFFEID != b.SPIFFEID {
			return a.SPIFFEID.String() < b.SPIFFEID.String()
		}
		return a.ID < b.ID
	})
	keys := map[string]bool{}
	for _, it := range items {
		for _, sel := range it.Entry.Selectors {
			keys[sel.Type+":"+sel.Key()] = true
		}
	}
	c.snap = &Snapshot{Bundle: c.bundle, Federated: c.fed, Policies: c.policies, Revocations: c.revs, DenyList: c.denyList, Items: items, Synced: c.synced, keys: keys}
	close(c.changed)
	c.changed = make(chan struct{})
}

func svidProto(e entry.Entry, s *SVID, b *Bundle) *workload.X509SVID {
	return &workload.X509SVID{SpiffeId: e.SPIFFEID.String(), X509Svid: s.ChainDER, X509SvidKey: s.KeyPKCS8, Bundle: b.X509DER}
}

// Update is one sync message from the CA, already validated.
type Update struct {
	// Full replaces every stored entry with Entries.
	Full    bool
	Entries []entry.Entry
	Deleted []string
	// PodsFull replaces every pod entry (Kubernetes mode: identities
	// derived from the node's pods, IDs starting "k8s:") with PodEntries.
	PodsFull    bool
	PodEntries  []entry.Entry
	PodsDeleted []string
	// Bundle, if not nil, replaces the bundle.
	Bundle *Bundle
	// Federated replaces the federated bundles when FederatedSet.
	Federated    map[spiffeid.TrustDomain]*Bundle
	FederatedSet bool
	// Policies replace the access policies when PoliciesSet.
	Policies    []*typesv1.AccessPolicy
	PoliciesSet bool
	// Revocations and DenyList replace the revocations when
	// RevocationsSet.
	Revocations    []*typesv1.Revocation
	DenyList       string
	RevocationsSet bool
}

// Apply applies a sync message. An entry whose identity-relevant fields
// changed loses its SVID, so that it is minted again.
func (c *Cache) Apply(u Update) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, set := range []struct {
		full    bool
		pods    bool
		entries []entry.Entry
	}{{u.Full, false, u.Entries}, {u.PodsFull, true, u.PodEntries}} {
		if !set.full {
			continue
		}
		keep := make(map[string]bool, len(set.entries))
		for _, e := range set.entries {
			keep[e.ID] = true
		}
		for id := range c.items {
			if entry.IsPodEntryID(id) == set.pods && !keep[id] {
				delete(c.items, id)
			}
		}
	}
	for _, id := range append(u.Deleted, u.PodsDeleted...) {
		delete(c.items, id)
	}
	for _, e := range append(u.Entries, u.PodEntries...) {
		old, ok := c.items[e.ID]
		if ok && old.SVID != nil && sameIdentity(old.Entry, e) {
			c.items[e.ID] = &Item{Entry: e, SVID: old.SVID, Proto: old.Proto, bundle: old.bundle}
			continue
		}
		c.items[e.ID] = &Item{Entry: e}
	}
	if u.Bundle != nil {
		c.bundle = u.Bundle
	}
	if u.PoliciesSet {
		c.policies = u.Policies
	}
	if u.FederatedSet {
		c.fed = u.Federated
	}
	if u.RevocationsSet {
		c.revs, c.denyList = u.Revocations, u.DenyList
		c.dueRevokedLocked()
	}
	c.publishLocked()
}

// dueRevokedLocked makes the SVIDs that a revocation covers due at once,
// so that workloads get new ones (issued after the revocation, under the
// CA's current keys) in the next minting round instead of at half life.
func (c *Cache) dueRevokedLocked() {
	set := revocation.New(c.revs)
	if set.Len() == 0 {
		return
	}
	for id, it := range c.items {
		if it.SVID == nil {
			continue
		}
		chain, err := x509.ParseCertificates(it.SVID.ChainDER)
		// Re-minted at once, even before peers enforce it (a CA key's
		// revocation gives the time to re-issue).
		if err != nil || set.Covers(chain) == nil {
			continue
		}
		svid := *it.SVID
		svid.RotateAt = time.Time{}
		c.items[id] = &Item{Entry: it.Entry, SVID: &svid, Proto: it.Proto, bundle: it.bundle}
	}
}

func sameIdentity(a, b entry.Entry) bool {
	if a.SPIFFEID != b.SPIFFEID || a.X509TTL != b.X509TTL || len(a.DNSNames) != len(b.DNSNames) {
		return false
	}
	for i := range a.DNSNames {
		if a.DNSNames[i] != b.DNSNames[i] {
			return false
		}
	}
	return true
}

// Due returns the entries that need an SVID at now (none yet, or past its
// rotation time), and the earliest future rotation time (zero if none).
func (c *Cache) Due(now time.Time) ([]entry.Entry, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var due []entry.Entry
	var next time.Time
	for _, it := range c.items {
		switch {
		case it.Entry.WorkloadKey:
			// Its workload makes its own key and asks for it to be signed;
			// the agent holds none.
		case it.SVID == nil || !now.Before(it.SVID.RotateAt):
			due = append(due, it.Entry)
		case next.IsZero() || it.SVID.RotateAt.Before(next):
			next = it.SVID.RotateAt
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].ID < due[j].ID })
	return due, next
}

// SetSVIDs stores minted SVIDs by entry id; SVIDs for entries that went
// away meanwhile are dropped.
func (c *Cache) SetSVIDs(svids map[string]*SVID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, s := range svids {
		if it, ok := c.items[id]; ok {
			c.items[id] = &Item{Entry: it.Entry, SVID: s}
		}
	}
	c.publishLocked()
}

// MarkSynced records that the first sync and minting round are done.
func (c *Cache) MarkSynced() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		c.synced = true
		c.publishLocked()
	}
}

// Entry returns one entry by id.
func (c *Cache) Entry(id string) (entry.Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.items[id]
	if !ok {
		return entry.Entry{}, false
	}
	return it.Entry, true
}
