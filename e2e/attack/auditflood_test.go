package attack

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/signet-id/signet/e2e/testenv"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// TestAuditFlood: anyone who can reach the CA's agent port made it write
// one audit record per refused call (failed attestations, agent calls
// without a certificate), until its disk was full; then every request
// failed. Unauthenticated refusals are now recorded in full up to a limit
// per source and interval and counted beyond; authenticated actions keep
// one record each; a metric tells how full the disk is. The shipped
// NetworkPolicy admits only agent pods to the port.
func TestAuditFlood(t *testing.T) {
	s := startStandalone(t)
	anon := s.nodeClient(t, true)
	ctx := context.Background()
	const flood = 1000
	for i := 0; i < flood; i++ {
		if _, err := anon.AttestNode(ctx, &agentv1.AttestNodeRequest{Attestation: &agentv1.AttestNodeRequest_JoinToken{
			JoinToken: &agentv1.JoinTokenAttestation{Token: "forged-token"}}}); err == nil {
			t.Fatal("a forged join token attested")
		}
		if i%10 == 0 {
			// An agent call without a certificate: refused on the stream.
			if st, err := anon.Sync(ctx, &agentv1.SyncRequest{}); err == nil {
				if _, err := st.Recv(); err == nil {
					t.Fatal("Sync answered a caller without a certificate")
				}
			}
		}
	}
	// Authenticated actions meanwhile: every one recorded.
	for _, id := range []string{"a", "b", "c"} {
		s.cli(t, "entry", "create", "--spiffe-id", "spiffe://example.org/flood/"+id, "--parent-id", "spiffe://example.org/signet/agent/join/attack-node", "--selector", "unix:uid:4242")
	}
	resp, err := http.Get("http://" + s.caHealth + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"signet_ca_audit_unauthenticated_suppressed_total", "signet_ca_audit_disk_free_ratio"} {
		if !strings.Contains(string(metrics), m) {
			t.Errorf("metric %s missing", m)
		}
	}
	// The CA writes the last counts when it stops.
	s.ca.Process.Signal(syscall.SIGTERM)
	s.ca.Wait()
	var full, counted, creates int64
	for _, rec := range s.auditRecords(t) {
		switch {
		case rec["actor"] == "unauthenticated" && rec["event"] == "request.refuse.aggregate":
			counted += int64(rec["count"].(float64))
		case rec["actor"] == "unauthenticated":
			full++
		case rec["event"] == "entry.create":
			creates++
		}
	}
	if full > 50 {
		t.Errorf("%d unauthenticated refusals were recorded one by one", full)
	}
	if full+counted < flood {
		t.Errorf("%d recorded + %d counted refusals; want all %d attestations accounted for", full, counted, flood)
	}
	if creates != 3 {
		t.Errorf("%d entry.create records, want 3", creates)
	}
	fi, _ := os.Stat(filepath.Join(s.caData, "audit.log"))
	t.Logf("%d refused calls: %d records in full, %d counted; audit log %d bytes", flood+flood/10, full, counted, fi.Size())

	// The shipped NetworkPolicy: only agent pods reach the agent port.
	for _, renderer := range [][]string{{"kustomize", "build", "../../deploy/base"}, {"helm", "template", "signet", "../../deploy/helm/signet", "--namespace", "signet-system"}} {
		out, err := exec.Command(filepath.Join(testenv.BinDir(), renderer[0]), renderer[1:]...).Output()
		if err != nil {
			t.Fatal(err)
		}
		objs, err := testenv.ParseYAML(out)
		if err != nil {
			t.Fatal(err)
		}
		checked := false
		for _, u := range objs {
			if u.GetKind() != "NetworkPolicy" || u.GetName() != "signet-ca" {
				continue
			}
			rules, _, _ := unstructured.NestedSlice(u.Object, "spec", "ingress")
			for _, r := range rules {
				rm := r.(map[string]any)
				for _, p := range rm["ports"].([]any) {
					if p.(map[string]any)["port"] == int64(8081) || p.(map[string]any)["port"] == float64(8081) {
						checked = true
						from, _ := rm["from"].([]any)
						raw, _ := json.Marshal(from)
						if len(from) != 1 || !strings.Contains(string(raw), `"app.kubernetes.io/component":"agent"`) || !strings.Contains(string(raw), `"kubernetes.io/metadata.name":"signet-system"`) {
							t.Errorf("%s: port 8081 admits %s, want the agent pods of signet-system only", renderer[0], raw)
						}
					}
				}
			}
		}
		if !checked {
			t.Errorf("%s: no NetworkPolicy rule for the CA's port 8081", renderer[0])
		}
	}
}
