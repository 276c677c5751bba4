package store_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/pgenv"
	"github.com/signet-id/signet/internal/entry"
)

// Replicas sharing one database hear of each other's commits, with what
// changed, and only of committed ones.
func TestListenHearsOtherReplicas(t *testing.T) {
	dsn := pgenv.Database(t)
	a, b := open(t, dsn), open(t, dsn)
	if !a.Shared() {
		t.Fatal("a PostgreSQL store says it is not shared")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heard := make(chan string, 16)
	up := make(chan bool, 4)
	go b.Listen(ctx, func(kind string) { heard <- kind }, func(ok bool, err error) { up <- ok })
	if !<-up {
		t.Fatal("could not listen")
	}
	if k := <-heard; k != store.ChangedUnknown {
		t.Fatalf("first notice = %q; want the catch-up notice %q", k, store.ChangedUnknown)
	}
	// A failed batch commits nothing and announces nothing.
	bad := mk("/x", parent1, 1)
	bad.ID = "set"
	if _, err := a.CreateEntries(ctx, []entry.Entry{bad}, now); err == nil {
		t.Fatal("a batch with an id was stored")
	}
	if _, err := a.CreateEntries(ctx, []entry.Entry{mk("/a", parent1, 1)}, now); err != nil {
		t.Fatal(err)
	}
	if k := <-heard; k != store.ChangedEntries {
		t.Fatalf("after an entry was created: heard %q; want %q", k, store.ChangedEntries)
	}
	if err := a.SaveCAKeys(ctx, nil, 7); err != nil {
		t.Fatal(err)
	}
	if k := <-heard; k != store.ChangedCAKeys {
		t.Fatalf("after the CA keys were saved: heard %q; want %q", k, store.ChangedCAKeys)
	}
	if _, seq, err := b.LoadCAKeys(ctx); err != nil || seq != 7 {
		t.Fatalf("the other replica reads sequence %d, %v; want 7", seq, err)
	}
	if err := a.PutTrafficShard(ctx, "a", []byte("counts"), now); err != nil {
		t.Fatal(err)
	}
	if k := <-heard; k != store.ChangedTraffic {
		t.Fatalf("after traffic counts were handed over: heard %q; want %q", k, store.ChangedTraffic)
	}
}

// One replica at a time leads; when its connection ends, another takes
// over.
func TestLeadIsExclusive(t *testing.T) {
	dsn := pgenv.Database(t)
	type replica struct {
		s      *store.Store
		cancel context.CancelFunc
		done   chan struct{}
	}
	var (
		mu      sync.Mutex
		leading = map[int]bool{}
		changed = make(chan struct{}, 16)
	)
	rs := make([]replica, 3)
	for i := range rs {
		ctx, cancel := context.WithCancel(context.Background())
		rs[i] = replica{s: open(t, dsn), cancel: cancel, done: make(chan struct{})}
		go func() {
			defer close(rs[i].done)
			rs[i].s.Lead(ctx, func(l bool) {
				mu.Lock()
				leading[i] = l
				mu.Unlock()
				changed <- struct{}{}
			}, func(err error) { t.Logf("replica %d: %v", i, err) })
		}()
	}
	defer func() {
		for _, r := range rs {
			r.cancel()
			<-r.done
		}
	}()
	leaders := func() []int {
		mu.Lock()
		defer mu.Unlock()
		var out []int
		for i, l := range leading {
			if l {
				out = append(out, i)
			}
		}
		return out
	}
	waitOne := func(not int) int {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			if ls := leaders(); len(ls) == 1 && ls[0] != not {
				return ls[0]
			} else if len(ls) > 1 {
				t.Fatalf("replicas %v lead at once", ls)
			}
			select {
			case <-changed:
			case <-timeout:
				t.Fatalf("no single leader; leading: %v", leaders())
			}
		}
	}
	first := waitOne(-1)
	rs[first].cancel()
	<-rs[first].done
	second := waitOne(first)
	if second == first {
		t.Fatal("the stopped replica still leads")
	}
}

// A join token is single use across replicas: of many concurrent
// consumers on two replicas, exactly one gets it.
func TestJoinTokenSingleUseAcrossReplicas(t *testing.T) {
	dsn := pgenv.Database(t)
	a, b := open(t, dsn), open(t, dsn)
	ctx := context.Background()
	if err := a.CreateJoinToken(ctx, "tok", "node-1", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, used := 0, 0
	for i := 0; i < 16; i++ {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.ConsumeJoinToken(ctx, "tok", now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrTokenUsed):
				used++
			default:
				t.Errorf("consume: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || used != 15 {
		t.Fatalf("%d consumers got the token and %d were told it was used; want 1 and 15", wins, used)
	}
}

// A password in the URL never shows in an error.
func TestPostgresErrorsHidePassword(t *testing.T) {
	_, err := store.Open(context.Background(), "postgres://signet:s3cret-pw@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err == nil {
		t.Fatal("opened a database that does not exist")
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("error shows the password: %v", err)
	}
	_, err = store.Open(context.Background(), "postgres://signet:s3cret-pw@[bad/none")
	if err == nil || strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("bad URL: error %v; want one without the password", err)
	}
}
