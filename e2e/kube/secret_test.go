package kube

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/authority"
	cacluster "github.com/signet-id/signet/ca/cluster"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/systest"
)

// TestSecretKeyStoreConflicts: a write based on an old read of the Secret
// is refused, never lost over another replica's keys.
func TestSecretKeyStoreConflicts(t *testing.T) {
	ctx := context.Background()
	if err := createNamespace(ctx, "keys-conflict"); err != nil {
		t.Fatal(err)
	}
	s1 := &cacluster.SecretKeyStore{Client: cluster.Client, Namespace: "keys-conflict", Name: "keys"}
	s2 := &cacluster.SecretKeyStore{Client: cluster.Client, Namespace: "keys-conflict", Name: "keys"}
	for _, s := range []*cacluster.SecretKeyStore{s1, s2} {
		if keys, _, err := s.LoadCAKeys(ctx); err != nil || len(keys) != 0 {
			t.Fatalf("empty load: %v %v", keys, err)
		}
	}
	if err := s1.SaveCAKeys(ctx, []store.CAKey{{ID: "a"}}, 1); err != nil {
		t.Fatal(err)
	}
	if err := s2.SaveCAKeys(ctx, []store.CAKey{{ID: "b"}}, 1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	keys, seq, err := s2.LoadCAKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].ID != "a" || seq != 1 {
		t.Fatalf("reload: %v %d %v", keys, seq, err)
	}
	if err := s2.SaveCAKeys(ctx, []store.CAKey{{ID: "a"}, {ID: "c"}}, 2); err != nil {
		t.Fatal(err)
	}
	if err := s1.SaveCAKeys(ctx, []store.CAKey{{ID: "d"}}, 2); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale update: %v, want ErrConflict", err)
	}
}

// TestAuthoritiesStartingTogether: replicas that start at the same moment
// on an empty Secret end up with one root between them.
func TestAuthoritiesStartingTogether(t *testing.T) {
	ctx := context.Background()
	if err := createNamespace(ctx, "keys-race"); err != nil {
		t.Fatal(err)
	}
	const n = 4
	auths := make([]*authority.Authority, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			auths[i], errs[i] = authority.New(ctx, authority.Config{TrustDomain: systest.TrustDomain,
				Store: &cacluster.SecretKeyStore{Client: cluster.Client, Namespace: "keys-race", Name: "keys"}})
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
	}
	b0, _ := auths[0].Bundle()
	for i := 1; i < n; i++ {
		b, _ := auths[i].Bundle()
		if len(b.X509Roots) != 1 || !b.X509Roots[0].Equal(b0.X509Roots[0]) {
			t.Fatalf("replica %d has another root", i)
		}
	}
}

// TestFollowerPicksUpRotation: the leader rotates the intermediate; a
// follower reloads the Secret and signs with the new one, without restart.
func TestFollowerPicksUpRotation(t *testing.T) {
	ctx := context.Background()
	if err := createNamespace(ctx, "keys-follow"); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	newAuth := func(leader bool) *authority.Authority {
		a, err := authority.New(ctx, authority.Config{TrustDomain: systest.TrustDomain, Now: clock, IsLeader: func() bool { return leader },
			Store: &cacluster.SecretKeyStore{Client: cluster.Client, Namespace: "keys-follow", Name: "keys"}})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	leader, follower := newAuth(true), newAuth(false)
	before := follower.X509CA().Certificate
	if !before.Equal(leader.X509CA().Certificate) {
		t.Fatal("the replicas start with different intermediates")
	}
	now = now.Add(13 * time.Hour) // past the default intermediate's half life
	if _, err := leader.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if leader.X509CA().Certificate.Equal(before) {
		t.Fatal("the leader did not rotate")
	}
	if _, err := follower.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if !follower.X509CA().Certificate.Equal(leader.X509CA().Certificate) {
		t.Fatal("the follower still signs with the old intermediate")
	}
	lb, _ := leader.Bundle()
	fb, _ := follower.Bundle()
	if len(fb.X509Roots) != len(lb.X509Roots) || !fb.X509Roots[0].Equal(lb.X509Roots[0]) {
		t.Fatal("bundles differ")
	}
}
