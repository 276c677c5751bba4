package authority_test

import (
	"context"
	"crypto/rsa"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/jose"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/internal/clock"
)

// verifyJWT checks tok's signature with the bundle key its kid names.
func verifyJWT(b authority.Bundle, tok string) error {
	jws, err := jose.ParseSigned(tok)
	if err != nil {
		return err
	}
	if len(jws.Headers) != 1 {
		return fmt.Errorf("%d headers", len(jws.Headers))
	}
	kid := jws.Headers[0].KeyID
	for _, k := range b.JWTKeys {
		if k.ID == kid {
			var claims jose.Claims
			return jws.Claims(k.PublicKey, &claims)
		}
	}
	return fmt.Errorf("kid %q not in bundle", kid)
}

// jwtAlg is the "alg" of a signed token.
func jwtAlg(t *testing.T, tok string) string {
	t.Helper()
	jws, err := jose.ParseSigned(tok)
	if err != nil {
		t.Fatal(err)
	}
	return jws.Headers[0].Algorithm
}

// TestJWTKeyTypeChange: a CA restarted with another --jwt-key-type
// publishes a key of the new type at once, keeps signing with the active
// key until the usual activation, then signs with the new type; every
// token verifies against the bundle a peer holds throughout.
func TestJWTKeyTypeChange(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	st := openStore(t, t.TempDir())
	cfg := authority.Config{TrustDomain: td, Store: st, Now: clk.Now, JWTKeyTTL: 6 * time.Hour}
	a, err := authority.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/w")
	sign := func(a *authority.Authority) string {
		t.Helper()
		tok, _, err := signer.SignJWTSVID(a.JWTKey(), signer.JWTParams{SPIFFEID: id, Audience: []string{"a"}, TTL: 5 * time.Minute, Now: clk.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if alg := jwtAlg(t, sign(a)); alg != "ES256" {
		t.Fatalf("default JWT-SVID alg %s, want ES256", alg)
	}
	before, _ := a.Bundle()

	clk.Add(time.Hour)
	cfg.JWTKeyType = "rsa-2048"
	a, err = authority.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := a.Bundle()
	var rsaKeys int
	for _, k := range b.JWTKeys {
		if _, ok := k.PublicKey.(*rsa.PublicKey); ok {
			rsaKeys++
		}
	}
	if rsaKeys != 1 || len(b.JWTKeys) != 2 {
		t.Fatalf("after the change: %d JWT keys, %d RSA; want the active P-256 key and one prepared RSA key", len(b.JWTKeys), rsaKeys)
	}
	tok := sign(a)
	if alg := jwtAlg(t, tok); alg != "ES256" {
		t.Fatalf("alg %s right after the change, want ES256 until the RSA key is activated", alg)
	}
	if err := verifyJWT(before, tok); err != nil {
		t.Fatalf("a peer holding the bundle from before the change: %v", err)
	}
	prev := b
	for i := 0; ; i++ {
		clk.Add(20 * time.Minute)
		if _, err := a.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		cur, _ := a.Bundle()
		tok := sign(a)
		for name, b := range map[string]authority.Bundle{"current": cur, "previous": prev} {
			if err := verifyJWT(b, tok); err != nil {
				t.Fatalf("%s: token does not verify against the %s bundle: %v", clk.Now(), name, err)
			}
		}
		prev = cur
		if jwtAlg(t, tok) == "RS256" {
			break
		}
		if i > 20 {
			t.Fatal("the RSA key was not activated within the old key's life")
		}
	}
	// The next keys keep the new type.
	for range 40 {
		clk.Add(20 * time.Minute)
		if _, err := a.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		if alg := jwtAlg(t, sign(a)); alg != "RS256" {
			t.Fatalf("%s: alg %s, want RS256", clk.Now(), alg)
		}
	}

	cfg.JWTKeyType = "ed25519"
	if _, err := authority.New(ctx, cfg); err == nil {
		t.Error("an unknown JWT key type was accepted")
	}
}
