package attack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
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
	_, err := s.nodeClient(t).ReportDecisions(context.Background(), &typesv1.DecisionReport{Decisions: []*typesv1.Decision{
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

// TestForgedTraffic: an agent reports traffic counts in the name of a
// server on another node, to teach the CA's learner that a thief is one
// of its usual callers (so that no anomaly is found, and the suggested
// least-privilege policy lets the thief in). Only counts of the agent's
// own workloads may reach the profiles; the attempt is audited.
func TestForgedTraffic(t *testing.T) {
	s := startStandalone(t)
	const own, other = "spiffe://example.org/attack/own-traffic", "spiffe://example.org/payments-traffic"
	const thief, caller = "spiffe://example.org/thief", "spiffe://example.org/caller"
	s.cli(t, "entry", "create", "--spiffe-id", own, "--parent-id", "spiffe://example.org/signet/agent/join/attack-node", "--selector", "unix:uid:12345")
	s.cli(t, "entry", "create", "--spiffe-id", other, "--parent-id", "spiffe://example.org/signet/agent/join/elsewhere", "--selector", "unix:uid:12345")
	minute := time.Now().Unix() / 60 * 60
	_, err := s.nodeClient(t).ReportDecisions(context.Background(), &typesv1.DecisionReport{Traffic: []*typesv1.TrafficCount{
		{Server: other, Peer: thief, Method: "/pay.v1.Pay/Refund", Minute: minute, Calls: 1000, BytesOut: 1 << 20},
		{Server: own, Peer: caller, Method: "/own.v1.Own/Get", Minute: minute, Calls: 3},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The counts of one report are learned together: once the own
	// server's caller is in its suggested policy, the forged ones were
	// either learned too or left out.
	eventually(t, 20*time.Second, "the own workload's caller in its suggested policy", func() bool {
		return strings.Contains(s.cli(t, "policy", "suggest", "--server", own, "--format", "json"), caller)
	})
	out, err := exec.Command(filepath.Join(env.Bin, "signet"), "--admin-socket", s.adminSocket, "policy", "suggest", "--server", other, "--format", "json").CombinedOutput()
	if strings.Contains(string(out), thief) {
		t.Fatalf("counts forged for another node's server were learned; its suggested policy:\n%s", out)
	}
	if err != nil && !strings.Contains(string(out), "no calls observed") {
		t.Fatalf("signet policy suggest for the other server: %v\n%s", err, out)
	}
	refused := false
	for _, rec := range s.auditRecords(t) {
		if rec["event"] == "request.refuse" && rec["actor"] == "spiffe://example.org/signet/agent/join/attack-node" &&
			strings.Contains(fmt.Sprint(rec["reason"]), other) {
			refused = true
		}
	}
	if !refused {
		t.Error("the forged traffic counts were not audited as refused")
	}
}

// TestForgedDecisionsKubernetes: the same with Kubernetes agents, whose
// workloads are their node's pods. An agent's report for a pod of its own
// node is recorded; one for another node's pod is not; a pod created
// after the agent's first report counts once the CA sees it.
func TestForgedDecisionsKubernetes(t *testing.T) {
	const ns = "attack-decisions"
	ca := kubeCA(t, ns, "decisions")
	env.Cluster.CreateNode(t, "attack-node-4")
	env.Cluster.CreateNode(t, "attack-node-5")
	_, tok := agentPodOn(t, "attack-node-4", "agent-decisions")
	svid, err := ca.AttestPSAT(tok, "attack-node-4")
	if err != nil {
		t.Fatal(err)
	}
	client := ca.NodeClient(svid)
	mine := env.Cluster.CreatePod(t, "attack-dec", "mine", "mine", "attack-node-4", nil)
	theirs := env.Cluster.CreatePod(t, "attack-dec", "theirs", "theirs", "attack-node-5", nil)
	t.Cleanup(func() { env.Cluster.DeletePod(t, mine); env.Cluster.DeletePod(t, theirs) })
	const mineID, theirsID, laterID = "spiffe://example.org/ns/attack-dec/sa/mine", "spiffe://example.org/ns/attack-dec/sa/theirs", "spiffe://example.org/ns/attack-dec/sa/later"
	report := func(server string) {
		t.Helper()
		if _, err := client.ReportDecisions(context.Background(), &typesv1.DecisionReport{Decisions: []*typesv1.Decision{
			{Server: server, Peer: "spiffe://example.org/caller", Method: "/x.v1.X/Get", Allowed: true, Count: 1, Time: time.Now().Unix()},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	recorded := func(server string) bool {
		for _, rec := range ca.AuditLog() {
			if rec["event"] == "authz.allow" && rec["spiffe_id"] == server {
				return true
			}
		}
		return false
	}
	eventually(t, 20*time.Second, "the decision of the agent's own pod recorded", func() bool { report(mineID); return recorded(mineID) })
	report(theirsID)
	if recorded(theirsID) {
		t.Fatal("a decision of another node's pod reached the audit log")
	}
	later := env.Cluster.CreatePod(t, "attack-dec", "later", "later", "attack-node-4", nil)
	t.Cleanup(func() { env.Cluster.DeletePod(t, later) })
	eventually(t, 20*time.Second, "the decision of a pod created later recorded", func() bool { report(laterID); return recorded(laterID) })
}
