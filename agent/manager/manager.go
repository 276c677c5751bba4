// Package manager is the agent's side of the conversation with the CA: it
// attests the node, keeps the agent SVID renewed, follows the Sync stream,
// and mints and rotates the workloads' SVIDs ahead of use into the cache.
// Workload keys are generated here, on the node; the CA sees CSRs only.
package manager

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/datadir"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/refusal"
	"github.com/signet-id/signet/internal/signetid"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// maxBatch is the most CSRs sent in one MintX509SVIDs call.
const maxBatch = 1000

// Config configures a Manager.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// CAAddress is the host:port of the CA's agent API.
	CAAddress string
	// DataDir keeps the agent SVID, its key and the last trust bundle.
	DataDir string
	// JoinToken, or the contents of JoinTokenFile, attests the node when
	// there is no valid agent SVID, and again after an eviction when the
	// token changes.
	JoinToken     string
	JoinTokenFile string
	// PSATTokenFile, when set, attests the node with this projected
	// service-account token (Kubernetes mode, read anew at every
	// attestation since the kubelet rotates it), for node NodeName.
	PSATTokenFile string
	NodeName      string
	// TrustBundle holds the roots to trust before the data directory has a
	// bundle of its own.
	TrustBundle []*x509.Certificate
	// Log receives the manager's logs. If nil, discarded.
	Log hclog.Logger
}

// Manager talks to the CA on the agent's behalf.
type Manager struct {
	cfg   Config
	log   hclog.Logger
	caID  spiffeid.ID
	cache *cache.Cache

	mu          sync.Mutex
	svid        *x509svid.SVID
	conn        *grpc.ClientConn
	client      agentv1.NodeClient
	connChanged chan struct{}
	evicted     string // reason; "" when not evicted
	triedTokens map[string]bool
	revision    int64
	bundleSeq   uint64
	firstSync   bool
	renewAt     time.Time
	jwts        map[string]jwtCached
	pulledAt    map[string]time.Time

	minted, mintErrors, renewals int64
}

type jwtCached struct {
	token             string
	issued, refreshAt time.Time
	expires           time.Time
}

// New loads the agent's state from its data directory.
func New(cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	changed, err := datadir.Prepare(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	if len(changed) > 0 {
		cfg.Log.Warn("the data directory holds the agent's private key: tightened what group or others could reach", "paths", changed)
	}
	roots := cfg.TrustBundle
	if stored, err := LoadBundleFile(filepath.Join(cfg.DataDir, bundleFile)); err == nil {
		// The bundle last received from the CA is newer than the one given
		// at first start.
		roots = stored
	}
	if len(roots) == 0 {
		return nil, errors.New("manager: no trust bundle: pass --trust-bundle (the PEM of `signet bundle show`)")
	}
	b, err := cache.NewBundle(cfg.TrustDomain, roots, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("manager: %w", err)
	}
	m := &Manager{
		cfg: cfg, log: cfg.Log, cache: cache.New(b),
		caID:        signetid.CA(cfg.TrustDomain),
		connChanged: make(chan struct{}), triedTokens: map[string]bool{}, jwts: map[string]jwtCached{}, pulledAt: map[string]time.Time{},
	}
	svid, err := loadSVID(cfg.DataDir)
	if err != nil {
		m.log.Warn("ignoring stored agent SVID", "error", err)
	}
	if svid != nil && time.Until(svid.Certificates[0].NotAfter) > 30*time.Second && svid.ID.TrustDomain() == cfg.TrustDomain {
		m.svid = svid
		m.renewAt = cache.RotationTime(svid.Certificates[0].NotAfter, time.Now())
		m.log.Info("using stored agent SVID", "spiffe_id", svid.ID, "expires", svid.Certificates[0].NotAfter)
	}
	return m, nil
}

// Cache returns the cache the manager fills.
func (m *Manager) Cache() *cache.Cache { return m.cache }

// ID returns the agent's SPIFFE ID, zero before attestation.
func (m *Manager) ID() spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svid == nil {
		return spiffeid.ID{}
	}
	return m.svid.ID
}

// Status says whether the agent is fit to serve, and why not.
func (m *Manager) Status() (ready bool, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.evicted != "":
		return false, m.evicted
	case m.svid == nil:
		return false, "not attested"
	case !m.firstSync:
		return false, "waiting for the first sync from the CA"
	}
	return true, "ok"
}

// GetX509SVID implements x509svid.Source with the agent SVID, for mTLS to
// the CA.
func (m *Manager) GetX509SVID() (*x509svid.SVID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svid == nil {
		return nil, errors.New("agent not attested")
	}
	return m.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the bundle
// the agent holds.
func (m *Manager) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	snap, _ := m.cache.Snapshot()
	if td != snap.Bundle.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return x509bundle.FromX509Authorities(td, snap.Bundle.X509Roots), nil
}

func (m *Manager) dial(svid bool) (*grpc.ClientConn, error) {
	var tlsCfg = tlsconfig.TLSClientConfig(m, tlsconfig.AuthorizeID(m.caID))
	if svid {
		tlsCfg = tlsconfig.MTLSClientConfig(m, m, tlsconfig.AuthorizeID(m.caID))
	}
	return grpc.NewClient(m.cfg.CAAddress,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		// Reconnect to a CA that comes back within seconds, not gRPC's
		// default of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
}

// nodeClient returns the current connection's client and a channel closed
// when the connection is replaced.
func (m *Manager) nodeClient() (agentv1.NodeClient, <-chan struct{}, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svid == nil {
		return nil, m.connChanged, errors.New("agent not attested")
	}
	if m.conn == nil {
		conn, err := m.dial(true)
		if err != nil {
			return nil, m.connChanged, err
		}
		m.conn, m.client = conn, agentv1.NewNodeClient(conn)
	}
	return m.client, m.connChanged, nil
}

// setSVID installs a new agent SVID and a fresh connection that presents it.
func (m *Manager) setSVID(svid *x509svid.SVID) {
	m.mu.Lock()
	old := m.conn
	m.svid, m.conn, m.client = svid, nil, nil
	m.renewAt = cache.RotationTime(svid.Certificates[0].NotAfter, time.Now())
	m.evicted = ""
	close(m.connChanged)
	m.connChanged = make(chan struct{})
	m.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

func (m *Manager) markEvicted(reason string) {
	m.mu.Lock()
	first := m.evicted == ""
	m.evicted = reason
	m.mu.Unlock()
	switch {
	case first && m.cfg.PSATTokenFile != "":
		m.log.Error("the CA no longer accepts this agent; it keeps serving cached SVIDs and attests again with its service-account token", "reason", reason)
	case first:
		m.log.Error("the CA no longer accepts this agent; it keeps serving cached SVIDs until they expire but gets no new ones. "+
			"Give it a new join token (write it to --join-token-file, or restart with --join-token)", "reason", reason)
	}
}

func (m *Manager) isEvicted() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.evicted != ""
}

// isAgentRefusal reports whether err says the CA no longer accepts this
// agent's SVID.
func isAgentRefusal(err error) bool {
	reason, _ := refusal.Of(err)
	return status.Code(err) == codes.Unauthenticated || reason == refusal.Agent
}

// newKeyAndCSR makes a P-256 key here, on the node, and a CSR for it; the
// key never leaves the agent.
func newKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	return key, csr, err
}

// token returns the configured join token, from the flag or the file, or
// the projected service-account token.
func (m *Manager) token() string {
	if m.cfg.PSATTokenFile != "" {
		raw, err := os.ReadFile(m.cfg.PSATTokenFile)
		if err != nil {
			m.log.Warn("reading the service-account token failed", "file", m.cfg.PSATTokenFile, "error", err)
			return ""
		}
		return strings.TrimSpace(string(raw))
	}
	if m.cfg.JoinTokenFile != "" {
		raw, err := os.ReadFile(m.cfg.JoinTokenFile)
		if err == nil {
			return strings.TrimSpace(string(raw))
		}
	}
	return strings.TrimSpace(m.cfg.JoinToken)
}

// attest exchanges a join token for an agent SVID.
func (m *Manager) attest(ctx context.Context, token string) error {
	m.mu.Lock()
	m.triedTokens[token] = true
	m.mu.Unlock()
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	conn, err := m.dial(false)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req := &agentv1.AttestNodeRequest{
		Attestation: &agentv1.AttestNodeRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: token}},
		Csr:         csr,
	}
	if m.cfg.PSATTokenFile != "" {
		req.Attestation = &agentv1.AttestNodeRequest_K8SPsat{K8SPsat: &agentv1.K8SPSATAttestation{Token: token, NodeName: m.cfg.NodeName}}
	}
	resp, err := agentv1.NewNodeClient(conn).AttestNode(ctx, req)
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	svid, err := parseSVID(resp.GetSvidChain(), key)
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	if err := saveSVID(m.cfg.DataDir, svid); err != nil {
		return fmt.Errorf("attest: save agent SVID: %w", err)
	}
	m.applyBundle(resp.GetBundle())
	m.setSVID(svid)
	m.log.Info("attested", "spiffe_id", svid.ID, "expires", svid.Certificates[0].NotAfter)
	return nil
}

func parseSVID(chain [][]byte, key crypto.Signer) (*x509svid.SVID, error) {
	var certs []*x509.Certificate
	for _, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate from the CA: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 || len(certs[0].URIs) != 1 {
		return nil, errors.New("the CA sent no SVID")
	}
	id, err := spiffeid.FromURI(certs[0].URIs[0])
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// Run works until ctx is done. It attests first if there is no valid agent
// SVID; that failing is the only error it returns before ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	if m.ID().IsZero() {
		tok := m.token()
		if tok == "" && m.cfg.PSATTokenFile != "" {
			return fmt.Errorf("no valid agent SVID in the data directory and no service-account token in %s", m.cfg.PSATTokenFile)
		}
		if tok == "" {
			return errors.New("no valid agent SVID in the data directory and no join token (--join-token or --join-token-file)")
		}
		// A CA that is not up yet is waited for; a refused token is final.
		bo := backoff{max: 5 * time.Second}
		for {
			err := m.attest(ctx, tok)
			if err == nil {
				break
			}
			if c := status.Code(err); c == codes.PermissionDenied || c == codes.InvalidArgument || ctx.Err() != nil {
				return err
			}
			d := bo.next()
			m.log.Warn("attestation failed; retrying", "error", err, "retry_in", d)
			sleep(ctx, d, nil)
		}
	}
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){m.syncLoop, m.mintLoop, m.renewLoop, m.reattestLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
	m.mu.Lock()
	if m.conn != nil {
		m.conn.Close()
	}
	m.mu.Unlock()
	return nil
}

// backoff doubles from 100 ms to max.
type backoff struct {
	cur, max time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = 100 * time.Millisecond
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

// pause is sleep for a loop whose call to the CA failed: it also ends when
// the connection to the CA, having been down, is ready again, so that work
// resumes as soon as a CA that was away answers rather than at the next
// backoff step (which could outlast the SVIDs in hand).
func (m *Manager) pause(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	conn := m.conn
	m.mu.Unlock()
	back := make(chan struct{})
	if conn != nil {
		go func() {
			down := false
			for s := conn.GetState(); ; s = conn.GetState() {
				switch s {
				case connectivity.Ready:
					if down {
						close(back)
						return
					}
				case connectivity.Shutdown:
					return // replaced: wake says so
				case connectivity.Idle:
					down = true
					conn.Connect()
				default:
					down = true
				}
				if !conn.WaitForStateChange(ctx, s) {
					return
				}
			}
		}()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	case <-back:
	}
}

func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}

// syncLoop keeps one Sync stream open, resuming from the last revision
// after each reconnect.
func (m *Manager) syncLoop(ctx context.Context) {
	bo := backoff{max: 2 * time.Second}
	for ctx.Err() == nil {
		client, connChanged, err := m.nodeClient()
		if err != nil || m.isEvicted() {
			sleep(ctx, time.Second, connChanged)
			continue
		}
		m.mu.Lock()
		rev := m.revision
		m.mu.Unlock()
		err = m.followSync(ctx, client, rev, &bo)
		if ctx.Err() != nil {
			return
		}
		if isAgentRefusal(err) {
			m.markEvicted(status.Convert(err).Message())
			continue
		}
		d := bo.next()
		m.log.Warn("sync stream ended; reconnecting", "error", err, "retry_in", d)
		m.pause(ctx, d, connChanged)
	}
}

func (m *Manager) followSync(ctx context.Context, client agentv1.NodeClient, rev int64, bo *backoff) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Sync(ctx, &agentv1.SyncRequest{Revision: rev})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		bo.reset()
		m.applySync(msg)
	}
}

func (m *Manager) applySync(msg *agentv1.SyncResponse) {
	u := cache.Update{Full: msg.GetFull(), Deleted: msg.GetDeletedEntryIds(), PodsFull: msg.GetPodsFull(), PodsDeleted: msg.GetDeletedPodEntryIds(),
		Policies: msg.GetPolicies(), PoliciesSet: msg.GetPoliciesSet()}
	for _, pb := range msg.GetEntries() {
		e, err := entry.FromProto(m.cfg.TrustDomain, pb)
		if err != nil || entry.IsPodEntryID(e.ID) {
			m.log.Warn("ignoring invalid entry from the CA", "entry_id", pb.GetId(), "error", err)
			continue
		}
		u.Entries = append(u.Entries, e)
	}
	for _, pb := range msg.GetPodEntries() {
		e, err := entry.FromProto(m.cfg.TrustDomain, pb)
		if err != nil || !entry.IsPodEntryID(e.ID) {
			m.log.Warn("ignoring invalid pod entry from the CA", "entry_id", pb.GetId(), "error", err)
			continue
		}
		u.PodEntries = append(u.PodEntries, e)
	}
	if pb := msg.GetBundle(); pb != nil {
		if b := m.bundleFromProto(pb); b != nil {
			u.Bundle = b
		}
	}
	m.cache.Apply(u)
	m.mu.Lock()
	m.revision = msg.GetRevision()
	first := !m.firstSync
	m.firstSync = true
	m.mu.Unlock()
	if first {
		m.log.Info("first sync from the CA", "entries", len(u.Entries), "revision", msg.GetRevision())
	} else {
		m.log.Debug("sync", "entries", len(u.Entries), "deleted", len(u.Deleted), "revision", msg.GetRevision())
	}
}

// applyBundle installs a bundle outside a sync (at attestation).
func (m *Manager) applyBundle(pb *typesv1.Bundle) {
	if b := m.bundleFromProto(pb); b != nil {
		m.cache.Apply(cache.Update{Bundle: b})
	}
}

// bundleFromProto converts and persists a bundle; nil if it is invalid or
// not newer.
func (m *Manager) bundleFromProto(pb *typesv1.Bundle) *cache.Bundle {
	if pb == nil || pb.GetTrustDomain() != m.cfg.TrustDomain.Name() {
		return nil
	}
	var roots []*x509.Certificate
	for _, der := range pb.GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			m.log.Warn("ignoring bundle with a bad root", "error", err)
			return nil
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		m.log.Warn("ignoring bundle without roots")
		return nil
	}
	keys := map[string]crypto.PublicKey{}
	for _, k := range pb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			m.log.Warn("ignoring bundle with a bad JWT key", "kid", k.GetKeyId(), "error", err)
			return nil
		}
		keys[k.GetKeyId()] = pub
	}
	b, err := cache.NewBundle(m.cfg.TrustDomain, roots, keys, pb.GetSequence())
	if err != nil {
		m.log.Warn("ignoring bundle", "error", err)
		return nil
	}
	m.mu.Lock()
	changed := pb.GetSequence() != m.bundleSeq
	m.bundleSeq = pb.GetSequence()
	m.mu.Unlock()
	if changed {
		if err := writeFileAtomic(filepath.Join(m.cfg.DataDir, bundleFile), certsPEM(roots), 0o600); err != nil {
			m.log.Warn("could not save the trust bundle", "error", err)
		}
	}
	return b
}

// mintLoop mints SVIDs for entries that have none or are due for rotation,
// in batches, and sleeps until the next rotation or change.
func (m *Manager) mintLoop(ctx context.Context) {
	bo := backoff{max: 2 * time.Second}
	for ctx.Err() == nil {
		_, changed := m.cache.Snapshot()
		due, next := m.cache.Due(time.Now())
		m.mu.Lock()
		synced := m.firstSync
		m.mu.Unlock()
		if len(due) > 0 && synced && !m.isEvicted() {
			if err := m.mint(ctx, due); err != nil {
				if ctx.Err() != nil {
					return
				}
				d := bo.next()
				m.log.Warn("minting SVIDs failed; keeping the cached ones", "due", len(due), "error", err, "retry_in", d)
				// A sync message after a reconnect, or the connection
				// coming back, wakes this early.
				m.pause(ctx, d, changed)
				continue
			}
			bo.reset()
		}
		if synced {
			m.cache.MarkSynced()
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = time.Until(next)
		}
		sleep(ctx, wait, changed)
	}
}

// mint gets SVIDs for entries from the CA, with keys generated here.
func (m *Manager) mint(ctx context.Context, due []entry.Entry) error {
	client, _, err := m.nodeClient()
	if err != nil {
		return err
	}
	for start := 0; start < len(due); start += maxBatch {
		batch := due[start:min(start+maxBatch, len(due))]
		keys, reqs, err := csrs(batch)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		resp, err := client.MintX509SVIDs(cctx, &agentv1.MintX509SVIDsRequest{Requests: reqs})
		cancel()
		if err != nil {
			m.mu.Lock()
			m.mintErrors++
			m.mu.Unlock()
			if isAgentRefusal(err) {
				m.markEvicted(status.Convert(err).Message())
			}
			if id := refusedPodEntry(err); id != "" {
				// The pod left the node before its deletion reached us:
				// forget it so that the other entries are minted.
				m.cache.Apply(cache.Update{PodsDeleted: []string{id}})
				m.log.Info("dropped the identity of a pod no longer on this node", "entry_id", id)
			}
			return err
		}
		got := make(map[string]*cache.SVID, len(batch))
		for i, s := range resp.GetSvids() {
			if i >= len(batch) || s.GetEntryId() != batch[i].ID {
				return errors.New("the CA answered out of order")
			}
			svid, err := parseSVID(s.GetCertChain(), keys[i])
			if err != nil {
				return err
			}
			if svid.ID != batch[i].SPIFFEID {
				return fmt.Errorf("the CA signed %s for entry %s of %s", svid.ID, batch[i].ID, batch[i].SPIFFEID)
			}
			pkcs8, err := x509.MarshalPKCS8PrivateKey(keys[i])
			if err != nil {
				return err
			}
			var chain []byte
			for _, der := range s.GetCertChain() {
				chain = append(chain, der...)
			}
			notAfter := svid.Certificates[0].NotAfter
			got[batch[i].ID] = &cache.SVID{ChainDER: chain, KeyPKCS8: pkcs8, NotAfter: notAfter, RotateAt: cache.RotationTime(notAfter, time.Now())}
		}
		m.cache.SetSVIDs(got)
		m.mu.Lock()
		m.minted += int64(len(got))
		m.mu.Unlock()
	}
	return nil
}

// csrs makes a key and CSR per entry, on every core.
func csrs(batch []entry.Entry) ([]crypto.Signer, []*agentv1.X509SVIDRequest, error) {
	keys := make([]crypto.Signer, len(batch))
	reqs := make([]*agentv1.X509SVIDRequest, len(batch))
	errs := make([]error, len(batch))
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(batch); i += workers {
				k, der, err := newKeyAndCSR()
				keys[i], reqs[i], errs[i] = k, &agentv1.X509SVIDRequest{EntryId: batch[i].ID, Csr: der}, err
			}
		}()
	}
	wg.Wait()
	return keys, reqs, errors.Join(errs...)
}

// renewLoop renews the agent SVID at half its life.
func (m *Manager) renewLoop(ctx context.Context) {
	bo := backoff{max: time.Minute}
	for ctx.Err() == nil {
		svid, err := m.GetX509SVID()
		if err != nil || m.isEvicted() {
			m.mu.Lock()
			changed := m.connChanged
			m.mu.Unlock()
			sleep(ctx, 5*time.Second, changed)
			continue
		}
		cert := svid.Certificates[0]
		m.mu.Lock()
		at := m.renewAt
		m.mu.Unlock()
		if d := time.Until(at); d > 0 {
			m.mu.Lock()
			changed := m.connChanged
			m.mu.Unlock()
			sleep(ctx, d, changed)
			continue
		}
		if time.Now().After(cert.NotAfter) {
			m.markEvicted("the agent SVID expired while the CA was unreachable")
			continue
		}
		if err := m.renew(ctx); err != nil {
			if isAgentRefusal(err) {
				m.markEvicted(status.Convert(err).Message())
				continue
			}
			d := bo.next()
			m.log.Warn("renewing the agent SVID failed", "error", err, "retry_in", d)
			m.pause(ctx, d, nil)
			continue
		}
		bo.reset()
	}
}

func (m *Manager) renew(ctx context.Context) error {
	client, _, err := m.nodeClient()
	if err != nil {
		return err
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := client.RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csr})
	if err != nil {
		return err
	}
	svid, err := parseSVID(resp.GetSvidChain(), key)
	if err != nil {
		return err
	}
	if err := saveSVID(m.cfg.DataDir, svid); err != nil {
		return err
	}
	m.setSVID(svid)
	m.mu.Lock()
	m.renewals++
	m.mu.Unlock()
	m.log.Info("renewed agent SVID", "expires", svid.Certificates[0].NotAfter)
	return nil
}

// reattestLoop, while the agent is evicted, attests again with any join
// token it has not tried yet (a new one written to --join-token-file).
func (m *Manager) reattestLoop(ctx context.Context) {
	bo := backoff{max: 30 * time.Second}
	for ctx.Err() == nil {
		sleep(ctx, 2*time.Second, nil)
		if !m.isEvicted() {
			bo.reset()
			continue
		}
		if m.cfg.PSATTokenFile != "" {
			// A service-account token can be presented again; the CA
			// decides whether this pod is still the node's agent.
			if err := m.attest(ctx, m.token()); err != nil {
				d := bo.next()
				m.log.Error("attesting again failed", "error", err, "retry_in", d)
				sleep(ctx, d, nil)
			}
			continue
		}
		tok := m.token()
		m.mu.Lock()
		tried := m.triedTokens[tok]
		m.mu.Unlock()
		if tok == "" || tried {
			continue
		}
		if err := m.attest(ctx, tok); err != nil {
			m.log.Error("attesting with the new join token failed", "error", err)
		}
	}
}

// FetchJWTSVID returns a JWT-SVID for an entry, from cache while it is
// younger than half its life, else from the CA. If the CA is unreachable a
// cached token that has not expired is returned.
func (m *Manager) FetchJWTSVID(ctx context.Context, entryID string, audience []string) (string, time.Time, error) {
	aud := append([]string(nil), audience...)
	sort.Strings(aud)
	key := entryID + "\x00" + strings.Join(aud, "\x00")
	now := time.Now()
	m.mu.Lock()
	c, ok := m.jwts[key]
	m.mu.Unlock()
	if ok && now.Before(c.refreshAt) {
		return c.token, c.expires, nil
	}
	client, _, err := m.nodeClient()
	if err == nil && !m.isEvicted() {
		var resp *agentv1.MintJWTSVIDResponse
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err = client.MintJWTSVID(cctx, &agentv1.MintJWTSVIDRequest{EntryId: entryID, Audience: audience})
		cancel()
		if err == nil {
			exp := time.Unix(resp.GetExpiresAt(), 0)
			c = jwtCached{token: resp.GetToken(), issued: now, expires: exp, refreshAt: now.Add(exp.Sub(now) / 2)}
			m.mu.Lock()
			if len(m.jwts) > 10000 {
				m.jwts = map[string]jwtCached{}
			}
			m.jwts[key] = c
			m.mu.Unlock()
			return c.token, c.expires, nil
		}
	}
	if ok && now.Before(c.expires) {
		return c.token, c.expires, nil
	}
	if err == nil {
		err = errors.New("agent evicted")
	}
	return "", time.Time{}, err
}

// Counts returns SVIDs minted, failed mint calls and agent renewals.
func (m *Manager) Counts() (minted, mintErrors, renewals int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.minted, m.mintErrors, m.renewals
}

// refusedPodEntry returns the pod entry a mint refusal names, if any.
func refusedPodEntry(err error) string {
	reason, meta := refusal.Of(err)
	if id := meta[refusal.EntryID]; reason == refusal.Entry && entry.IsPodEntryID(id) {
		return id
	}
	return ""
}

// pullRetry is how soon the same pod may be asked about again.
const pullRetry = 2 * time.Second

// PullPod asks the CA for the identities of a pod on this node whose
// push has not arrived yet (Kubernetes mode), and adds them to the cache;
// the mint loop then signs them at once.
func (m *Manager) PullPod(ctx context.Context, uid string) error {
	now := time.Now()
	m.mu.Lock()
	if t, ok := m.pulledAt[uid]; ok && now.Sub(t) < pullRetry {
		m.mu.Unlock()
		return nil
	}
	for k, t := range m.pulledAt {
		if now.Sub(t) >= pullRetry {
			delete(m.pulledAt, k)
		}
	}
	m.pulledAt[uid] = now
	m.mu.Unlock()
	client, _, err := m.nodeClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := client.FetchPodEntries(ctx, &agentv1.FetchPodEntriesRequest{PodUid: uid})
	if err != nil {
		return err
	}
	var u cache.Update
	for _, pb := range resp.GetEntries() {
		e, err := entry.FromProto(m.cfg.TrustDomain, pb)
		if err != nil || !entry.IsPodEntryID(e.ID) {
			m.log.Warn("ignoring invalid pod entry from the CA", "entry_id", pb.GetId(), "error", err)
			continue
		}
		u.PodEntries = append(u.PodEntries, e)
	}
	if len(u.PodEntries) > 0 {
		m.cache.Apply(u)
	}
	m.log.Debug("pulled pod identities", "pod_uid", uid, "entries", len(u.PodEntries))
	return nil
}

// ReportDecisions sends services' authorization decisions to the CA's
// audit log and returns once it has written them.
func (m *Manager) ReportDecisions(ctx context.Context, req *typesv1.DecisionReport) error {
	client, _, err := m.nodeClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = client.ReportDecisions(ctx, req)
	return err
}

// SignWorkloadCSR has the CA sign a workload's own CSR for an entry the
// workload attested to; the key stays with the workload.
func (m *Manager) SignWorkloadCSR(ctx context.Context, entryID string, csr []byte) ([][]byte, error) {
	client, _, err := m.nodeClient()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: entryID, Csr: csr}}})
	if err != nil {
		return nil, err
	}
	if len(resp.GetSvids()) != 1 {
		return nil, errors.New("the CA answered with no SVID")
	}
	return resp.GetSvids()[0].GetCertChain(), nil
}
