// Package systest starts a real signet-ca and signet-agent in the test's
// process, on real sockets in a temporary directory, for tests that need
// the whole system.
package systest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/signet-id/signet/agent"
	"github.com/signet-id/signet/ca/authority/awskms"
	"github.com/signet-id/signet/ca/clustermode"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/internal/signetid"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// TrustDomain is the trust domain of every test system.
var TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")

// CA is a running signet-ca.
type CA struct {
	t     testing.TB
	Dir   string
	Addr  string
	Admin adminv1.AdminClient
	cfg   server.Config
	stop  func()
}

// FreeAddr returns a loopback address no one listens on.
func FreeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func logger(t testing.TB, name string) hclog.Logger {
	if os.Getenv("SYSTEST_LOG") == "" {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Debug, Output: os.Stderr})
}

// StartCA starts a CA; opts adjust its config.
func StartCA(t testing.TB, opts ...func(*server.Config)) *CA {
	t.Helper()
	dir := t.TempDir()
	ca := &CA{t: t, Dir: dir, Addr: FreeAddr(t)}
	// Tests rotate SVIDs in seconds, below the one-minute floor of
	// production.
	ca.cfg = server.Config{TrustDomain: TrustDomain, DataDir: filepath.Join(dir, "ca"), ListenAddr: ca.Addr, Log: logger(t, "ca"), MinSVIDTTL: time.Second,
		Cluster: clustermode.Build, OpenKMS: awskms.Open} // as signet-ca wires them
	for _, o := range opts {
		o(&ca.cfg)
	}
	ca.Start()
	conn, err := grpc.NewClient("unix://"+filepath.Join(ca.cfg.DataDir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ca.Admin = adminv1.NewAdminClient(conn)
	t.Cleanup(ca.Stop)
	return ca
}

// Start starts the CA (again) on the same data directory and address.
func (ca *CA) Start() {
	ca.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	cfg := ca.cfg
	cfg.Ready = func(string) { close(ready) }
	go func() { done <- server.Run(ctx, cfg) }()
	select {
	case <-ready:
	case err := <-done:
		ca.t.Fatalf("signet-ca: %v", err)
	}
	ca.stop = func() {
		cancel()
		if err := <-done; err != nil {
			ca.t.Errorf("signet-ca: %v", err)
		}
	}
}

// Stop stops the CA; it may be started again.
func (ca *CA) Stop() {
	if ca.stop != nil {
		ca.stop()
		ca.stop = nil
	}
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.cfg.TrustDomain }

// Roots returns the trust bundle's roots.
func (ca *CA) Roots() []*x509.Certificate {
	ca.t.Helper()
	resp, err := ca.Admin.GetBundle(context.Background(), &adminv1.GetBundleRequest{})
	if err != nil {
		ca.t.Fatal(err)
	}
	var roots []*x509.Certificate
	for _, der := range resp.GetBundle().GetX509Authorities() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			ca.t.Fatal(err)
		}
		roots = append(roots, c)
	}
	return roots
}

// Token creates a join token for node.
func (ca *CA) Token(node string) string {
	ca.t.Helper()
	resp, err := ca.Admin.CreateJoinToken(context.Background(), &adminv1.CreateJoinTokenRequest{NodeName: node})
	if err != nil {
		ca.t.Fatal(err)
	}
	return resp.GetToken()
}

// CreateEntry creates one entry and returns it with its id.
func (ca *CA) CreateEntry(id, parent string, ttl time.Duration, selectors ...string) *typesv1.Entry {
	ca.t.Helper()
	e := &typesv1.Entry{SpiffeId: id, ParentId: parent, X509SvidTtlSeconds: int64(ttl / time.Second)}
	for _, s := range selectors {
		typ, val, _ := cut(s)
		e.Selectors = append(e.Selectors, &typesv1.Selector{Type: typ, Value: val})
	}
	resp, err := ca.Admin.CreateEntries(context.Background(), &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{e}})
	if err != nil {
		ca.t.Fatal(err)
	}
	return resp.GetEntries()[0]
}

func cut(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// Agent is a running signet-agent.
type Agent struct {
	t      testing.TB
	ID     spiffeid.ID
	Socket string
	// Addr is the Workload API address for go-spiffe clients.
	Addr string
	cfg  agent.Config
	stop func()
}

// StartAgent starts an agent for node, attested with a fresh join token.
func (ca *CA) StartAgent(node string, opts ...func(*agent.Config)) *Agent {
	ca.t.Helper()
	dir := filepath.Join(ca.Dir, "agent-"+node)
	a := &Agent{t: ca.t, Socket: filepath.Join(dir, "agent.sock")}
	a.Addr = "unix://" + a.Socket
	a.cfg = agent.Config{
		TrustDomain: TrustDomain, CAAddress: ca.Addr, DataDir: dir, JoinToken: ca.Token(node),
		TrustBundle: ca.Roots(), SocketPath: a.Socket, Log: logger(ca.t, "agent-"+node),
	}
	for _, o := range opts {
		o(&a.cfg)
	}
	a.Start()
	ca.t.Cleanup(a.Stop)
	return a
}

// Start starts the agent (again) on its data directory.
func (a *Agent) Start() {
	a.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan spiffeid.ID, 1)
	done := make(chan error, 1)
	cfg := a.cfg
	cfg.Ready = func(id spiffeid.ID) { ready <- id }
	go func() { done <- agent.Run(ctx, cfg) }()
	select {
	case a.ID = <-ready:
	case err := <-done:
		cancel()
		a.t.Fatalf("signet-agent: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		a.t.Fatal("signet-agent did not start in 30s")
	}
	a.stop = func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			a.t.Errorf("signet-agent: %v", err)
		}
	}
}

// Stop stops the agent; it may be started again.
func (a *Agent) Stop() {
	if a.stop != nil {
		a.stop()
		a.stop = nil
	}
}

// SetJoinToken changes the token a restarted agent would use.
func (a *Agent) SetJoinToken(tok string) { a.cfg.JoinToken = tok }

// Config returns the agent's configuration.
func (a *Agent) Config() agent.Config { return a.cfg }

// NodeClient dials the CA's agent API as an agent with svid, or as an
// agent that has not attested yet when svid is nil.
func (ca *CA) NodeClient(svid *x509svid.SVID) agentv1.NodeClient {
	ca.t.Helper()
	roots := x509bundle.FromX509Authorities(TrustDomain, ca.Roots())
	authz := tlsconfig.AuthorizeID(signetid.CA(TrustDomain))
	cfg := tlsconfig.TLSClientConfig(roots, authz)
	if svid != nil {
		cfg = tlsconfig.MTLSClientConfig(svid, roots, authz)
	}
	conn, err := grpc.NewClient(ca.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		ca.t.Fatal(err)
	}
	ca.t.Cleanup(func() { conn.Close() })
	return agentv1.NewNodeClient(conn)
}

// NewCSR returns a fresh P-256 key and a CSR for it.
func NewCSR(t testing.TB) (crypto.Signer, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// AttestPSAT attests an agent with a Kubernetes service-account token and
// returns its SVID.
func (ca *CA) AttestPSAT(token, node string) (*x509svid.SVID, error) {
	ca.t.Helper()
	key, csr := NewCSR(ca.t)
	resp, err := ca.NodeClient(nil).AttestNode(context.Background(), &agentv1.AttestNodeRequest{
		Attestation: &agentv1.AttestNodeRequest_K8SPsat{K8SPsat: &agentv1.K8SPSATAttestation{Token: token, NodeName: node}},
		Csr:         csr,
	})
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for _, der := range resp.GetSvidChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	id, err := spiffeid.FromString(resp.GetSpiffeId())
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// AuditLog returns the CA's audit records so far.
func (ca *CA) AuditLog() []map[string]any {
	ca.t.Helper()
	raw, err := os.ReadFile(filepath.Join(ca.cfg.DataDir, "audit.log"))
	if err != nil {
		ca.t.Fatal(err)
	}
	var recs []map[string]any
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			ca.t.Fatalf("audit line %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// AuditRaw returns the CA's audit log as written.
func (ca *CA) AuditRaw() string {
	ca.t.Helper()
	raw, err := os.ReadFile(filepath.Join(ca.cfg.DataDir, "audit.log"))
	if err != nil {
		ca.t.Fatal(err)
	}
	return string(raw)
}

// Echo serves l until it closes: each connection gets back every byte it
// sends, until it ends or is idle for a minute.
func Echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var b [1]byte
			for {
				c.SetDeadline(time.Now().Add(time.Minute))
				if _, err := io.ReadFull(c, b[:]); err != nil {
					return
				}
				if _, err := c.Write(b[:]); err != nil {
					return
				}
			}
		}()
	}
}

// Buffer is a process's output (or a log), written by one goroutine and
// read by the test.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
