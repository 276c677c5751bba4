package node

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestWorkloadGetsItsPodIdentity: a real container's process asks the
// agent through the mounted socket and gets the identity its pod derives
// from the default IdentityRule, first time, without a refusal; the agent
// attested it through the kubelet and its cgroup.
func TestWorkloadGetsItsPodIdentity(t *testing.T) {
	p, r, created := runWorkload(t, "demo", "hello", "greeter")
	defer deletePod(t, p)
	if r.SPIFFEID != "spiffe://example.org/ns/demo/sa/greeter" {
		t.Fatalf("workload got %q (errors %v)", r.SPIFFEID, r.Errors)
	}
	if r.Attempts != 1 || len(r.Errors) > 0 {
		t.Fatalf("the workload was refused before it got its identity: %d attempts, %v", r.Attempts, r.Errors)
	}
	total := r.LoggedAt.Sub(created)
	t.Logf("pod created -> SVID in the workload: %s (pod start %s, the workload's own wait %.1f ms)",
		total, total-time.Duration(r.MS*float64(time.Millisecond)), r.MS)

	// The agent's audit record shows the kubelet's view of the process.
	// The first answer may rest on the pod's selectors alone (the kubelet
	// reports a new container a moment after it starts); the agent then
	// completes the attestation (also once a one-shot client such as this
	// workload has left) and audits it, naming this pod.
	rec := findAudit(t, func(rec map[string]any) bool {
		return rec["event"] == "workload.fetch_x509_svid" && rec["result"] == "success" && slices.Contains(strs(rec["spiffe_ids"]), r.SPIFFEID) &&
			slices.Contains(strs(rec["selectors"]), "k8s:pod-uid:"+string(p.UID)) && slices.Contains(strs(rec["selectors"]), "k8s:container-name:main")
	})
	sels := strs(rec["selectors"])
	for _, want := range []string{"k8s:pod-uid:" + string(p.UID), "k8s:ns:demo", "k8s:sa:greeter", "k8s:container-name:main", "k8s:pod-name:hello", "k8s:node-name:signet-node"} {
		if !slices.Contains(sels, want) {
			t.Errorf("selector %s missing from %v", want, sels)
		}
	}
}

// TestHostProcessFallsThrough: a process in no pod (this test) is
// attested by the unix attestor only and, with no entry for it, refused.
func TestHostProcessFallsThrough(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+filepath.Join(env.Signet.SocketDir, "agent.sock")))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("host process: %v, want PermissionDenied", err)
	}
	rec := findAudit(t, func(rec map[string]any) bool { return rec["result"] == "refused" && rec["pid"] == float64(os.Getpid()) })
	for _, s := range strs(rec["selectors"]) {
		if strings.HasPrefix(s, "k8s:") {
			t.Fatalf("a host process got k8s selectors: %v", rec["selectors"])
		}
	}
}
