package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/testenv"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// TestTwoReplicas: two CAs share their keys through the Secret, one leads
// on the Lease, and when it stops the other takes over with the same
// trust bundle; an agent attested at one replica is served by the other.
func TestTwoReplicas(t *testing.T) {
	testTwoReplicas(t, "replicas-ca")
}

// TestTwoReplicasWithKMS is TestTwoReplicas with the keys in an AWS KMS
// (local-kms, which speaks its API): the Secret holds their names and
// certificates but no private key, and both replicas sign through the KMS.
func TestTwoReplicasWithKMS(t *testing.T) {
	testenv.UseKMS(t)
	const ns = "replicas-kms"
	testTwoReplicas(t, ns, func(c *server.Config) { c.KMS = testenv.KMSURI })
	sec, err := cluster.Client.CoreV1().Secrets(ns).Get(context.Background(), "signet-ca-keys", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var stored struct{ Keys []store.CAKey }
	for _, data := range sec.Data {
		if err := json.Unmarshal(data, &stored); err == nil && len(stored.Keys) > 0 {
			for _, k := range stored.Keys {
				if len(k.KeyPEM) != 0 || !strings.HasPrefix(k.KeyURI, "awskms:key-id=") {
					t.Errorf("stored %s key: %d bytes of PEM, name %q; want none and an awskms name", k.Kind, len(k.KeyPEM), k.KeyURI)
				}
			}
		}
	}
	if len(stored.Keys) == 0 {
		t.Fatalf("no keys found in the Secret's data (%d entries)", len(sec.Data))
	}
}

func testTwoReplicas(t *testing.T, ns string, opts ...func(*server.Config)) {
	ca1 := startCA(t, ns, "ca-1", opts...)
	ca2 := startCA(t, ns, "ca-2", opts...)
	roots1, roots2 := ca1.Roots(), ca2.Roots()
	if len(roots1) != 1 || len(roots2) != 1 || !roots1[0].Equal(roots2[0]) {
		t.Fatal("the replicas do not share one root")
	}
	ctx := context.Background()
	holder := func() string {
		l, err := cluster.Client.CoordinationV1().Leases(ns).Get(ctx, "signet-ca", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	eventually(t, 20*time.Second, "a leader", func() bool { h := holder(); return h == "ca-1" || h == "ca-2" })
	// The leader publishes the bundle for agents to mount.
	eventually(t, 10*time.Second, "the bundle ConfigMap", func() bool {
		cm, err := cluster.Client.CoreV1().ConfigMaps(ns).Get(ctx, "signet-bundle", metav1.GetOptions{})
		if err != nil {
			return false
		}
		b, _ := pem.Decode([]byte(cm.Data["bundle.pem"]))
		return b != nil && bytes.Equal(b.Bytes, roots1[0].Raw)
	})
	leader, other := ca1, ca2
	otherName := "ca-2"
	if holder() == "ca-2" {
		leader, other, otherName = ca2, ca1, "ca-1"
	}

	// Attested at the leader, served by the other replica.
	svid := attestAgent(t, leader, "node-h1")
	if _, err := other.NodeClient(svid).RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csrOnly(t)}); err != nil {
		t.Fatalf("the other replica refused the agent: %v", err)
	}

	leader.Stop()
	eventually(t, 30*time.Second, "the other replica to lead", func() bool { return holder() == otherName })
	if r := other.Roots(); len(r) != 1 || !r[0].Equal(roots1[0]) {
		t.Fatal("the trust bundle changed with the leader")
	}
	if _, err := other.NodeClient(svid).FetchPodEntries(ctx, &agentv1.FetchPodEntriesRequest{PodUid: "00000000-0000-0000-0000-000000000000"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after the handover: %v, want the refusal of an unknown pod", err)
	}
}

// TestAgentEvictedWithItsPod: an agent whose pod is deleted is refused
// from then on, and the eviction is audited.
func TestAgentEvictedWithItsPod(t *testing.T) {
	ca := startCA(t, "evict-ca", "evict")
	pod := agentPod(t, "node-e1")
	svid, err := ca.AttestPSAT(podToken(t, pod, "signet-ca"), "node-e1")
	if err != nil {
		t.Fatal(err)
	}
	client := ca.NodeClient(svid)
	stream, err := client.Sync(context.Background(), &agentv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	deletePod(t, pod)
	// The open stream ends with the refusal.
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream ended with %v, want PermissionDenied", err)
		}
		break
	}
	if _, err := client.RenewAgent(context.Background(), &agentv1.RenewAgentRequest{Csr: csrOnly(t)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("renew after the pod is gone: %v", err)
	}
	evicted := false
	for _, r := range ca.AuditLog() {
		if r["event"] == "agent.evict" && r["spiffe_id"] == svid.ID.String() {
			evicted = true
		}
	}
	if !evicted {
		t.Fatal("eviction not audited")
	}
}
