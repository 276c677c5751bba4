package attack

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// kubeCA starts a CA replica in Kubernetes mode against the test
// cluster; replicas of one namespace share keys, leader and evictions.
func kubeCA(t *testing.T, ns, identity string) *systest.CA {
	t.Helper()
	if err := env.Cluster.EnsureNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return systest.StartCA(t, func(c *server.Config) {
		c.Kube = &server.KubeConfig{Kubeconfig: env.Cluster.Kubeconfig, ClusterName: "attack",
			AgentServiceAccounts: []string{"signet-system/signet-agent"}, Namespace: ns, Identity: identity}
	})
}

// agentCalls reports whether svid still works at ca: a Sync stream opens
// and answers.
func agentWorks(ca *systest.CA, svid *x509svid.SVID) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := ca.NodeClient(svid).Sync(ctx, &agentv1.SyncRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	return err
}

func refusedAgent(err error) bool { return status.Code(err) == codes.PermissionDenied }

// agentPodOn creates an agent pod on node (the agents' service account)
// and returns it with a token for the CA.
func agentPodOn(t *testing.T, node, name string) (*corev1.Pod, string) {
	t.Helper()
	p := env.Cluster.CreatePod(t, "signet-system", fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%100000), "signet-agent", node, nil)
	t.Cleanup(func() { env.Cluster.DeletePod(t, p) })
	return p, env.Cluster.PodToken(t, p, "signet-ca")
}

// TestStolenAgentKeyAfterPodReplaced: an agent's SVID and key copied off a
// node. Its identity was bound to the node only, so the copy kept working
// while any agent pod ran there, also after the agent's pod was replaced
// (a restart, a rollout). With two replicas on the real API server, the
// copy must be refused at both once its pod is gone.
func TestStolenAgentKeyAfterPodReplaced(t *testing.T) {
	const ns, node = "attack-agents", "attack-node-1"
	a, b := kubeCA(t, ns, "attack-a"), kubeCA(t, ns, "attack-b")
	env.Cluster.CreateNode(t, node)
	old, tok := agentPodOn(t, node, "agent-old")
	stolen, err := a.AttestPSAT(tok, node)
	if err != nil {
		t.Fatal(err)
	}
	for _, ca := range []*systest.CA{a, b} {
		if err := agentWorks(ca, stolen); err != nil {
			t.Fatalf("the agent's own SVID: %v", err)
		}
	}
	agentPodOn(t, node, "agent-new")
	env.Cluster.DeletePod(t, old)
	for name, ca := range map[string]*systest.CA{"a": a, "b": b} {
		eventually(t, 20*time.Second, "the old pod's SVID refused at replica "+name, func() bool { return refusedAgent(agentWorks(ca, stolen)) })
	}
}

// TestEvictionHoldsAtEveryReplica: an operator evicts an agent at one CA
// replica. Evictions were kept per replica, so the agent went on at the
// other, renewed its SVID there, and attested again. The eviction must hold
// at both replicas for every SVID of the evicted pod, renewed or not, and
// for its token; a new agent pod may attest.
func TestEvictionHoldsAtEveryReplica(t *testing.T) {
	const ns, node = "attack-evict", "attack-node-3"
	a, b := kubeCA(t, ns, "evict-a"), kubeCA(t, ns, "evict-b")
	env.Cluster.CreateNode(t, node)
	ctx := context.Background()
	_, tok := agentPodOn(t, node, "agent")
	current, err := b.AttestPSAT(tok, node)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := b.NodeClient(current).RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csrOf(t, current)})
	if err != nil {
		t.Fatal(err)
	}
	renewed := &x509svid.SVID{ID: current.ID, PrivateKey: current.PrivateKey}
	for _, der := range resp.GetSvidChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		renewed.Certificates = append(renewed.Certificates, c)
	}
	for _, ca := range []*systest.CA{a, b} {
		if err := agentWorks(ca, renewed); err != nil {
			t.Fatalf("the agent's SVID: %v", err)
		}
	}
	if _, err := a.Admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: current.ID.String()}); err != nil {
		t.Fatal(err)
	}
	for name, ca := range map[string]*systest.CA{"a": a, "b": b} {
		eventually(t, 20*time.Second, "the evicted agent refused at replica "+name, func() bool {
			return refusedAgent(agentWorks(ca, renewed)) && refusedAgent(agentWorks(ca, current))
		})
		if _, err := ca.NodeClient(renewed).RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csrOf(t, renewed)}); !refusedAgent(err) {
			t.Errorf("replica %s renewed an evicted agent: %v", name, err)
		}
		if _, err := ca.AttestPSAT(tok, node); !refusedAgent(err) {
			t.Errorf("replica %s attested the evicted pod again: %v", name, err)
		}
	}
	_, tok2 := agentPodOn(t, node, "agent-after")
	if _, err := a.AttestPSAT(tok2, node); err != nil {
		t.Fatalf("a new agent pod after the eviction: %v", err)
	}
}

// csrOf is a CSR for the SVID's own key, as the agent renews.
func csrOf(t *testing.T, svid *x509svid.SVID) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, svid.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
