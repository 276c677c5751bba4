// Package caclient is the agent's side of the conversation with the CA:
// it attests the node (again after an eviction), keeps the agent SVID
// renewed and the connection that presents it, follows the Sync stream
// into the cache, and makes the node API's calls for the rest of the
// agent (minting, pod pulls, decision reports). What to mint and when is
// agent/rotation's job.
package caclient

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/backoff"
	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/keygen"
	"github.com/signet-id/signet/internal/refusal"
	"github.com/signet-id/signet/internal/signetid"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/revocation"
)

// Config configures a Client.
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
	// Log receives the client's logs. If nil, discarded.
	Log hclog.Logger
	// Clock tells the time and waits. If nil, clock.Real.
	Clock clock.Clock
	// WorkloadAcks, if set, are passed on to the CA with the agent's own
	// acknowledgement of the bundle.
	WorkloadAcks WorkloadAcks
}

// Client talks to the CA on the agent's behalf.
type Client struct {
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
	// renewWake is closed (and replaced) to make renewLoop look again: a
	// revocation covers the agent's SVID.
	renewWake chan struct{}
	// attesting says how the first attestation goes, while it goes.
	attesting string
	pulledAt  map[string]time.Time
	renewals  int64
	// pendingReissue counts SVIDs a revocation covered at the last
	// acknowledgement.
	pendingReissue int
	// mints counts MintX509SVIDs calls under way; mintsDone is closed
	// (and replaced) when the count falls to zero.
	mints     int
	mintsDone chan struct{}
	// streamUp says whether the Sync stream delivers; when it does not,
	// streamDown is since when and streamErr why.
	streamUp   bool
	streamDown time.Time
	streamErr  string
}

// StreamGrace is how long the Sync stream may be down (a reconnect, a
// replica's restart) before the agent reports it not ready.
const StreamGrace = 5 * time.Second

// New loads the agent's state from its data directory.
func New(cfg Config) (*Client, error) {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	roots := cfg.TrustBundle
	if stored, err := LoadBundleFile(filepath.Join(cfg.DataDir, bundleFile)); err == nil {
		// The bundle last received from the CA is newer than the one given
		// at first start.
		roots = stored
	}
	if len(roots) == 0 {
		return nil, errors.New("caclient: no trust bundle: pass --trust-bundle (the PEM of `signet bundle show`)")
	}
	b, err := cache.NewBundle(cfg.TrustDomain, roots, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("caclient: %w", err)
	}
	m := &Client{
		cfg: cfg, log: cfg.Log, cache: cache.New(b),
		caID:        signetid.CA(cfg.TrustDomain),
		connChanged: make(chan struct{}), renewWake: make(chan struct{}), triedTokens: map[string]bool{}, pulledAt: map[string]time.Time{},
	}
	svid, err := loadSVID(cfg.DataDir)
	if err != nil {
		m.log.Warn("ignoring stored agent SVID", "error", err)
	}
	if now := cfg.Clock.Now(); svid != nil && svid.Certificates[0].NotAfter.Sub(now) > 30*time.Second && svid.ID.TrustDomain() == cfg.TrustDomain {
		m.svid = svid
		m.renewAt = cache.RotationTime(svid.Certificates[0].NotAfter, now)
		m.log.Info("using stored agent SVID", "spiffe_id", svid.ID, "expires", svid.Certificates[0].NotAfter)
	}
	return m, nil
}

// Cache returns the cache the manager fills.
func (m *Client) Cache() *cache.Cache { return m.cache }

// ID returns the agent's SPIFFE ID, zero before attestation.
func (m *Client) ID() spiffeid.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svid == nil {
		return spiffeid.ID{}
	}
	return m.svid.ID
}

// Status says whether the agent is fit to serve, and why not.
func (m *Client) Status() (ready bool, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.evicted != "":
		return false, m.evicted
	case m.svid == nil && m.attesting != "":
		return false, "not attested yet: " + m.attesting
	case m.svid == nil:
		return false, "not attested"
	case !m.firstSync:
		return false, "waiting for the first sync from the CA"
	case !m.streamUp && m.cfg.Clock.Now().Sub(m.streamDown) > StreamGrace:
		return false, fmt.Sprintf("no Sync stream to the CA at %s for %s (%s); serving the SVIDs it holds",
			m.cfg.CAAddress, m.cfg.Clock.Now().Sub(m.streamDown).Round(time.Second), m.streamErr)
	}
	return true, "ok"
}

// StreamUp says whether the Sync stream to the CA delivers now.
func (m *Client) StreamUp() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.streamUp
}

// streamEnded records that the Sync stream stopped delivering, and why.
func (m *Client) streamEnded(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.streamUp || m.streamDown.IsZero() {
		m.streamDown = m.cfg.Clock.Now()
	}
	m.streamUp = false
	m.streamErr = status.Convert(err).Message()
}

// GetX509SVID implements x509svid.Source with the agent SVID, for mTLS to
// the CA.
func (m *Client) GetX509SVID() (*x509svid.SVID, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svid == nil {
		return nil, errors.New("agent not attested")
	}
	return m.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source with the bundle
// the agent holds.
func (m *Client) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	snap, _ := m.cache.Snapshot()
	if td != snap.Bundle.TrustDomain {
		return nil, fmt.Errorf("no bundle for trust domain %q", td)
	}
	return x509bundle.FromX509Authorities(td, snap.Bundle.X509Roots), nil
}

func (m *Client) dial(svid bool) (*grpc.ClientConn, error) {
	var tlsCfg = tlsconfig.TLSClientConfig(m, tlsconfig.AuthorizeID(m.caID))
	if svid {
		tlsCfg = tlsconfig.MTLSClientConfig(m, m, tlsconfig.AuthorizeID(m.caID))
	}
	target, replicas := caTarget(m.cfg.CAAddress)
	return grpc.NewClient(target, append(replicas,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		// A CA that went silent (a partition, a dead host) is noticed within
		// 15 s; the CA allows a ping every 10 s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
		// Reconnect to a CA that comes back within seconds, not gRPC's
		// default of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))...)
}

// caTarget is the gRPC target of the CA's address: as given for one, and
// for a comma-separated list of replicas, a resolver of its own that
// holds them all, with pick_first over a shuffled list, so that agents
// spread over the replicas and move to another when theirs fails.
func caTarget(addr string) (string, []grpc.DialOption) {
	addrs := strings.Split(addr, ",")
	if len(addrs) == 1 {
		return addr, nil
	}
	r := manual.NewBuilderWithScheme("signet-ca")
	var state resolver.State
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: strings.TrimSpace(a)})
	}
	r.InitialState(state)
	return r.Scheme() + ":///signet-ca", []grpc.DialOption{grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true}}]}`)}
}

// nodeClient returns the current connection's client and a channel closed
// when the connection is replaced.
func (m *Client) nodeClient() (agentv1.NodeClient, <-chan struct{}, error) {
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
func (m *Client) setSVID(svid *x509svid.SVID) {
	m.replaceConn(func() {
		m.svid = svid
		m.renewAt = cache.RotationAfter(svid.Certificates[0].NotBefore, svid.Certificates[0].NotAfter, m.cfg.Clock.Now())
		m.evicted = ""
	})
}

// redial drops the connection to the CA: the next call dials again.
func (m *Client) redial() { m.replaceConn(func() {}) }

// replaceConn runs change and drops the connection in one step under
// m.mu, announces it (connChanged), and closes the old connection.
func (m *Client) replaceConn(change func()) {
	m.mu.Lock()
	old := m.conn
	change()
	m.conn, m.client = nil, nil
	close(m.connChanged)
	m.connChanged = make(chan struct{})
	m.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

func (m *Client) markEvicted(reason string) {
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

func (m *Client) isEvicted() bool {
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

// token returns the configured join token, from the flag or the file, or
// the projected service-account token.
func (m *Client) token() string {
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
func (m *Client) attest(ctx context.Context, token string) error {
	m.mu.Lock()
	m.triedTokens[token] = true
	m.mu.Unlock()
	key, csr, err := keygen.KeyAndCSR()
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

// Attest attests the node unless the data directory holds a valid agent
// SVID, and returns once the agent has one: a CA that is not up yet is
// waited for, a refused token is final.
func (m *Client) Attest(ctx context.Context) error {
	if !m.ID().IsZero() {
		return nil
	}
	tok := m.token()
	if tok == "" && m.cfg.PSATTokenFile != "" {
		return fmt.Errorf("no valid agent SVID in the data directory and no service-account token in %s", m.cfg.PSATTokenFile)
	}
	if tok == "" {
		return errors.New("no valid agent SVID in the data directory and no join token (--join-token or --join-token-file)")
	}
	bo := backoff.Backoff{Max: 5 * time.Second}
	m.setAttesting("attesting with the CA at " + m.cfg.CAAddress)
	for {
		err := m.attest(ctx, tok)
		if err == nil {
			m.setAttesting("")
			return nil
		}
		m.setAttesting(fmt.Sprintf("attesting with the CA at %s failed (%v); trying again", m.cfg.CAAddress, err))
		if c := status.Code(err); c == codes.PermissionDenied || c == codes.InvalidArgument || ctx.Err() != nil {
			return err
		}
		if untrustedCA(err) {
			// Not a CA that is down, but one of another trust domain or
			// with other roots: waiting would never help.
			return fmt.Errorf("the CA at %s does not verify against this agent's trust bundle (trust domain %s); give the agent the bundle of that CA (`signet bundle show`): %w",
				m.cfg.CAAddress, m.cfg.TrustDomain, err)
		}
		d := bo.Next()
		m.log.Warn("attestation failed; retrying", "error", err, "retry_in", d)
		m.sleep(ctx, d, nil)
	}
}

func (m *Client) setAttesting(state string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.attesting = state
}

// untrustedCA reports whether err is a TLS handshake that failed because
// the CA's certificate does not verify against the agent's bundle.
func untrustedCA(err error) bool {
	msg := status.Convert(err).Message()
	if !strings.Contains(msg, "authentication handshake failed") {
		return false
	}
	for _, why := range []string{"x509", "no bundle for trust domain", "unexpected ID"} {
		if strings.Contains(msg, why) {
			return true
		}
	}
	return false
}

// Run follows the Sync stream, renews the agent SVID and attests again
// after an eviction, until ctx ends. Attest first.
func (m *Client) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){m.syncLoop, m.renewLoop, m.reattestLoop, m.ackLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(ctx)
		}()
	}
	wg.Wait()
}

// Close closes the connection to the CA.
func (m *Client) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != nil {
		m.conn.Close()
		m.conn, m.client = nil, nil
	}
}

// Pause is sleep for a loop whose call to the CA failed: it also ends
// when the connection to the CA, having been down, is ready again, so
// that work resumes as soon as a CA that was away answers rather than at
// the next backoff step (which could outlast the SVIDs in hand).
func (m *Client) Pause(ctx context.Context, d time.Duration, wake <-chan struct{}) {
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
	t, stop := m.cfg.Clock.After(d)
	defer stop()
	select {
	case <-ctx.Done():
	case <-t:
	case <-wake:
	case <-back:
	}
}

// sleep waits d, or until ctx ends or wake or also is closed.
func (m *Client) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}, also ...<-chan struct{}) {
	t, stop := m.cfg.Clock.After(d)
	defer stop()
	var other <-chan struct{}
	if len(also) > 0 {
		other = also[0]
	}
	select {
	case <-ctx.Done():
	case <-t:
	case <-wake:
	case <-other:
	}
}

// renewIfRevoked renews the agent SVID at once when a revocation covers
// it (its CA key is revoked: the CA accepts it until the revocation is
// enforced, so that the agent re-issues first).
func (m *Client) renewIfRevoked(revs []*typesv1.Revocation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.svid == nil || revocation.New(revs).Covers(m.svid.Certificates) == nil {
		return
	}
	m.log.Warn("a revocation covers the agent SVID; renewing it now")
	m.renewAt = time.Time{}
	close(m.renewWake)
	m.renewWake = make(chan struct{})
}

// syncLoop keeps one Sync stream open, resuming from the last revision
// after each reconnect.
func (m *Client) syncLoop(ctx context.Context) {
	bo := backoff.Backoff{Max: 2 * time.Second}
	for ctx.Err() == nil {
		client, connChanged, err := m.nodeClient()
		if err != nil || m.isEvicted() {
			if err != nil {
				m.streamEnded(err)
			}
			m.sleep(ctx, time.Second, connChanged)
			continue
		}
		m.mu.Lock()
		rev := m.revision
		m.mu.Unlock()
		err = m.followSync(ctx, client, rev, &bo)
		if ctx.Err() != nil {
			return
		}
		m.streamEnded(err)
		if isAgentRefusal(err) {
			m.markEvicted(status.Convert(err).Message())
			continue
		}
		if reason, _ := refusal.Of(err); reason == refusal.ReplicaDeaf && strings.Contains(m.cfg.CAAddress, ",") {
			// The replica is up but cannot serve: its connection is
			// healthy, so gRPC would stay on it. Dial again (the list
			// shuffled) until another replica takes the stream.
			m.log.Warn("the CA replica cannot serve (it does not hear the other replicas); trying another", "error", err)
			m.redial()
		}
		d := bo.Next()
		m.log.Warn("sync stream ended; reconnecting", "error", err, "retry_in", d)
		m.Pause(ctx, d, connChanged)
	}
}

func (m *Client) followSync(ctx context.Context, client agentv1.NodeClient, rev int64, bo *backoff.Backoff) error {
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
		bo.Reset()
		m.applySync(msg)
		m.mu.Lock()
		if !m.streamUp {
			if !m.streamDown.IsZero() {
				m.log.Info("Sync stream to the CA serves again", "down_for", m.cfg.Clock.Now().Sub(m.streamDown).Round(time.Millisecond))
			}
			m.streamUp = true
		}
		m.mu.Unlock()
	}
}

func (m *Client) applySync(msg *agentv1.SyncResponse) {
	u := cache.Update{Full: msg.GetFull(), Deleted: msg.GetDeletedEntryIds(), PodsFull: msg.GetPodsFull(), PodsDeleted: msg.GetDeletedPodEntryIds(),
		Policies: msg.GetPolicies(), PoliciesSet: msg.GetPoliciesSet(), Revocations: msg.GetRevocations(), DenyList: msg.GetDenyList(), RevocationsSet: msg.GetRevocationsSet()}
	for _, pb := range msg.GetEntries() {
		e, err := entry.FromProto(m.cfg.TrustDomain, pb)
		if err != nil || entry.IsPodEntryID(e.ID) {
			m.log.Warn("ignoring invalid entry from the CA", "entry_id", pb.GetId(), "error", err)
			continue
		}
		u.Entries = append(u.Entries, e)
	}
	u.PodEntries = m.podEntries(msg.GetPodEntries())
	if pb := msg.GetBundle(); pb != nil {
		if b := m.bundleFromProto(pb); b != nil {
			u.Bundle = b
		}
	}
	if msg.GetFederatedBundlesSet() {
		u.Federated, u.FederatedSet = m.federatedBundles(msg.GetFederatedBundles()), true
	}
	m.cache.Apply(u)
	if u.RevocationsSet {
		m.renewIfRevoked(u.Revocations)
	}
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

// podEntries reads pod entries from the CA, leaving out (with a warning)
// any that is invalid or not a pod's.
func (m *Client) podEntries(pbs []*typesv1.Entry) []entry.Entry {
	var out []entry.Entry
	for _, pb := range pbs {
		e, err := entry.FromProto(m.cfg.TrustDomain, pb)
		if err != nil || !entry.IsPodEntryID(e.ID) {
			m.log.Warn("ignoring invalid pod entry from the CA", "entry_id", pb.GetId(), "error", err)
			continue
		}
		out = append(out, e)
	}
	return out
}

// federatedBundles reads the federated trust domains' bundles, leaving
// out (with a warning) any that is invalid or claims this trust domain.
func (m *Client) federatedBundles(pbs []*typesv1.Bundle) map[spiffeid.TrustDomain]*cache.Bundle {
	out := map[spiffeid.TrustDomain]*cache.Bundle{}
	for _, pb := range pbs {
		b, err := cache.BundleFromProto(pb)
		if err == nil && b.TrustDomain == m.cfg.TrustDomain {
			err = errors.New("it claims this trust domain")
		}
		if err != nil {
			m.log.Warn("ignoring a federated bundle from the CA", "trust_domain", pb.GetTrustDomain(), "error", err)
			continue
		}
		out[b.TrustDomain] = b
	}
	return out
}

// applyBundle installs a bundle outside a sync (at attestation).
func (m *Client) applyBundle(pb *typesv1.Bundle) {
	if b := m.bundleFromProto(pb); b != nil {
		m.cache.Apply(cache.Update{Bundle: b})
	}
}

// bundleFromProto converts and persists a bundle; nil if it is invalid or
// not newer.
func (m *Client) bundleFromProto(pb *typesv1.Bundle) *cache.Bundle {
	if pb == nil || pb.GetTrustDomain() != m.cfg.TrustDomain.Name() {
		return nil
	}
	b, err := cache.BundleFromProto(pb)
	if err != nil {
		m.log.Warn("ignoring bundle", "error", err)
		return nil
	}
	if len(b.X509Roots) == 0 {
		m.log.Warn("ignoring bundle without roots")
		return nil
	}
	roots := b.X509Roots
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

// Synced reports whether the agent has had its first sync from the CA.
func (m *Client) Synced() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.firstSync
}

// Evicted reports whether the CA no longer accepts this agent.
func (m *Client) Evicted() bool { return m.isEvicted() }

// MintX509SVIDs has the CA sign CSRs for entries of this agent. A refusal
// of the agent marks it evicted; a refusal of a pod entry (its pod left
// the node before its deletion reached the agent) drops that entry from
// the cache, so that the other entries are minted.
func (m *Client) MintX509SVIDs(ctx context.Context, reqs []*agentv1.X509SVIDRequest) ([]*agentv1.X509SVID, error) {
	client, _, err := m.nodeClient()
	if err != nil {
		return nil, err
	}
	m.startMint()
	defer m.endMint()
	resp, err := client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: reqs})
	if err != nil {
		if isAgentRefusal(err) {
			m.markEvicted(status.Convert(err).Message())
		}
		if id := refusedPodEntry(err); id != "" {
			m.cache.Apply(cache.Update{PodsDeleted: []string{id}})
			m.log.Info("dropped the identity of a pod no longer on this node", "entry_id", id)
		}
		return nil, err
	}
	return resp.GetSvids(), nil
}

func (m *Client) startMint() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mints == 0 {
		m.mintsDone = make(chan struct{})
	}
	m.mints++
}

func (m *Client) endMint() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mints--
	if m.mints == 0 {
		close(m.mintsDone)
	}
}

// mintsUnderWay says whether MintX509SVIDs calls are under way, and
// returns a channel closed when none is.
func (m *Client) mintsUnderWay() (bool, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mints > 0, m.mintsDone
}

// MintJWTSVID has the CA sign a JWT-SVID for an entry of this agent.
func (m *Client) MintJWTSVID(ctx context.Context, entryID string, audience []string) (string, time.Time, error) {
	client, _, err := m.nodeClient()
	if err != nil {
		return "", time.Time{}, err
	}
	if m.isEvicted() {
		return "", time.Time{}, errors.New("agent evicted")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := client.MintJWTSVID(ctx, &agentv1.MintJWTSVIDRequest{EntryId: entryID, Audience: audience})
	if err != nil {
		return "", time.Time{}, err
	}
	return resp.GetToken(), time.Unix(resp.GetExpiresAt(), 0), nil
}

// renewLoop renews the agent SVID at half its life.
func (m *Client) renewLoop(ctx context.Context) {
	bo := backoff.Backoff{Max: time.Minute}
	for ctx.Err() == nil {
		svid, err := m.GetX509SVID()
		if err != nil || m.isEvicted() {
			m.mu.Lock()
			changed := m.connChanged
			m.mu.Unlock()
			m.sleep(ctx, 5*time.Second, changed)
			continue
		}
		cert := svid.Certificates[0]
		m.mu.Lock()
		at := m.renewAt
		m.mu.Unlock()
		if d := at.Sub(m.cfg.Clock.Now()); d > 0 {
			m.mu.Lock()
			changed, wake := m.connChanged, m.renewWake
			m.mu.Unlock()
			m.sleep(ctx, d, changed, wake)
			continue
		}
		if m.cfg.Clock.Now().After(cert.NotAfter) {
			m.markEvicted("the agent SVID expired while the CA was unreachable")
			continue
		}
		if err := m.renew(ctx); err != nil {
			if isAgentRefusal(err) {
				m.markEvicted(status.Convert(err).Message())
				continue
			}
			d := bo.Next()
			m.log.Warn("renewing the agent SVID failed", "error", err, "retry_in", d)
			m.Pause(ctx, d, nil)
			continue
		}
		bo.Reset()
	}
}

func (m *Client) renew(ctx context.Context) error {
	client, _, err := m.nodeClient()
	if err != nil {
		return err
	}
	key, csr, err := keygen.KeyAndCSR()
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
func (m *Client) reattestLoop(ctx context.Context) {
	bo := backoff.Backoff{Max: 30 * time.Second}
	for ctx.Err() == nil {
		m.sleep(ctx, 2*time.Second, nil)
		if !m.isEvicted() {
			bo.Reset()
			continue
		}
		if m.cfg.PSATTokenFile != "" {
			// A service-account token can be presented again; the CA
			// decides whether this pod is still the node's agent.
			if err := m.attest(ctx, m.token()); err != nil {
				d := bo.Next()
				m.log.Error("attesting again failed", "error", err, "retry_in", d)
				m.sleep(ctx, d, nil)
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

// Renewals returns how often the agent SVID was renewed.
func (m *Client) Renewals() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.renewals
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
func (m *Client) PullPod(ctx context.Context, uid string) error {
	now := m.cfg.Clock.Now()
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
	u := cache.Update{PodEntries: m.podEntries(resp.GetEntries())}
	if len(u.PodEntries) > 0 {
		m.cache.Apply(u)
	}
	m.log.Debug("pulled pod identities", "pod_uid", uid, "entries", len(u.PodEntries))
	return nil
}

// ReportDecisions sends services' authorization decisions to the CA's
// audit log and returns once it has written them.
func (m *Client) ReportDecisions(ctx context.Context, req *typesv1.DecisionReport) error {
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
func (m *Client) SignWorkloadCSR(ctx context.Context, entryID string, csr []byte) ([][]byte, error) {
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
