package authority_test

import (
	"context"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/internal/clock"
)

// TestRevokedKeysAreReplaced: a revoked intermediate, root or JWT key
// stops signing at the next rotation; the next key takes over (a prepared
// root first); a revoked root or JWT key stays in the bundle until its
// revocation is enforced, so that what it signed can be re-issued first.
func TestRevokedKeysAreReplaced(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	revoked := map[string]time.Time{}
	var a *authority.Authority
	a, err := authority.New(ctx, authority.Config{TrustDomain: td, Store: openStore(t, t.TempDir()), Now: clk.Now,
		Revoked: func() map[string]time.Time {
			// As signet-ca's does: it reads the keys to match serials.
			if a != nil {
				a.Keys()
			}
			return revoked
		}})
	if err != nil {
		t.Fatal(err)
	}
	ski := func(b []byte) string { return hex.EncodeToString(b) }

	inter := a.X509CA().Certificate
	revoked[ski(inter.SubjectKeyId)] = clk.Now().Add(10 * time.Second)
	if _, _, err := a.Signing(ctx, revoked); err != nil {
		t.Fatal(err)
	}
	next := a.X509CA().Certificate
	if next.Equal(inter) || !slices.Equal(next.AuthorityKeyId, inter.AuthorityKeyId) {
		t.Fatalf("revoked intermediate not replaced under the same root")
	}
	for _, k := range a.Keys() {
		if k.ID == ski(inter.SubjectKeyId) {
			t.Errorf("the revoked intermediate is still held: %+v", k)
		}
	}

	// The root: with a prepared one, that one takes over at once.
	prepared, err := a.PrepareRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := a.Bundle()
	oldRoot := ski(next.AuthorityKeyId)
	revoked[oldRoot] = clk.Now().Add(10 * time.Second)
	ca, _, err := a.Signing(ctx, revoked)
	if err != nil {
		t.Fatal(err)
	}
	if ski(ca.Certificate.AuthorityKeyId) != prepared.ID {
		t.Fatalf("new intermediate chains to %x, want the prepared root %s", ca.Certificate.AuthorityKeyId, prepared.ID)
	}
	b2, _ := a.Bundle()
	if len(b2.X509Roots) != 2 || b2.Sequence != b.Sequence {
		t.Errorf("before enforcement the bundle has %d roots (seq %d -> %d), want both, unchanged", len(b2.X509Roots), b.Sequence, b2.Sequence)
	}
	clk.Add(11 * time.Second)
	if _, err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	b3, _ := a.Bundle()
	if len(b3.X509Roots) != 1 || ski(b3.X509Roots[0].SubjectKeyId) != prepared.ID || b3.Sequence == b2.Sequence {
		t.Errorf("after enforcement the bundle holds %d roots (seq %d), want only the new one", len(b3.X509Roots), b3.Sequence)
	}

	// The root again, with none prepared: a new one is made and active.
	revoked[prepared.ID] = clk.Now()
	ca, _, err = a.Signing(ctx, revoked)
	if err != nil {
		t.Fatal(err)
	}
	if got := ski(ca.Certificate.AuthorityKeyId); got == prepared.ID || got == oldRoot {
		t.Errorf("intermediate chains to a revoked root %s", got)
	}

	// A JWT key.
	jk := a.JWTKey()
	revoked[jk.ID] = clk.Now().Add(time.Minute)
	_, jk2, err := a.Signing(ctx, revoked)
	if err != nil {
		t.Fatal(err)
	}
	b4, _ := a.Bundle()
	if jk2.ID == jk.ID || !slices.ContainsFunc(b4.JWTKeys, func(k authority.PublicJWTKey) bool { return k.ID == jk.ID }) {
		t.Errorf("JWT key not replaced (%s), or left the bundle before enforcement", jk2.ID)
	}
	clk.Add(2 * time.Minute)
	if _, err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	b5, _ := a.Bundle()
	if slices.ContainsFunc(b5.JWTKeys, func(k authority.PublicJWTKey) bool { return k.ID == jk.ID }) {
		t.Errorf("revoked JWT key still in the bundle after enforcement")
	}
}

// TestRootActivationWaitsForAcknowledgement: a due root activation waits
// while agents lag, and goes ahead at the timeout, telling who lagged.
func TestRootActivationWaitsForAcknowledgement(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	laggards := []string{"spiffe://example.org/signet/agent/join/n2"}
	var told []string
	var a *authority.Authority
	a, err := authority.New(ctx, authority.Config{TrustDomain: td, Store: openStore(t, t.TempDir()), Now: clk.Now,
		RootTTL: 600 * time.Hour, IntermediateTTL: 10 * time.Hour, ActivationTimeout: 5 * time.Hour,
		Laggards: func(context.Context, string) ([]string, error) {
			// As signet-ca's does: its status reads the keys and bundle.
			if a != nil {
				a.Keys()
				a.Bundle()
			}
			return laggards, nil
		},
		OnUnacknowledged: func(id string, l []string, why string) { told = l }})
	if err != nil {
		t.Fatal(err)
	}
	first := a.X509CA().Certificate.AuthorityKeyId
	// Past five sixths of the root's life, step by step so that every
	// intermediate rotation happens.
	for range 502 {
		clk.Add(time.Hour)
		if _, err := a.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Equal(a.X509CA().Certificate.AuthorityKeyId, first) {
		t.Fatal("the root was activated while an agent lagged")
	}
	for range 5 {
		clk.Add(time.Hour)
		if _, err := a.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if slices.Equal(a.X509CA().Certificate.AuthorityKeyId, first) {
		t.Fatal("the root was not activated after the timeout")
	}
	if !slices.Equal(told, laggards) {
		t.Errorf("told of laggards %v, want %v", told, laggards)
	}
}
