package authority_test

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.step.sm/crypto/pemutil"

	"github.com/signet-id/signet/ca/authority"
	kmsopen "github.com/signet-id/signet/ca/authority/awskms"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/testenv"
	"github.com/signet-id/signet/internal/clock"
)

// startKMS runs local-kms, an AWS KMS emulator, and points the AWS SDK at
// it; it returns a client to inspect the keys with.
func startKMS(t testing.TB) *awskms.Client {
	t.Helper()
	testenv.UseKMS(t)
	cfg, err := awsconfig.LoadDefaultConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return awskms.NewFromConfig(cfg)
}

func keyState(t *testing.T, c *awskms.Client, keyURI string) types.KeyState {
	t.Helper()
	_, id, ok := strings.Cut(keyURI, "key-id=")
	if !ok {
		t.Fatalf("key URI %q has no key-id", keyURI)
	}
	out, err := c.DescribeKey(context.Background(), &awskms.DescribeKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatalf("DescribeKey %s: %v", id, err)
	}
	return out.KeyMetadata.KeyState
}

// TestExternalKMS runs two replicas on one store with their keys in an AWS
// KMS (the emulator speaks its API): no private key is ever stored, both
// sign with the same keys, rotation makes new KMS keys, and retired ones
// are scheduled for deletion only once nothing can sign with them.
func TestExternalKMS(t *testing.T) {
	kc := startKMS(t)
	ctx := context.Background()
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	s := openStore(t, t.TempDir())
	cfg := authority.Config{TrustDomain: td, Store: s, Now: clk.Now, KMS: testenv.KMSURI, OpenKMS: kmsopen.Open, Log: hclog.NewNullLogger()}
	leader, err := authority.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stored, _, err := s.LoadCAKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, k := range stored {
		kinds[k.Kind] = true
		if len(k.KeyPEM) != 0 {
			t.Errorf("%s key %s: the store holds key material (%d bytes)", k.Kind, k.ID, len(k.KeyPEM))
		}
		if !strings.HasPrefix(k.KeyURI, "awskms:key-id=") {
			t.Errorf("%s key %s: KeyURI %q; want an awskms key", k.Kind, k.ID, k.KeyURI)
		}
		if st := keyState(t, kc, k.KeyURI); st != types.KeyStateEnabled {
			t.Errorf("%s key %s is %s in the KMS", k.Kind, k.ID, st)
		}
	}
	if len(kinds) != 3 {
		t.Fatalf("stored key kinds %v; want root, intermediate and JWT", kinds)
	}

	// A second replica opens the same keys by name.
	follower, err := authority.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	lb, _ := leader.Bundle()
	fb, _ := follower.Bundle()
	if len(fb.X509Roots) != 1 || !fb.X509Roots[0].Equal(lb.X509Roots[0]) || fb.Sequence != lb.Sequence {
		t.Fatal("the second replica's bundle differs from the first's")
	}
	id := spiffeid.RequireFromPath(td, "/w/kms")
	for name, a := range map[string]*authority.Authority{"leader": leader, "follower": follower} {
		chain, err := signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: csr(t), SPIFFEID: id, TTL: time.Hour, Now: clk.Now()})
		if err != nil {
			t.Fatalf("%s: sign: %v", name, err)
		}
		if _, _, err := x509svid.Verify(chain, x509Bundle(lb)); err != nil {
			t.Errorf("%s: SVID signed through the KMS does not verify: %v", name, err)
		}
		tok, _, err := signer.SignJWTSVID(a.JWTKey(), signer.JWTParams{SPIFFEID: id, Audience: []string{"kms"}, TTL: time.Minute, Now: clk.Now()})
		if err != nil {
			t.Fatalf("%s: sign JWT: %v", name, err)
		}
		if err := verifyJWT(lb, tok); err != nil {
			t.Errorf("%s: JWT-SVID signed through the KMS does not verify: %v", name, err)
		}
	}

	// Rotation: a new intermediate key in the KMS; the old one is kept
	// (a replica may still sign with it) until its certificate expires.
	first := leader.X509CA().Certificate
	firstURI := keyURIOf(t, s, first)
	clk.Add(13 * time.Hour)
	if _, err := leader.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	second := leader.X509CA().Certificate
	secondURI := keyURIOf(t, s, second)
	if second.Equal(first) || secondURI == firstURI {
		t.Fatal("no new intermediate key after half life")
	}
	if st := keyState(t, kc, firstURI); st != types.KeyStateEnabled {
		t.Errorf("the replaced intermediate's key is %s while its certificate is valid", st)
	}
	// The follower has not reloaded yet and still signs with the old key.
	if _, err := signer.SignX509SVID(follower.X509CA(), signer.X509Params{CSR: csr(t), SPIFFEID: id, TTL: time.Hour, Now: clk.Now()}); err != nil {
		t.Errorf("a replica that has not reloaded can no longer sign: %v", err)
	}
	if _, err := follower.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if !follower.X509CA().Certificate.Equal(second) {
		t.Error("the follower did not pick up the new intermediate")
	}
	clk.Add(12 * time.Hour) // past the first intermediate's expiry
	if _, err := leader.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if keyURIOf(t, s, first) != "" {
		t.Error("an expired intermediate is still stored")
	}
	if st := keyState(t, kc, firstURI); st != types.KeyStatePendingDeletion {
		t.Errorf("the expired intermediate's key is %s; want PendingDeletion", st)
	}
	if st := keyState(t, kc, secondURI); st != types.KeyStateEnabled {
		t.Errorf("a key in use is %s", st)
	}
}

func keyURIOf(t *testing.T, s *store.Store, cert *x509.Certificate) string {
	t.Helper()
	keys, _, err := s.LoadCAKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if len(k.CertDER) > 0 && string(k.CertDER) == string(cert.Raw) {
			return k.KeyURI
		}
	}
	return ""
}

// TestExternalKMSRefusals: keys in a KMS are not opened without it, and a
// stored name that points at another key is caught before anything is
// signed with it.
func TestExternalKMSRefusals(t *testing.T) {
	startKMS(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir)
	cfg := authority.Config{TrustDomain: td, Store: s, KMS: testenv.KMSURI, OpenKMS: kmsopen.Open}
	if _, err := authority.New(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	noKMS := cfg
	noKMS.KMS = ""
	if _, err := authority.New(ctx, noKMS); err == nil || !strings.Contains(err.Error(), "without --kms") {
		t.Errorf("keys in a KMS opened without one: %v", err)
	}

	keys, seq, err := s.LoadCAKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var root, jwt int = -1, -1
	for i, k := range keys {
		switch k.Kind {
		case "x509_root":
			root = i
		case "jwt":
			jwt = i
		}
	}
	keys[root].KeyURI = keys[jwt].KeyURI // the root's name now points at the JWT key
	if err := s.SaveCAKeys(ctx, keys, seq); err != nil {
		t.Fatal(err)
	}
	if _, err := authority.New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "does not match its certificate") {
		t.Errorf("a key name pointing at another key: %v", err)
	}

	for _, bad := range []string{"cloudkms:projects/p/locations/l/keyRings/r", "softkms:", "not a uri"} {
		c := cfg
		c.KMS = bad
		if _, err := authority.New(ctx, c); err == nil {
			t.Errorf("--kms %q accepted", bad)
		}
	}
}

// TestInProcessKeysStayPEM: without --kms nothing changes: keys are stored
// as PEM and have no KMS name.
func TestInProcessKeysStayPEM(t *testing.T) {
	s := openStore(t, t.TempDir())
	if _, err := authority.New(context.Background(), authority.Config{TrustDomain: td, Store: s}); err != nil {
		t.Fatal(err)
	}
	keys, _, err := s.LoadCAKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.KeyURI != "" {
			t.Errorf("%s key has a KMS name %q", k.Kind, k.KeyURI)
		}
		if _, err := pemutil.ParseKey(k.KeyPEM); err != nil {
			t.Errorf("%s key: %v", k.Kind, err)
		}
	}
}

// BenchmarkSignX509SVID compares signing an X509-SVID with an in-process
// key and through a KMS: local-kms on loopback, so the figure is the floor
// of the KMS path (a cloud KMS adds its network round trip).
func BenchmarkSignX509SVID(b *testing.B) {
	for _, kms := range []string{"", testenv.KMSURI} {
		name := "in-process"
		if kms != "" {
			name = "kms"
		}
		b.Run(name, func(b *testing.B) {
			if kms != "" {
				startKMS(b)
			}
			s, err := store.Open(context.Background(), b.TempDir()+"/signet.db")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			a, err := authority.New(context.Background(), authority.Config{TrustDomain: td, Store: s, KMS: kms, OpenKMS: kmsopen.Open})
			if err != nil {
				b.Fatal(err)
			}
			req := csr(b)
			id := spiffeid.RequireFromPath(td, "/w/bench")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: req, SPIFFEID: id, TTL: time.Hour, Now: time.Now()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestExternalKMSKeyTypes: every --key-type and --jwt-key-type makes KMS
// keys that sign verifiable SVIDs.
func TestExternalKMSKeyTypes(t *testing.T) {
	startKMS(t)
	for _, kt := range []string{"ec-p384", "rsa-2048"} {
		t.Run(kt, func(t *testing.T) {
			a, err := authority.New(context.Background(), authority.Config{TrustDomain: td, Store: openStore(t, t.TempDir()), KMS: testenv.KMSURI, OpenKMS: kmsopen.Open,
				KeyType: kt, JWTKeyType: kt})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := a.Bundle()
			chain, err := signer.SignX509SVID(a.X509CA(), signer.X509Params{CSR: csr(t), SPIFFEID: spiffeid.RequireFromPath(td, "/w"), TTL: time.Hour, Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := x509svid.Verify(chain, x509Bundle(b)); err != nil {
				t.Fatal(err)
			}
			tok, _, err := signer.SignJWTSVID(a.JWTKey(), signer.JWTParams{SPIFFEID: spiffeid.RequireFromPath(td, "/w"), Audience: []string{"a"}, TTL: time.Minute, Now: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyJWT(b, tok); err != nil {
				t.Fatal(err)
			}
			if alg, want := jwtAlg(t, tok), map[string]string{"ec-p384": "ES384", "rsa-2048": "RS256"}[kt]; alg != want {
				t.Errorf("JWT-SVID alg %s, want %s", alg, want)
			}
		})
	}
}

// conflictOnce refuses the first save as a replica that lost a race to
// another would see it.
type conflictOnce struct {
	*store.Store
	refused bool
}

func (c *conflictOnce) SaveCAKeys(ctx context.Context, keys []store.CAKey, seq uint64) error {
	if !c.refused {
		c.refused = true
		return store.ErrConflict
	}
	return c.Store.SaveCAKeys(ctx, keys, seq)
}

// TestExternalKMSKeysOfALostRace: keys made for a change the store refused
// are deleted from the KMS, not left there (and billed) for ever.
func TestExternalKMSKeysOfALostRace(t *testing.T) {
	kc := startKMS(t)
	ctx := context.Background()
	s := &conflictOnce{Store: openStore(t, t.TempDir())}
	if _, err := authority.New(ctx, authority.Config{TrustDomain: td, Store: s, KMS: testenv.KMSURI, OpenKMS: kmsopen.Open}); err != nil {
		t.Fatal(err)
	}
	stored, _, err := s.LoadCAKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	for _, k := range stored {
		kept[k.KeyURI] = true
	}
	list, err := kc.ListKeys(ctx, &awskms.ListKeysInput{})
	if err != nil {
		t.Fatal(err)
	}
	enabled, pending := 0, 0
	for _, k := range list.Keys {
		switch st := keyState(t, kc, "awskms:key-id="+*k.KeyId); {
		case st == types.KeyStateEnabled:
			enabled++
			if !kept["awskms:key-id="+*k.KeyId] {
				t.Errorf("key %s is enabled in the KMS but stored nowhere", *k.KeyId)
			}
		case st == types.KeyStatePendingDeletion:
			pending++
		}
	}
	if enabled != 3 || pending != 3 {
		t.Fatalf("KMS holds %d enabled and %d pending-deletion keys; want the 3 stored and the 3 of the refused attempt", enabled, pending)
	}
}
