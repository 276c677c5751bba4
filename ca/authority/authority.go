// Package authority owns the CA's signing keys and their lifecycle: the
// self-signed root, the intermediate that signs SVIDs, and the JWT signing
// keys. Keys are created through smallstep's softcas and a go.step.sm/crypto
// KMS, persisted through a KeyStore, and rotated without a failed handshake:
//
//   - the intermediate is replaced at half its life; the bundle is unchanged;
//   - a new root is prepared (published in the bundle) at half the active
//     root's life and activated at five sixths, so every peer has it long
//     before anything chains to it; the old root leaves the bundle once all
//     it signed has expired;
//   - JWT keys follow the same prepare, activate, retire steps.
package authority

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/pemutil"

	"github.com/signet-id/signet/ca/store"
)

// KeyStore persists the CA's keys; the SQL store implements it.
type KeyStore interface {
	LoadCAKeys(ctx context.Context) ([]store.CAKey, uint64, error)
	SaveCAKeys(ctx context.Context, keys []store.CAKey, bundleSequence uint64) error
}

// Key states.
const (
	statePrepared = "prepared"
	stateActive   = "active"
	stateOld      = "old"
	// stateRevoked is a root or JWT key a revocation names: it signs
	// nothing and stays in the bundle only until the revocation's
	// enforce_after, so that what it signed can be re-issued first.
	stateRevoked = "revoked"
)

// Kinds of keys, as KeyInfo and the store name them.
const (
	KindRoot         = kindRoot
	KindIntermediate = kindIntermediate
	KindJWT          = kindJWT
	StatePrepared    = statePrepared
	StateActive      = stateActive
)

// Key kinds.
const (
	kindRoot         = "x509_root"
	kindIntermediate = "x509_intermediate"
	kindJWT          = "jwt"
)

// backdate is how far NotBefore is set in the past, for clock skew.
const backdate = 10 * time.Second

// Config configures an Authority.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// Store persists keys. Required.
	Store KeyStore
	// RootTTL is the root certificate lifetime. If zero, one year is used.
	RootTTL time.Duration
	// IntermediateTTL is the intermediate lifetime. If zero, 24 hours.
	IntermediateTTL time.Duration
	// JWTKeyTTL is the JWT signing key lifetime. If zero, 24 hours.
	JWTKeyTTL time.Duration
	// KeyType is one of "ec-p256" (default), "ec-p384", "rsa-2048",
	// "rsa-3072", "rsa-4096".
	KeyType string
	// JWTKeyType is the type of the JWT-SVID signing keys, from the same
	// set: ec-p256 (ES256, the default), ec-p384 (ES384), rsa-* (RS256,
	// which Microsoft Entra ID requires). A change applies from the next
	// key, which is prepared at once and activated on the usual schedule.
	JWTKeyType string
	// KMS, if set, is the go.step.sm/crypto/kms URI of an external KMS
	// (awskms:region=...) that creates and holds the keys made from now on;
	// the store then keeps only their names and certificates. If empty, keys
	// are made in process and stored, as PEM, with their certificates.
	KMS string
	// OpenKMS opens the KMS of KMS (ca/authority/awskms.Open). Required
	// with KMS.
	OpenKMS KMSOpener
	// Now returns the current time. If nil, time.Now is used.
	Now func() time.Time
	// Log receives rotation events. If nil, logs are discarded.
	Log hclog.Logger
	// OnKeyChange, if set, is told of every key this replica created,
	// changed or retired, once the change is stored (signet-ca audits
	// them). It must not call back into the Authority.
	OnKeyChange func(KeyChange)
	// IsLeader, if set, says whether this replica rotates keys; the others
	// only reload what the leader stored. If nil, this replica is the only
	// one.
	IsLeader func() bool
	// Revoked, if set, returns the CA keys that revocations in force name,
	// by key ID, each with the time from which peers refuse it. Rotate
	// stops signing with a revoked key at once and makes or activates the
	// next one; a revoked root or JWT key leaves the bundle at that time.
	Revoked func() map[string]time.Time
	// Laggards, if set, returns the live agents that have not acknowledged
	// holding the root with key ID id. Rotate activates a prepared root at
	// its time only when there are none, or ActivationTimeout later.
	Laggards func(ctx context.Context, id string) ([]string, error)
	// ActivationTimeout bounds how long a due root activation waits for
	// laggards. If zero, 24 hours.
	ActivationTimeout time.Duration
	// OnUnacknowledged, if set, is told of a root activated while live
	// agents had not acknowledged it, and why (signet-ca audits it).
	OnUnacknowledged func(id string, laggards []string, why string)
}

// KeyChange is one stored change to the CA's keys.
type KeyChange struct {
	// Change is "create", "state" (prepared to active, or active to old;
	// State is the new one) or "retire" (removed from the store).
	Change   string
	Kind     string
	ID       string
	State    string
	NotAfter time.Time
	// KMSName is the key's name in an external KMS, if it is in one.
	KMSName string
}

// X509CA is the certificate and key that sign X509-SVIDs now.
type X509CA struct {
	Certificate *x509.Certificate
	Signer      crypto.Signer
	// CAS signs through smallstep's certificate authority service.
	CAS *softcas.SoftCAS
}

// JWTKey is the key that signs JWT-SVIDs now.
type JWTKey struct {
	ID       string
	Signer   crypto.Signer
	NotAfter time.Time
}

// PublicJWTKey is a JWT bundle member.
type PublicJWTKey struct {
	ID        string
	PublicKey crypto.PublicKey
	NotAfter  time.Time
}

// Bundle is the trust domain's trust bundle.
type Bundle struct {
	TrustDomain spiffeid.TrustDomain
	X509Roots   []*x509.Certificate
	JWTKeys     []PublicJWTKey
	Sequence    uint64
}

type key struct {
	store.CAKey
	cert   *x509.Certificate
	signer crypto.Signer
}

// Authority holds the CA's keys. It is safe for concurrent use.
type Authority struct {
	cfg Config
	km  *keyManager
	log hclog.Logger
	// signers caches the signers of external keys by name: opening one asks
	// the KMS for its public key.
	signers map[string]crypto.Signer

	mu      sync.RWMutex
	keys    []*key
	seq     uint64
	x509CA  *X509CA
	jwtKey  JWTKey
	bundle  Bundle
	changed chan struct{}
	// kick makes Run look at the keys at once.
	kick chan struct{}
	// held is the prepared root whose due activation waits for laggards.
	held string
}

// New loads the CA's keys from the store, creating the first ones if there
// are none, and brings them up to date.
func New(ctx context.Context, cfg Config) (*Authority, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("authority: trust domain is required")
	}
	if cfg.Store == nil {
		return nil, errors.New("authority: store is required")
	}
	if cfg.RootTTL == 0 {
		cfg.RootTTL = 365 * 24 * time.Hour
	}
	if cfg.IntermediateTTL == 0 {
		cfg.IntermediateTTL = 24 * time.Hour
	}
	if cfg.JWTKeyTTL == 0 {
		cfg.JWTKeyTTL = 24 * time.Hour
	}
	if cfg.KeyType == "" {
		cfg.KeyType = "ec-p256"
	}
	if _, err := signatureAlgorithm(cfg.KeyType); err != nil {
		return nil, err
	}
	if cfg.JWTKeyType == "" {
		cfg.JWTKeyType = "ec-p256"
	}
	if _, err := signatureAlgorithm(cfg.JWTKeyType); err != nil {
		return nil, fmt.Errorf("JWT key: %w", err)
	}
	if cfg.IntermediateTTL > cfg.RootTTL/6 {
		return nil, fmt.Errorf("authority: intermediate TTL %s must be at most a sixth of the root TTL %s", cfg.IntermediateTTL, cfg.RootTTL)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.ActivationTimeout == 0 {
		cfg.ActivationTimeout = 24 * time.Hour
	}
	km, err := openKeyManager(ctx, cfg.KMS, cfg.TrustDomain.Name(), cfg.OpenKMS)
	if err != nil {
		return nil, err
	}
	a := &Authority{cfg: cfg, km: km, log: cfg.Log, changed: make(chan struct{}), kick: make(chan struct{}, 1), signers: map[string]crypto.Signer{}}
	if a.keys, a.seq, err = a.load(ctx); err != nil {
		return nil, err
	}
	if _, err := a.Rotate(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

// load reads and parses every stored key.
func (a *Authority) load(ctx context.Context) ([]*key, uint64, error) {
	stored, seq, err := a.cfg.Store.LoadCAKeys(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("authority: %w", err)
	}
	keys, err := a.parse(stored)
	return keys, seq, err
}

// parse opens stored keys. a.mu is held, or a is not shared yet.
func (a *Authority) parse(stored []store.CAKey) ([]*key, error) {
	var keys []*key
	for _, sk := range stored {
		k, err := a.loadKey(sk)
		if err != nil {
			return nil, fmt.Errorf("authority: stored key %s: %w", sk.ID, err)
		}
		if k.cert != nil && sk.Kind == kindRoot {
			if err := checkTrustDomain(k.cert, a.cfg.TrustDomain); err != nil {
				return nil, fmt.Errorf("authority: stored root %s: %w", sk.ID, err)
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Reload adopts the stored keys when another replica changed them, and
// reports whether the trust bundle changed. The store is read before the
// lock is taken: signing goes on while a slow store (an API server whose
// etcd is away) answers.
func (a *Authority) Reload(ctx context.Context) (bool, error) {
	stored, seq, err := a.cfg.Store.LoadCAKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("authority: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.adoptLocked(stored, seq)
}

func (a *Authority) reloadLocked(ctx context.Context) (bool, error) {
	stored, seq, err := a.cfg.Store.LoadCAKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("authority: %w", err)
	}
	return a.adoptLocked(stored, seq)
}

// adoptLocked makes the stored keys the authority's; a.mu is held.
func (a *Authority) adoptLocked(stored []store.CAKey, seq uint64) (bool, error) {
	keys, err := a.parse(stored)
	if err != nil {
		return false, err
	}
	if seq == a.seq && keyStates(keys) == keyStates(a.keys) {
		return false, nil
	}
	if len(keys) == 0 {
		return false, errors.New("authority: the store lost every key")
	}
	before := bundleFingerprint(a.keys)
	oldKeys, oldSeq := a.keys, a.seq
	a.keys, a.seq = keys, seq
	if err := a.refresh(); err != nil {
		a.keys, a.seq = oldKeys, oldSeq
		return false, err
	}
	changed := bundleFingerprint(keys) != before
	if changed {
		close(a.changed)
		a.changed = make(chan struct{})
	}
	a.log.Info("reloaded keys another replica stored", "bundle_changed", changed, "sequence", seq)
	return changed, nil
}

// keyStates identifies a key set and each key's state.
func keyStates(keys []*key) string {
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k.ID + "=" + k.State + ";")
	}
	return b.String()
}

func checkTrustDomain(cert *x509.Certificate, td spiffeid.TrustDomain) error {
	want := td.ID().URL().String()
	for _, u := range cert.URIs {
		if u.String() == want {
			return nil
		}
	}
	return fmt.Errorf("certificate is not for trust domain %q; the data directory belongs to another trust domain", td.Name())
}

// loadKey opens a stored key. a.mu is held, or a is not shared yet.
func (a *Authority) loadKey(sk store.CAKey) (*key, error) {
	signer := a.signers[sk.KeyURI]
	if signer == nil || sk.KeyURI == "" {
		var err error
		if signer, err = a.km.signer(sk.KeyURI, sk.KeyPEM); err != nil {
			return nil, err
		}
	}
	k := &key{CAKey: sk, signer: signer}
	if len(sk.CertDER) > 0 {
		var err error
		if k.cert, err = x509.ParseCertificate(sk.CertDER); err != nil {
			return nil, err
		}
		// A key name pointing at another key would otherwise surface as
		// SVIDs that do not verify.
		if pub, ok := k.cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(signer.Public()) {
			return nil, errors.New("the key does not match its certificate")
		}
	}
	if sk.KeyURI != "" {
		a.signers[sk.KeyURI] = signer
	}
	return k, nil
}

func parsePEMSigner(keyPEM []byte) (crypto.Signer, error) {
	priv, err := pemutil.ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", priv)
	}
	return signer, nil
}

// Rotate brings the keys up to date with the clock: it creates, prepares,
// activates and retires keys as their lifetimes say, persists any change,
// and reports whether the trust bundle changed. Call it periodically; New
// calls it once.
func (a *Authority) Rotate(ctx context.Context) (bundleChanged bool, err error) {
	return a.rotateWith(ctx, nil)
}

// step is one change to the key set at now: the keys after it, and
// whether it changed anything.
type step func(keys []*key, now time.Time) ([]*key, bool, error)

// rotateWith runs first, if set, and then the rotation steps, and
// persists the result.
func (a *Authority) rotateWith(ctx context.Context, first step) (bundleChanged bool, err error) {
	in := a.inputs(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	changed, err := a.rotateLocked(ctx, first, in)
	if errors.Is(err, store.ErrConflict) {
		// Another replica stored keys first: adopt them and look again.
		reloaded, rerr := a.reloadLocked(ctx)
		if rerr != nil {
			return false, rerr
		}
		changed, err = a.rotateLocked(ctx, first, in)
		changed = changed || reloaded
	}
	return changed, err
}

// rotationInputs is what rotation learns from outside the authority:
// gathered before a.mu is taken, since Revoked and Laggards may read the
// authority (Keys, Bundle) themselves.
type rotationInputs struct {
	revoked map[string]time.Time
	// laggards of the prepared root due for activation, if one is.
	prepared    string
	laggards    []string
	laggardsErr error
}

func (a *Authority) inputs(ctx context.Context) rotationInputs {
	var in rotationInputs
	if a.cfg.Revoked != nil {
		in.revoked = a.cfg.Revoked()
	}
	if a.cfg.Laggards == nil {
		return in
	}
	a.mu.RLock()
	active, prepared := find(a.keys, kindRoot, stateActive), find(a.keys, kindRoot, statePrepared)
	due := active != nil && prepared != nil && !a.cfg.Now().Before(lifeFraction(active, 5, 6))
	if due {
		in.prepared = prepared.ID
	}
	a.mu.RUnlock()
	if due {
		in.laggards, in.laggardsErr = a.cfg.Laggards(ctx, in.prepared)
	}
	return in
}

func (a *Authority) rotateLocked(ctx context.Context, first step, in rotationInputs) (bundleChanged bool, err error) {
	now := a.cfg.Now()
	// Rotation changes the shared *key values in place: remember the
	// states as stored, to report what changed.
	prior := make(map[string]string, len(a.keys))
	for _, k := range a.keys {
		prior[k.ID] = k.State
	}
	keys := append([]*key(nil), a.keys...)
	before := bundleFingerprint(keys)
	dirty := false

	step := func(k []*key, changed bool, err error) error {
		if err != nil {
			return err
		}
		keys = k
		dirty = dirty || changed
		return nil
	}
	if first != nil {
		if err := step(first(keys, now)); err != nil {
			return false, fmt.Errorf("authority: %w", err)
		}
	}
	if err := step(a.dropRevoked(keys, now, in.revoked)); err != nil {
		return false, fmt.Errorf("authority: revoke: %w", err)
	}
	if err := step(a.rotateRoots(keys, now, in)); err != nil {
		return false, fmt.Errorf("authority: rotate root: %w", err)
	}
	if err := step(a.rotateIntermediate(keys, now)); err != nil {
		return false, fmt.Errorf("authority: rotate intermediate: %w", err)
	}
	if err := step(a.rotateJWT(keys, now)); err != nil {
		return false, fmt.Errorf("authority: rotate JWT key: %w", err)
	}
	bundleChanged = bundleFingerprint(keys) != before
	seq := a.seq
	if bundleChanged {
		seq++
	}
	if dirty || bundleChanged || a.x509CA == nil {
		if dirty || bundleChanged {
			stored := make([]store.CAKey, len(keys))
			for i, k := range keys {
				stored[i] = k.CAKey
			}
			// Persist before use: nothing is signed by a key that a restart
			// would not find again.
			if err := a.cfg.Store.SaveCAKeys(ctx, stored, seq); err != nil {
				// Keys made for this attempt are stored nowhere (another
				// replica stored first, or the store is away): an external
				// KMS would keep, and bill, them for ever.
				a.deleteKeys(ctx, keys, a.keys, "made for a change that was not stored")
				return false, fmt.Errorf("authority: %w", err)
			}
		}
		a.report(prior, a.keys, keys)
		a.deleteKeys(ctx, a.keys, keys, "retired")
		a.keys, a.seq = keys, seq
		if err := a.refresh(); err != nil {
			return false, err
		}
	}
	if bundleChanged {
		close(a.changed)
		a.changed = make(chan struct{})
	}
	return bundleChanged, nil
}

// refresh recomputes the derived views of a.keys; a.mu is held.
func (a *Authority) refresh() error {
	b := Bundle{TrustDomain: a.cfg.TrustDomain, Sequence: a.seq}
	var x *X509CA
	var jk JWTKey
	for _, k := range a.keys {
		switch k.Kind {
		case kindRoot:
			b.X509Roots = append(b.X509Roots, k.cert)
		case kindIntermediate:
			if k.State == stateActive {
				cas, err := softcas.New(context.Background(), apiv1.Options{CertificateChain: []*x509.Certificate{k.cert}, Signer: k.signer})
				if err != nil {
					return fmt.Errorf("authority: %w", err)
				}
				x = &X509CA{Certificate: k.cert, Signer: k.signer, CAS: cas}
			}
		case kindJWT:
			b.JWTKeys = append(b.JWTKeys, PublicJWTKey{ID: k.ID, PublicKey: k.signer.Public(), NotAfter: k.NotAfter})
			if k.State == stateActive {
				jk = JWTKey{ID: k.ID, Signer: k.signer, NotAfter: k.NotAfter}
			}
		}
	}
	if x == nil || jk.Signer == nil {
		return errors.New("authority: no active signing keys")
	}
	a.x509CA, a.jwtKey, a.bundle = x, jk, b
	return nil
}

func bundleFingerprint(keys []*key) string {
	var s string
	for _, k := range keys {
		if k.Kind == kindRoot || k.Kind == kindJWT {
			s += k.ID + ","
		}
	}
	return s
}

func find(keys []*key, kind, state string) *key {
	for _, k := range keys {
		if k.Kind == kind && k.State == state {
			return k
		}
	}
	return nil
}

// dropExpired removes old keys of kind whose certificates have expired.
func dropExpired(keys []*key, kind string, now time.Time) []*key {
	out := make([]*key, 0, len(keys))
	for _, k := range keys {
		if k.Kind != kind || k.State != stateOld || now.Before(k.NotAfter) {
			out = append(out, k)
		}
	}
	return out
}

func without(keys []*key, drop *key) []*key {
	out := make([]*key, 0, len(keys))
	for _, k := range keys {
		if k != drop {
			out = append(out, k)
		}
	}
	return out
}

// lifeFraction is the instant at fraction f of k's life.
func lifeFraction(k *key, num, den int64) time.Time {
	life := k.NotAfter.Sub(k.NotBefore)
	return k.NotBefore.Add(time.Duration(int64(life) / den * num))
}

// dropRevoked stops the use of every key a revocation names: an
// intermediate (with the roots' revoked, their intermediates) leaves at
// once, a root or JWT key becomes revoked and leaves the bundle at the
// revocation's enforce time. The rotation steps after it then activate or
// make the next keys.
func (a *Authority) dropRevoked(keys []*key, now time.Time, revoked map[string]time.Time) ([]*key, bool, error) {
	if len(revoked) == 0 {
		return keys, false, nil
	}
	changed := false
	for _, k := range append([]*key(nil), keys...) {
		at, ok := revoked[k.ID]
		if !ok {
			continue
		}
		switch {
		case k.Kind == kindIntermediate:
			keys = without(keys, k)
			a.log.Warn("revoked intermediate: no longer signs", "id", k.ID)
		case k.State != stateRevoked:
			k.State = stateRevoked
			a.log.Warn("revoked key: no longer signs; it leaves the bundle when the revocation is enforced", "kind", k.Kind, "id", k.ID, "enforce_after", at)
			for _, c := range append([]*key(nil), keys...) {
				if c.Kind == kindIntermediate && c.ParentID == k.ID {
					keys = without(keys, c)
				}
			}
		}
		if k.State == stateRevoked && !now.Before(at) {
			keys = without(keys, k)
			a.log.Warn("revoked key left the bundle", "kind", k.Kind, "id", k.ID)
		}
		changed = true
	}
	return keys, changed, nil
}

func (a *Authority) rotateRoots(keys []*key, now time.Time, in rotationInputs) ([]*key, bool, error) {
	changed := false
	active := find(keys, kindRoot, stateActive)
	prepared := find(keys, kindRoot, statePrepared)
	if active == nil || !now.Before(active.NotAfter) {
		// First start, or the CA was down past its root's life: nothing can
		// chain to the old root any more, so start over with a new one.
		if prepared != nil && now.Before(prepared.NotAfter) {
			prepared.State, prepared.ActivatedAt = stateActive, now
			a.log.Info("activated prepared root", "id", prepared.ID)
			active = prepared
			prepared = nil
		} else {
			k, err := a.newRoot(now)
			if err != nil {
				return nil, false, err
			}
			k.State, k.ActivatedAt = stateActive, now
			keys = append(keys, k)
			a.log.Info("created root", "id", k.ID, "not_after", k.NotAfter)
			active = k
		}
		changed = true
	}
	if prepared == nil && !now.Before(lifeFraction(active, 1, 2)) {
		k, err := a.newRoot(now)
		if err != nil {
			return nil, false, err
		}
		k.State = statePrepared
		keys = append(keys, k)
		prepared = k
		changed = true
		a.log.Info("prepared next root; published in the bundle", "id", k.ID)
	}
	if due := lifeFraction(active, 5, 6); prepared != nil && !now.Before(due) && a.acknowledged(prepared.ID, now.Sub(due), in) {
		active.State = stateOld
		prepared.State, prepared.ActivatedAt = stateActive, now
		changed = true
		a.log.Info("activated next root", "id", prepared.ID, "previous", active.ID)
	}
	// Retire old roots once nothing chained to them can still be valid.
	for _, k := range append([]*key(nil), keys...) {
		if k.Kind == kindRoot && k.State == stateOld && (!now.Before(k.ChainedUntil) || !now.Before(k.NotAfter)) {
			keys = without(keys, k)
			changed = true
			a.log.Info("retired root from the bundle", "id", k.ID)
		}
	}
	return keys, changed, nil
}

// acknowledged reports whether the prepared root id, due for activation
// for waited, may be activated: every live agent holds it (in tells), or
// the wait reached ActivationTimeout (then OnUnacknowledged is told who
// lags).
func (a *Authority) acknowledged(id string, waited time.Duration, in rotationInputs) bool {
	if a.cfg.Laggards == nil {
		return true
	}
	laggards, err := in.laggards, in.laggardsErr
	if in.prepared != id {
		// The keys changed since the laggards were read: look again at
		// the next rotation.
		laggards, err = nil, errors.New("the prepared root changed while its acknowledgements were read")
	}
	if err == nil && len(laggards) == 0 {
		a.held = ""
		return true
	}
	if waited < a.cfg.ActivationTimeout {
		if a.held != id {
			a.held = id
			a.log.Warn("root activation is due and waits for agents to acknowledge the root", "id", id, "laggards", laggards, "error", err, "timeout", a.cfg.ActivationTimeout-waited)
		}
		return false
	}
	why := fmt.Sprintf("the acknowledgement timeout (%s) passed", a.cfg.ActivationTimeout)
	if err != nil {
		why += "; acknowledgements could not be read: " + err.Error()
	}
	a.log.Warn("activating the next root although agents have not acknowledged it", "id", id, "laggards", laggards, "why", why)
	if a.cfg.OnUnacknowledged != nil {
		a.cfg.OnUnacknowledged(id, laggards, why)
	}
	a.held = ""
	return true
}

func (a *Authority) rotateIntermediate(keys []*key, now time.Time) ([]*key, bool, error) {
	root := find(keys, kindRoot, stateActive)
	cur := find(keys, kindIntermediate, stateActive)
	// A replaced intermediate stays, old, until its certificate expires: a
	// replica that has not reloaded yet may still sign with it, so an
	// external KMS must not delete its key before that.
	kept := dropExpired(keys, kindIntermediate, now)
	pruned := len(kept) != len(keys)
	keys = kept
	if cur != nil && cur.ParentID == root.ID && now.Before(lifeFraction(cur, 1, 2)) && now.Before(cur.NotAfter) {
		return keys, pruned, nil
	}
	k, err := a.newIntermediate(root, now)
	if err != nil {
		return nil, false, err
	}
	if cur != nil {
		cur.State = stateOld
	}
	k.State, k.ActivatedAt = stateActive, now
	if k.NotAfter.After(root.ChainedUntil) {
		root.ChainedUntil = k.NotAfter
	}
	keys = append(keys, k)
	a.log.Info("created intermediate", "id", k.ID, "root", root.ID, "not_after", k.NotAfter)
	return keys, true, nil
}

func (a *Authority) rotateJWT(keys []*key, now time.Time) ([]*key, bool, error) {
	changed := false
	active := find(keys, kindJWT, stateActive)
	prepared := find(keys, kindJWT, statePrepared)
	if active == nil || !now.Before(active.NotAfter) {
		if active != nil {
			keys = without(keys, active)
		}
		if prepared != nil && now.Before(prepared.NotAfter) {
			active, prepared = prepared, nil
		} else {
			k, err := a.newJWTKey(now)
			if err != nil {
				return nil, false, err
			}
			keys = append(keys, k)
			active = k
		}
		active.State, active.ActivatedAt = stateActive, now
		changed = true
	}
	// A change of JWT key type: the next key, of the new type, is
	// prepared at once (a prepared key of the old type was never used,
	// and goes).
	if prepared != nil && a.otherJWTKeyType(prepared) {
		keys = without(keys, prepared)
		prepared = nil
		changed = true
	}
	if prepared == nil && (!now.Before(lifeFraction(active, 1, 2)) || a.otherJWTKeyType(active)) {
		k, err := a.newJWTKey(now)
		if err != nil {
			return nil, false, err
		}
		k.State = statePrepared
		keys = append(keys, k)
		prepared = k
		changed = true
		a.log.Info("prepared next JWT key; published in the bundle", "kid", k.ID)
	}
	if prepared != nil && !now.Before(lifeFraction(active, 5, 6)) {
		active.State = stateOld
		prepared.State, prepared.ActivatedAt = stateActive, now
		changed = true
		a.log.Info("activated next JWT key", "kid", prepared.ID)
	}
	// A JWT-SVID never outlives the key that signed it, so an old key leaves
	// the bundle when it expires.
	for _, k := range append([]*key(nil), keys...) {
		if k.Kind == kindJWT && k.State == stateOld && !now.Before(k.NotAfter) {
			keys = without(keys, k)
			changed = true
		}
	}
	return keys, changed, nil
}

func signatureAlgorithm(keyType string) (kmsapi.SignatureAlgorithm, error) {
	switch keyType {
	case "ec-p256":
		return kmsapi.ECDSAWithSHA256, nil
	case "ec-p384":
		return kmsapi.ECDSAWithSHA384, nil
	case "rsa-2048", "rsa-3072", "rsa-4096":
		return kmsapi.SHA256WithRSA, nil
	}
	return 0, fmt.Errorf("authority: unknown key type %q (want ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096)", keyType)
}

// keyTypeOf names the type of a public key as KeyType does, or "" for
// any other.
func keyTypeOf(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return "ec-p256"
		case elliptic.P384():
			return "ec-p384"
		}
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return ""
}

// JWTAlgorithm is the JWS algorithm ("alg") of tokens signed with the
// private key of pub: ES256 (P-256), ES384 (P-384) or RS256 (RSA).
func JWTAlgorithm(pub crypto.PublicKey) (string, error) {
	switch t := keyTypeOf(pub); {
	case t == "ec-p256":
		return "ES256", nil
	case t == "ec-p384":
		return "ES384", nil
	case strings.HasPrefix(t, "rsa-"):
		return "RS256", nil
	}
	return "", fmt.Errorf("authority: no JWT algorithm for a %T key", pub)
}

// keyRequest asks for a key of keyType (checked by New).
func keyRequest(keyType string) *kmsapi.CreateKeyRequest {
	alg, _ := signatureAlgorithm(keyType)
	req := &kmsapi.CreateKeyRequest{SignatureAlgorithm: alg}
	switch keyType {
	case "rsa-2048":
		req.Bits = 2048
	case "rsa-3072":
		req.Bits = 3072
	case "rsa-4096":
		req.Bits = 4096
	}
	return req
}

func (a *Authority) caTemplate(now time.Time, ttl time.Duration, name string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"Signet"}, CommonName: name},
		URIs:                  []*url.URL{a.cfg.TrustDomain.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
}

func (a *Authority) newRoot(now time.Time) (*key, error) {
	cas, err := softcas.New(context.Background(), apiv1.Options{IsCreator: true, KeyManager: a.km.KeyManager})
	if err != nil {
		return nil, err
	}
	tmpl := a.caTemplate(now, a.cfg.RootTTL, "Signet root CA "+a.cfg.TrustDomain.Name())
	resp, err := cas.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Type:      apiv1.RootCA,
		Template:  tmpl,
		Lifetime:  a.cfg.RootTTL,
		CreateKey: a.km.createKeyRequest(keyRequest(a.cfg.KeyType), kindRoot),
	})
	if err != nil {
		return nil, err
	}
	return a.newKey(kindRoot, resp)
}

func (a *Authority) newIntermediate(root *key, now time.Time) (*key, error) {
	ttl := a.cfg.IntermediateTTL
	if remaining := root.NotAfter.Sub(now); remaining < ttl {
		ttl = remaining
	}
	cas, err := softcas.New(context.Background(), apiv1.Options{IsCreator: true, KeyManager: a.km.KeyManager})
	if err != nil {
		return nil, err
	}
	tmpl := a.caTemplate(now, ttl, "Signet intermediate CA "+a.cfg.TrustDomain.Name())
	tmpl.MaxPathLenZero = true
	resp, err := cas.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Type:      apiv1.IntermediateCA,
		Template:  tmpl,
		Lifetime:  ttl,
		CreateKey: a.km.createKeyRequest(keyRequest(a.cfg.KeyType), kindIntermediate),
		Parent:    &apiv1.CreateCertificateAuthorityResponse{Certificate: root.cert, Signer: root.signer},
	})
	if err != nil {
		return nil, err
	}
	k, err := a.newKey(kindIntermediate, resp)
	if err != nil {
		return nil, err
	}
	k.ParentID = root.ID
	return k, nil
}

func (a *Authority) newKey(kind string, resp *apiv1.CreateCertificateAuthorityResponse) (*key, error) {
	pemKey, keyURI, err := a.storedForm(resp.PrivateKey, resp.KeyName)
	if err != nil {
		return nil, err
	}
	return &key{
		CAKey: store.CAKey{
			ID:        hex.EncodeToString(resp.Certificate.SubjectKeyId),
			Kind:      kind,
			KeyPEM:    pemKey,
			KeyURI:    keyURI,
			CertDER:   resp.Certificate.Raw,
			NotBefore: resp.Certificate.NotBefore,
			NotAfter:  resp.Certificate.NotAfter,
		},
		cert:   resp.Certificate,
		signer: resp.Signer,
	}, nil
}

// otherJWTKeyType says whether k is known to be of another type than
// JWTKeyType.
func (a *Authority) otherJWTKeyType(k *key) bool {
	if k.signer == nil {
		return false
	}
	t := keyTypeOf(k.signer.Public())
	return t != "" && t != a.cfg.JWTKeyType
}

func (a *Authority) newJWTKey(now time.Time) (*key, error) {
	resp, err := a.km.CreateKey(a.km.createKeyRequest(keyRequest(a.cfg.JWTKeyType), kindJWT))
	if err != nil {
		return nil, err
	}
	signer, err := a.km.CreateSigner(&resp.CreateSignerRequest)
	if err != nil {
		return nil, err
	}
	pemKey, keyURI, err := a.storedForm(resp.PrivateKey, resp.Name)
	if err != nil {
		return nil, err
	}
	var kid [16]byte
	rand.Read(kid[:])
	return &key{
		CAKey: store.CAKey{
			ID:        hex.EncodeToString(kid[:]),
			Kind:      kindJWT,
			KeyPEM:    pemKey,
			KeyURI:    keyURI,
			NotBefore: now,
			NotAfter:  now.Add(a.cfg.JWTKeyTTL),
		},
		signer: signer,
	}, nil
}

// storedForm is what the store keeps of a new key: its PEM, or its name in
// the external KMS.
func (a *Authority) storedForm(priv crypto.PrivateKey, name string) (keyPEM []byte, keyURI string, err error) {
	if a.km.external() {
		if name == "" {
			return nil, "", errors.New("the KMS returned no name for the new key")
		}
		return nil, name, nil
	}
	keyPEM, err = marshalKey(priv)
	return keyPEM, "", err
}

// report tells OnKeyChange what differs between the key sets before (with
// the states in prior) and after.
func (a *Authority) report(prior map[string]string, before, after []*key) {
	if a.cfg.OnKeyChange == nil {
		return
	}
	was := prior
	change := func(c string, k *key) {
		a.cfg.OnKeyChange(KeyChange{Change: c, Kind: k.Kind, ID: k.ID, State: k.State, NotAfter: k.NotAfter, KMSName: k.KeyURI})
	}
	now := make(map[string]bool, len(after))
	for _, k := range after {
		now[k.ID] = true
		state, ok := was[k.ID]
		switch {
		case !ok:
			change("create", k)
		case state != k.State:
			change("state", k)
		}
	}
	for _, k := range before {
		if !now[k.ID] {
			change("retire", k)
		}
	}
}

// deleteKeys asks the external KMS to delete the keys that are in before
// and not in after: retired ones once after is stored, or ones made for a
// change the store refused. A key that cannot be deleted is logged by name,
// for the operator, and otherwise left alone: it signs nothing.
func (a *Authority) deleteKeys(ctx context.Context, before, after []*key, why string) {
	if a.km.delete == nil {
		return
	}
	kept := map[string]bool{}
	for _, k := range after {
		kept[k.KeyURI] = true
	}
	for _, k := range before {
		if k.KeyURI == "" || kept[k.KeyURI] {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := a.km.delete(dctx, k.KeyURI)
		cancel()
		if err != nil {
			a.log.Error("could not delete a key from the KMS; delete it by hand", "why", why, "kind", k.Kind, "id", k.ID, "key", k.KeyURI, "error", err)
			continue
		}
		delete(a.signers, k.KeyURI)
		a.log.Info("key scheduled for deletion in the KMS", "why", why, "kind", k.Kind, "id", k.ID, "key", k.KeyURI)
	}
}

func marshalKey(priv crypto.PrivateKey) ([]byte, error) {
	block, err := pemutil.Serialize(priv)
	if err != nil {
		return nil, fmt.Errorf("serialize key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}

// KeyInfo describes one of the CA's keys.
type KeyInfo struct {
	// ID is the hex subject key identifier of an X.509 key, or a JWT kid.
	ID, Kind, State, ParentID string
	// Serial is an X.509 key's certificate serial (lower-case hex).
	Serial              string
	NotBefore, NotAfter time.Time
	// KeyType names the key's type as Config.KeyType does.
	KeyType string
}

func (k *key) info() KeyInfo {
	i := KeyInfo{ID: k.ID, Kind: k.Kind, State: k.State, ParentID: k.ParentID, NotBefore: k.NotBefore, NotAfter: k.NotAfter}
	if k.signer != nil {
		i.KeyType = keyTypeOf(k.signer.Public())
	}
	if k.cert != nil {
		i.Serial = k.cert.SerialNumber.Text(16)
	}
	return i
}

// Keys describes every key the CA holds.
func (a *Authority) Keys() []KeyInfo {
	a.mu.RLock()
	defer a.mu.RUnlock()
	out := make([]KeyInfo, len(a.keys))
	for i, k := range a.keys {
		out[i] = k.info()
	}
	return out
}

// ErrNoPreparedRoot is returned by ActivateRoot when id is not the
// prepared root.
var ErrNoPreparedRoot = errors.New("no such prepared root")

// PrepareRoot makes the next root now, unless one is prepared, and
// publishes it in the bundle; it returns the prepared root.
func (a *Authority) PrepareRoot(ctx context.Context) (KeyInfo, error) {
	var prepared KeyInfo
	_, err := a.rotateWith(ctx, func(keys []*key, now time.Time) ([]*key, bool, error) {
		if k := find(keys, kindRoot, statePrepared); k != nil {
			prepared = k.info()
			return keys, false, nil
		}
		k, err := a.newRoot(now)
		if err != nil {
			return nil, false, err
		}
		k.State = statePrepared
		a.log.Info("prepared next root on request; published in the bundle", "id", k.ID)
		prepared = k.info()
		return append(keys, k), true, nil
	})
	return prepared, err
}

// ActivateRoot activates the prepared root id at once, whoever has
// acknowledged it (the caller checks), and returns the root that was
// active before.
func (a *Authority) ActivateRoot(ctx context.Context, id string) (previous KeyInfo, err error) {
	_, err = a.rotateWith(ctx, func(keys []*key, now time.Time) ([]*key, bool, error) {
		prepared := find(keys, kindRoot, statePrepared)
		if prepared == nil || prepared.ID != id {
			return nil, false, fmt.Errorf("%w %q", ErrNoPreparedRoot, id)
		}
		if active := find(keys, kindRoot, stateActive); active != nil {
			active.State = stateOld
			previous = active.info()
		}
		prepared.State, prepared.ActivatedAt = stateActive, now
		a.held = ""
		a.log.Info("activated next root on request", "id", id, "previous", previous.ID)
		return keys, true, nil
	})
	return previous, err
}

// Kick makes Run look at the keys at once: rotate on the leader (for a
// new revocation), reload on the others.
func (a *Authority) Kick() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// X509CA returns the intermediate that signs X509-SVIDs now.
func (a *Authority) X509CA() *X509CA {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.x509CA
}

// JWTKey returns the key that signs JWT-SVIDs now.
func (a *Authority) JWTKey() JWTKey {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.jwtKey
}

// Bundle returns the trust bundle and a channel that is closed when it next
// changes.
func (a *Authority) Bundle() (Bundle, <-chan struct{}) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.bundle, a.changed
}

// Run rotates keys every interval until ctx is done; watchers learn of
// bundle changes through Bundle's channel.
func (a *Authority) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.kick:
		case <-t.C:
		}
		if a.cfg.IsLeader != nil && !a.cfg.IsLeader() {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := a.Reload(rctx); err != nil {
				a.log.Error("reloading keys failed; signing with the ones held", "error", err)
			}
			cancel()
			continue
		}
		if _, err := a.Rotate(ctx); err != nil {
			// A failed rotation leaves the current keys in use; the next
			// tick tries again.
			a.log.Error("key rotation failed", "error", err)
		}
	}
}

// ErrSigningKeyRevoked is returned by Signing while the next key is not
// stored yet; the caller retries.
var ErrSigningKeyRevoked = errors.New("authority: the signing key is revoked and its successor is not stored yet")

// Signing returns the keys that sign X509-SVIDs and JWT-SVIDs now, after
// making sure no revocation names them (revoked, by key ID): the replica
// reloads or, on the leader, rotates first.
func (a *Authority) Signing(ctx context.Context, revoked map[string]time.Time) (*X509CA, JWTKey, error) {
	ca, jk := a.X509CA(), a.JWTKey()
	if !usesRevoked(ca, jk, revoked) {
		return ca, jk, nil
	}
	var err error
	if a.cfg.IsLeader != nil && !a.cfg.IsLeader() {
		_, err = a.Reload(ctx)
	} else {
		_, err = a.Rotate(ctx)
	}
	if err != nil {
		return nil, JWTKey{}, err
	}
	if ca, jk = a.X509CA(), a.JWTKey(); usesRevoked(ca, jk, revoked) {
		return nil, JWTKey{}, ErrSigningKeyRevoked
	}
	return ca, jk, nil
}

// usesRevoked reports whether ca's intermediate or its root, or jk, is
// revoked.
func usesRevoked(ca *X509CA, jk JWTKey, revoked map[string]time.Time) bool {
	if len(revoked) == 0 {
		return false
	}
	for _, id := range []string{hex.EncodeToString(ca.Certificate.SubjectKeyId), hex.EncodeToString(ca.Certificate.AuthorityKeyId), jk.ID} {
		if _, ok := revoked[id]; ok {
			return true
		}
	}
	return false
}
