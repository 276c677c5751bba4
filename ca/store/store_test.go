package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/pgenv"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	parent1 = spiffeid.RequireFromPath(td, "/signet/agent/join/n1")
	parent2 = spiffeid.RequireFromPath(td, "/signet/agent/join/n2")
	now     = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgenv.StopShared()
	os.Exit(code)
}

// eachBackend runs a test on SQLite and on PostgreSQL: the two stores
// behave the same. loc is where the store is, to open (and reopen).
func eachBackend(t *testing.T, test func(t *testing.T, loc string)) {
	t.Run("sqlite", func(t *testing.T) { test(t, filepath.Join(t.TempDir(), "s.db")) })
	t.Run("postgres", func(t *testing.T) { test(t, pgenv.Database(t)) })
}

func open(t *testing.T, path string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mk(path string, parent spiffeid.ID, uid int) entry.Entry {
	return entry.Entry{
		SPIFFEID:  spiffeid.RequireFromPath(td, path),
		ParentID:  parent,
		Selectors: []selector.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", uid)}},
		DNSNames:  []string{"a.local"},
		X509TTL:   30 * time.Minute,
	}
}

func TestEntriesRoundTripAndPersist(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		b := mk("/b", parent2, 2)
		b.WorkloadKey = true
		created, err := s.CreateEntries(ctx, []entry.Entry{mk("/a", parent1, 1), b}, now)
		if err != nil {
			t.Fatal(err)
		}
		if created[0].ID == "" || created[0].Revision != 1 || created[1].Revision != 1 {
			t.Fatalf("created = %+v", created)
		}
		s.Close()

		s = open(t, loc) // reopen: migrations are idempotent, data persists
		got, err := s.FetchEntry(ctx, created[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.SPIFFEID != created[0].SPIFFEID || got.X509TTL != 30*time.Minute || len(got.DNSNames) != 1 || !got.CreatedAt.Equal(now) || got.WorkloadKey {
			t.Errorf("FetchEntry = %+v; want %+v", got, created[0])
		}
		if got, err := s.FetchEntry(ctx, created[1].ID); err != nil || !got.WorkloadKey {
			t.Errorf("FetchEntry(workload key) = %+v, %v; want WorkloadKey kept", got, err)
		}
		if _, err := s.FetchEntry(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("FetchEntry(nope) error = %v; want ErrNotFound", err)
		}
		got2, err := s.FetchEntries(ctx, []string{created[0].ID, "nope", created[1].ID})
		if err != nil || len(got2) != 2 || got2[created[1].ID].SPIFFEID != created[1].SPIFFEID {
			t.Fatalf("FetchEntries = %v, %v; want the two existing entries", got2, err)
		}
		sel := selector.Selector{Type: "unix", Value: "uid:2"}
		list, next, err := s.ListEntries(ctx, store.ListFilter{Selectors: []selector.Selector{sel}})
		if err != nil || len(list) != 1 || list[0].ID != created[1].ID || next != "" {
			t.Fatalf("ListEntries(selector uid:2) = %v, %q, %v", list, next, err)
		}
		list, _, _ = s.ListEntries(ctx, store.ListFilter{ParentID: parent1.String()})
		if len(list) != 1 || list[0].ID != created[0].ID {
			t.Fatalf("ListEntries(parent1) = %v", list)
		}
	})
}

func TestListPages(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		var es []entry.Entry
		for i := 0; i < 25; i++ {
			es = append(es, mk(fmt.Sprintf("/w/%d", i), parent1, i))
		}
		if _, err := s.CreateEntries(ctx, es, now); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		f := store.ListFilter{PageSize: 10}
		pages := 0
		for {
			page, next, err := s.ListEntries(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			pages++
			for _, e := range page {
				if seen[e.ID] {
					t.Fatalf("entry %s on two pages", e.ID)
				}
				seen[e.ID] = true
			}
			if next == "" {
				break
			}
			f.PageToken = next
		}
		if len(seen) != 25 || pages != 3 {
			t.Fatalf("saw %d entries on %d pages; want 25 on 3", len(seen), pages)
		}
	})
}

func TestEntriesSince(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		c1, _ := s.CreateEntries(ctx, []entry.Entry{mk("/a", parent1, 1), mk("/b", parent2, 2)}, now)
		full, err := s.EntriesSince(ctx, parent1.String(), 0)
		if err != nil || !full.Full || len(full.Entries) != 1 || full.Revision != 1 {
			t.Fatalf("EntriesSince(0) = %+v, %v", full, err)
		}
		c2, _ := s.CreateEntries(ctx, []entry.Entry{mk("/c", parent1, 3)}, now)
		if _, err := s.DeleteEntries(ctx, []string{c1[0].ID}, now); err != nil {
			t.Fatal(err)
		}
		// Moving an entry to another parent is a deletion for the old one.
		moved := c2[0]
		moved.ParentID = parent2
		if _, err := s.UpdateEntries(ctx, []entry.Entry{moved}, now); err != nil {
			t.Fatal(err)
		}
		ch, err := s.EntriesSince(ctx, parent1.String(), full.Revision)
		if err != nil {
			t.Fatal(err)
		}
		if ch.Full || len(ch.Entries) != 0 || len(ch.Deleted) != 2 {
			t.Fatalf("EntriesSince(parent1, %d) = %+v; want two deletions", full.Revision, ch)
		}
		ch2, _ := s.EntriesSince(ctx, parent2.String(), full.Revision)
		if len(ch2.Entries) != 1 || ch2.Entries[0].ID != moved.ID {
			t.Fatalf("EntriesSince(parent2) = %+v; want the moved entry", ch2)
		}
		// A revision from the future (another database) gets a full sync.
		if ch, _ := s.EntriesSince(ctx, parent1.String(), 1000); !ch.Full {
			t.Error("EntriesSince(future revision) is not full")
		}
		// Once deletion history is pruned, older revisions get a full sync.
		if err := s.PruneDeleted(ctx, now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if ch, _ := s.EntriesSince(ctx, parent1.String(), full.Revision); !ch.Full || len(ch.Entries) != 0 {
			t.Errorf("EntriesSince after prune = %+v; want full and empty", ch)
		}
	})
}

func TestBatchAllOrNothing(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		if _, err := s.CreateEntries(ctx, []entry.Entry{mk("/a", parent1, 1)}, now); err != nil {
			t.Fatal(err)
		}
		_, err := s.CreateEntries(ctx, []entry.Entry{mk("/b", parent1, 2), mk("/a", parent1, 1)}, now)
		var be *store.BatchError
		var ce *store.ConflictError
		if !errors.As(err, &be) || be.Index != 1 || !errors.As(err, &ce) {
			t.Fatalf("duplicate batch error = %v; want a conflict at index 1", err)
		}
		list, _, _ := s.ListEntries(ctx, store.ListFilter{})
		if len(list) != 1 {
			t.Fatalf("%d entries after a failed batch; want 1", len(list))
		}
		if _, err := s.DeleteEntries(ctx, []string{list[0].ID, "missing"}, now); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("delete with a missing id: %v", err)
		}
		if list, _, _ := s.ListEntries(ctx, store.ListFilter{}); len(list) != 1 {
			t.Fatal("a failed delete batch removed an entry")
		}
		if rev, _ := s.Revision(ctx); rev != 1 {
			t.Errorf("revision %d after failed batches; want 1", rev)
		}
	})
}

func TestJoinTokens(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		if err := s.CreateJoinToken(ctx, "tok", "n1", now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateJoinToken(ctx, "old", "n2", now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if node, err := s.ConsumeJoinToken(ctx, "tok", now); err != nil || node != "n1" {
			t.Fatalf("ConsumeJoinToken = %q, %v", node, err)
		}
		if _, err := s.ConsumeJoinToken(ctx, "tok", now); !errors.Is(err, store.ErrTokenUsed) {
			t.Errorf("second use: %v; want ErrTokenUsed", err)
		}
		if _, err := s.ConsumeJoinToken(ctx, "old", now.Add(time.Minute)); !errors.Is(err, store.ErrTokenExpired) {
			t.Errorf("expired: %v; want ErrTokenExpired", err)
		}
		if _, err := s.ConsumeJoinToken(ctx, "unknown", now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("unknown: %v; want ErrNotFound", err)
		}
	})
}

func TestAgents(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		a := store.Agent{SPIFFEID: parent1.String(), NodeName: "n1", AttestationType: "join_token", Serial: "01", ExpiresAt: now.Add(time.Hour), AttestedAt: now}
		if prev, err := s.RegisterAgent(ctx, a); err != nil || prev != nil {
			t.Fatalf("RegisterAgent = %v, %v", prev, err)
		}
		if err := s.RenewAgent(ctx, a.SPIFFEID, "01", "02", now.Add(2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		got, _ := s.FetchAgent(ctx, a.SPIFFEID)
		if !got.AcceptsSerial("01") || !got.AcceptsSerial("02") || got.AcceptsSerial("03") {
			t.Errorf("after renewal: serial %q prev %q", got.Serial, got.PrevSerial)
		}
		if err := s.RenewAgent(ctx, a.SPIFFEID, "99", "04", now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("renew from an unknown serial: %v", err)
		}
		a.Serial = "10"
		prev, err := s.RegisterAgent(ctx, a)
		if err != nil || prev == nil || prev.Serial != "02" {
			t.Fatalf("re-register: prev = %+v, %v; want the replaced agent", prev, err)
		}
		got, _ = s.FetchAgent(ctx, a.SPIFFEID)
		if got.AcceptsSerial("01") || got.AcceptsSerial("02") || !got.AcceptsSerial("10") {
			t.Error("a replaced agent's serials are still accepted")
		}
		if err := s.EvictAgent(ctx, a.SPIFFEID, now); err != nil {
			t.Fatal(err)
		}
		got, _ = s.FetchAgent(ctx, a.SPIFFEID)
		if got.AcceptsSerial("10") || !got.Evicted() {
			t.Error("an evicted agent's serial is accepted")
		}
		if err := s.EvictAgent(ctx, a.SPIFFEID, now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("evicting twice: %v", err)
		}
		if err := s.RenewAgent(ctx, a.SPIFFEID, "10", "11", now); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("an evicted agent renewed: %v", err)
		}
	})
}

// TestListFilters: selectors all must match; IDs pick entries.
func TestListFilters(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		a, b, c := mk("/w/a", parent1, 1), mk("/w/b", parent1, 1), mk("/w/c", parent1, 2)
		a.Selectors = append(a.Selectors, selector.Selector{Type: "unix", Value: "gid:10"})
		created, err := s.CreateEntries(ctx, []entry.Entry{a, b, c}, now)
		if err != nil {
			t.Fatal(err)
		}
		both := []selector.Selector{{Type: "unix", Value: "uid:1"}, {Type: "unix", Value: "gid:10"}}
		if list, _, err := s.ListEntries(ctx, store.ListFilter{Selectors: both}); err != nil || len(list) != 1 || list[0].ID != created[0].ID {
			t.Fatalf("ListEntries(uid:1 and gid:10) = %v, %v; want entry a only", list, err)
		}
		if list, _, err := s.ListEntries(ctx, store.ListFilter{IDs: []string{created[2].ID, "nope"}}); err != nil || len(list) != 1 || list[0].ID != created[2].ID {
			t.Fatalf("ListEntries(ids) = %v, %v; want entry c only", list, err)
		}
	})
}

// TestRevocations: stored with a revision, listed while in force, pruned
// once expired, withdrawn by ID; every change moves the revision (agents
// resync on it); they survive a restart.
func TestRevocations(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		ctx := context.Background()
		s := open(t, loc)
		now := time.Unix(1_800_000_000, 0)
		r1, err := s.PutRevocation(ctx, &typesv1.Revocation{Id: "r1", Serial: "1f", CreatedAt: now.Unix(), ExpiresAt: now.Add(time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		r2, err := s.PutRevocation(ctx, &typesv1.Revocation{Id: "r2", SpiffeId: "spiffe://example.org/x", IssuedBefore: now.Unix(), ExpiresAt: now.Add(2 * time.Hour).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		if r1.GetRevision() == 0 || r2.GetRevision() <= r1.GetRevision() {
			t.Fatalf("revisions %d, %d", r1.GetRevision(), r2.GetRevision())
		}
		if _, err := s.PutRevocation(ctx, &typesv1.Revocation{Id: "r1"}); err == nil {
			t.Fatal("a second revocation with the same ID was stored")
		}
		s.Close()
		s = open(t, loc)
		list := func(at time.Time) []string {
			t.Helper()
			rs, err := s.ListRevocations(ctx, at)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range rs {
				ids = append(ids, r.GetId())
			}
			return ids
		}
		if got := list(now); !slices.Equal(got, []string{"r1", "r2"}) {
			t.Fatalf("in force: %v", got)
		}
		if got := list(now.Add(90 * time.Minute)); !slices.Equal(got, []string{"r2"}) {
			t.Fatalf("in force after r1 expired: %v", got)
		}
		rev, _ := s.Revision(ctx)
		pruned, err := s.PruneRevocations(ctx, now.Add(90*time.Minute))
		if err != nil || !slices.Equal(pruned, []string{"r1"}) {
			t.Fatalf("pruned %v, %v", pruned, err)
		}
		if rev2, _ := s.Revision(ctx); rev2 <= rev {
			t.Error("pruning did not move the revision")
		}
		if pruned, _ := s.PruneRevocations(ctx, now.Add(90*time.Minute)); len(pruned) != 0 {
			t.Errorf("pruned again: %v", pruned)
		}
		if err := s.DeleteRevocation(ctx, "r2"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteRevocation(ctx, "r2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("deleting again: %v", err)
		}
		if got := list(now); len(got) != 0 {
			t.Fatalf("left: %v", got)
		}
	})
}

// TestBundleAcks: an agent's acknowledgement replaces its last one, and
// survives a restart; old ones are pruned.
func TestBundleAcks(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		ctx := context.Background()
		s := open(t, loc)
		now := time.Unix(1_800_000_000, 0)
		put := func(agent string, seq uint64, at time.Time) {
			t.Helper()
			if err := s.PutBundleAck(ctx, &typesv1.BundleAck{AgentId: agent, BundleSequence: seq, X509Authorities: []string{"ab"},
				SvidsByRoot: map[string]uint32{"ab": 3}, AckedAt: at.Unix()}); err != nil {
				t.Fatal(err)
			}
		}
		put("spiffe://example.org/signet/agent/join/n1", 1, now)
		put("spiffe://example.org/signet/agent/join/n2", 1, now.Add(-30*24*time.Hour))
		put("spiffe://example.org/signet/agent/join/n1", 2, now)
		s.Close()
		s = open(t, loc)
		acks, err := s.ListBundleAcks(ctx)
		if err != nil || len(acks) != 2 || acks[0].GetBundleSequence() != 2 || acks[0].GetSvidsByRoot()["ab"] != 3 {
			t.Fatalf("acks after a restart: %v, %v", acks, err)
		}
		if err := s.PruneBundleAcks(ctx, now.Add(-7*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if acks, _ := s.ListBundleAcks(ctx); len(acks) != 1 || acks[0].GetAgentId() != "spiffe://example.org/signet/agent/join/n1" {
			t.Fatalf("after pruning: %v", acks)
		}
	})
}

// CA keys are stored only on top of the set the replica last read: a
// replica that rotated from an older set gets ErrConflict, not the last
// word.
func TestCAKeysConflict(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		ctx := context.Background()
		a, b := open(t, loc), open(t, loc)
		for _, s := range []*store.Store{a, b} {
			if _, _, err := s.LoadCAKeys(ctx); err != nil {
				t.Fatal(err)
			}
		}
		key := func(id string) []store.CAKey {
			return []store.CAKey{{ID: id, Kind: "root", State: "active", KeyPEM: []byte("k"), NotBefore: now, NotAfter: now.Add(time.Hour)}}
		}
		if err := a.SaveCAKeys(ctx, key("a"), 1); err != nil {
			t.Fatal(err)
		}
		if err := b.SaveCAKeys(ctx, key("b"), 1); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("a save over keys the replica never read: %v; want ErrConflict", err)
		}
		keys, _, err := b.LoadCAKeys(ctx)
		if err != nil || len(keys) != 1 || keys[0].ID != "a" {
			t.Fatalf("keys after the refused save = %v, %v; want a's", keys, err)
		}
		if err := b.SaveCAKeys(ctx, key("b"), 2); err != nil {
			t.Fatalf("a save after reading the current keys: %v", err)
		}
		if err := a.SaveCAKeys(ctx, key("a2"), 2); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("a's save over b's: %v; want ErrConflict", err)
		}
	})
}

// Traffic shards: each is taken once, oldest first, by whichever replica
// takes them; shards nobody took within an hour are dropped.
func TestTrafficShards(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		ctx := context.Background()
		a, b := open(t, loc), open(t, loc)
		if got, err := b.TakeTrafficShards(ctx); err != nil || len(got) != 0 {
			t.Fatalf("take from an empty store: %q, %v", got, err)
		}
		if err := a.PutTrafficShard(ctx, "r1", []byte("stale"), now.Add(-2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		for _, c := range []string{"one", "two"} {
			if err := a.PutTrafficShard(ctx, "r1", []byte(c), now); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.TakeTrafficShards(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || string(got[0]) != "one" || string(got[1]) != "two" {
			t.Fatalf("taken %q; want [one two] (the stale shard dropped)", got)
		}
		if got, err := a.TakeTrafficShards(ctx); err != nil || len(got) != 0 {
			t.Fatalf("taken twice: %q, %v", got, err)
		}
		if err := a.PutTrafficShard(ctx, "r2", []byte("three"), now); err != nil {
			t.Fatal(err)
		}
		if got, err := a.TakeTrafficShards(ctx); err != nil || len(got) != 1 || string(got[0]) != "three" {
			t.Fatalf("taken %q, %v; want [three]", got, err)
		}
	})
}

// TestListOrderIsBytewise: lists come in the byte order of their keys on
// both backends, whatever the PostgreSQL database's collation (the test
// databases use ICU's en-US, where punctuation and case weigh less than
// letters).
func TestListOrderIsBytewise(t *testing.T) {
	eachBackend(t, func(t *testing.T, loc string) {
		s := open(t, loc)
		ctx := context.Background()
		nodes := []string{"node1", "node-2", "Node3", "node_4", "node.5", "node10", "nodeA"}
		for i, n := range nodes {
			a := store.Agent{SPIFFEID: "spiffe://example.org/signet/agent/join/" + n, NodeName: n, AttestationType: "join_token",
				Serial: fmt.Sprintf("%02x", i+1), ExpiresAt: now.Add(time.Hour), AttestedAt: now}
			if _, err := s.RegisterAgent(ctx, a); err != nil {
				t.Fatal(err)
			}
		}
		agents, err := s.ListAgents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range agents {
			got = append(got, a.SPIFFEID)
		}
		if !slices.IsSorted(got) || len(got) != len(nodes) {
			t.Errorf("agents listed as %v, want the %d IDs in byte order", got, len(nodes))
		}
	})
}
