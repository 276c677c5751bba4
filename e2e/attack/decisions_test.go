package attack

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// nodeClient dials the standalone CA's agent API with the agent's own
// SVID and key, as read from its data directory (what a thief of the
// node's files holds), or with no client certificate (anyone who can
// reach the port) if anonymous.
func (s *standalone) nodeClient(t *testing.T, anonymous ...bool) agentv1.NodeClient {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	b, err := x509bundle.Load(td, filepath.Join(s.dir, "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	authz := tlsconfig.AuthorizeID(spiffeid.RequireFromSegments(td, "signet", "ca"))
	cfg := tlsconfig.TLSClientConfig(b, authz)
	if len(anonymous) == 0 || !anonymous[0] {
		svid, err := x509svid.Load(filepath.Join(s.agentData, "agent-svid.pem"), filepath.Join(s.agentData, "agent-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cfg = tlsconfig.MTLSClientConfig(svid, b, authz)
	}
	conn, err := grpc.NewClient(s.caAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewNodeClient(conn)
}

// auditRecords reads the CA's audit log.
func (s *standalone) auditRecords(t *testing.T) []map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(s.caData, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil {
			out = append(out, rec)
		}
	}
	return out
}

// TestForgedDecisions: an agent (or whoever holds its key) reports
// authorization decisions in the name of servers on other nodes, to bury
// or fake their audit trail. Only decisions of its own workloads may reach
// the audit log.
func TestForgedDecisions(t *testing.T) {
	s := startStandalone(t)
	const own, other = "spiffe://example.org/attack/own", "spiffe://example.org/payments"
	s.cli(t, "entry", "create", "--spiffe-id", own, "--parent-id", "spiffe://example.org/signet/agent/join/attack-node", "--selector", "unix:uid:12345")
	s.cli(t, "entry", "create", "--spiffe-id", other, "--parent-id", "spiffe://example.org/signet/agent/join/elsewhere", "--selector", "unix:uid:12345")
	now := time.Now().Unix()
	_, err := s.nodeClient(t).ReportDecisions(context.Background(), &agentv1.ReportDecisionsRequest{Decisions: []*agentv1.Decision{
		{Server: other, Peer: "spiffe://example.org/thief", Method: "/pay.v1.Pay/Refund", Allowed: true, Count: 1000, Time: now},
		{Server: own, Peer: "spiffe://example.org/caller", Method: "/own.v1.Own/Get", Allowed: true, Count: 1, Time: now},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var ownSeen, refused bool
	for _, rec := range s.auditRecords(t) {
		switch {
		case rec["spiffe_id"] == other && (rec["event"] == "authz.allow" || rec["event"] == "authz.deny"):
			t.Errorf("a decision of another node's server reached the audit log: %v", rec)
		case rec["spiffe_id"] == own && rec["event"] == "authz.allow":
			ownSeen = true
		case rec["event"] == "request.refuse" && rec["actor"] == "spiffe://example.org/signet/agent/join/attack-node":
			refused = true
		}
	}
	if !ownSeen {
		t.Error("the decision of the agent's own workload is missing")
	}
	if !refused {
		t.Error("the forged decisions were not audited as refused")
	}
}
