package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// TestFaultPartitionKubernetes is TestFaultPartition for an agent that
// attests through its pod's service-account token (k8s_psat): signet-ca
// in Kubernetes mode on a real kube-apiserver, signet-agent as a process
// in a network namespace, SVIDs of 60 s for its node's pods (pushed by an
// IdentityRule) and for SDK workloads on its socket, calling each other
// without pause. The agent ↔ CA path drops every packet for 40 s, longer
// than half the lifetime. The agent reports the lost stream; no workload
// holds an expired SVID; when the path is back the stream is served again
// within the bound, a pod created during the partition reaches the agent,
// and every SVID is renewed before it expires.
func TestFaultPartitionKubernetes(t *testing.T) {
	ctx := context.Background()
	cl, err := testenv.Start(t.TempDir())
	if err != nil {
		t.Fatalf("the test cluster: %v", err)
	}
	t.Cleanup(cl.Stop)
	applyDeployFiles(t, cl, "crds/identityrules.signet.dev.yaml", "crds/accesspolicies.signet.dev.yaml", "crds/revocations.signet.dev.yaml",
		"crds/trafficprofiles.signet.dev.yaml", "crds/federatedtrustdomains.signet.dev.yaml")
	applyYAML(t, cl, `apiVersion: signet.dev/v1alpha1
kind: IdentityRule
metadata: {name: partitioned}
spec:
  spiffeIDTemplate: "spiffe://{{.TrustDomain}}/ns/{{.Namespace}}/pod/{{.PodName}}"
  podSelector: {matchLabels: {app: partitioned}}
  x509SVIDTTL: 60s
`)
	const node, cluster = "n1", "faults"
	cl.CreateNode(t, node)
	agentPod := cl.CreatePod(t, "signet-system", "agent-"+node, "signet-agent", node, nil)
	for i := range 3 {
		cl.CreatePod(t, "shop", fmt.Sprintf("before-%d", i), "default", node, map[string]string{"app": "partitioned"})
	}

	ns := newNetNS(t)
	port := strings.Split(systest.FreeAddr(t), ":")[1]
	ca := runCA(t, net.JoinHostPort(ns.hostIP, port), "--kubeconfig", cl.Kubeconfig, "--cluster-name", cluster,
		"--agent-service-account", "signet-system/signet-agent", "--namespace", "signet-system")
	tok, err := cl.BoundToken(ctx, agentPod, []string{"signet-ca"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	agent := &agentProc{node: node, caAddr: ca.listen, dir: t.TempDir(), sock: filepath.Join(t.TempDir(), "agent.sock"),
		health: net.JoinHostPort(ns.nsIP, strings.Split(systest.FreeAddr(t), ":")[1]), netns: ns.name}
	agent.bundle, agent.token = filepath.Join(agent.dir, "bundle.pem"), filepath.Join(agent.dir, "token")
	os.WriteFile(agent.bundle, []byte(signet(t, ca.dir, "bundle", "show")), 0o600)
	os.WriteFile(agent.token, []byte(tok), 0o600)
	agent.attest = []string{"--node-attestor", "k8s_psat", "--token-file", agent.token, "--node-name", node,
		// No kubelet serves this node: the pods' SVIDs are the agent's
		// (pushed), and the workloads below are host processes.
		"--kubelet-url", "https://127.0.0.1:9", "--kubelet-insecure-skip-verify"}
	agent.start(t)

	const ttl = time.Minute
	ids := ids("kw", 4)
	var es []*typesv1.Entry
	for _, id := range ids {
		es = append(es, &typesv1.Entry{SpiffeId: "spiffe://example.org/" + id, ParentId: "spiffe://example.org/signet/agent/k8s/" + cluster + "/" + node,
			Selectors: []*typesv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", os.Getuid())}}, X509SvidTtlSeconds: int64(ttl / time.Second)})
	}
	if _, err := ca.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: es}); err != nil {
		t.Fatal(err)
	}
	// The agent holds SVIDs for its three pods and the four workloads.
	held := func(entries float64) func() error {
		return func() error {
			e, err := metricValue(agent.health, "signet_agent_entries")
			if err != nil {
				return err
			}
			s, err := metricValue(agent.health, "signet_agent_x509_svids")
			if err != nil {
				return err
			}
			if e < entries || s < e {
				return fmt.Errorf("the agent holds %v SVIDs for %v entries, want %v entries", s, e, entries)
			}
			return nil
		}
	}
	waitFor(t, 30*time.Second, held(7), func() string { return "the agent's pods and workloads; logs:\n" + agent.logs.String() })
	w := startWorkloads(t, agent.sock, ids)

	heal := ns.partition(t, ca.listen)
	cut := time.Now()
	body := agent.notReady(t, "no Sync stream to the CA", "sync stream ended", 40*time.Second)
	t.Logf("%s into the partition the agent's /readyz said: %s", time.Since(cut).Round(time.Second), body)
	// A pod created meanwhile: its identity waits for the path.
	cl.CreatePod(t, "shop", "during", "default", node, map[string]string{"app": "partitioned"})
	for time.Since(cut) < ttl/2+10*time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	heal()
	took := agent.streamUp(t, recoveryBound)
	t.Logf("the partition lasted %s; the Sync stream served again %s after it ended", (time.Since(cut) - took).Round(time.Second), took.Round(time.Millisecond))
	start := time.Now()
	waitFor(t, recoveryBound, held(8), func() string { return "the pod created in the partition; logs:\n" + agent.logs.String() })
	t.Logf("the pod created in the partition held at the agent %s after the stream was back", time.Since(start).Round(time.Millisecond))
	w.waitAll(t, "renewed after the partition", ttl, func(s *x509svid.SVID) bool { return s.Certificates[0].NotBefore.After(cut) })
	w.check(t)
}

// applyDeployFiles applies files of deploy/base to the cluster.
func applyDeployFiles(t *testing.T, cl *testenv.Cluster, files ...string) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join("..", "deploy", "base", f))
		if err != nil {
			t.Fatal(err)
		}
		applyYAML(t, cl, string(b))
	}
}

// applyYAML applies objects, retrying while the API server does not yet
// serve a new CRD's resource.
func applyYAML(t *testing.T, cl *testenv.Cluster, y string) {
	t.Helper()
	objs, err := testenv.ParseYAML([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.ApplyWhenServed(context.Background(), objs, 60*time.Second); err != nil {
		t.Fatal(err)
	}
}
