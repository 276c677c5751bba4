package kube

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	kcluster "github.com/signet-id/signet/ca/cluster"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
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

// TestRevocationAcrossReplicas: a revocation taken by one CA replica's
// admin API is a Revocation object of the cluster, which the other
// replica sends to the agents connected to it; one applied with kubectl
// (as a cluster admin) too; withdrawn at the other replica, it leaves
// both.
func TestRevocationAcrossReplicas(t *testing.T) {
	const ns = "signet-revoke"
	ca1 := startCA(t, ns, "ca-1")
	ca2 := startCA(t, ns, "ca-2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svid := attestAgent(t, ca2, "node-r1")
	stream, err := ca2.NodeClient(svid).Sync(ctx, &agentv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan *agentv1.SyncResponse, 64)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				close(msgs)
				return
			}
			msgs <- m
		}
	}()
	// waitRevocations waits for the agent at ca-2 to hold exactly ids.
	waitRevocations := func(what string, ids ...string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("%s: the Sync stream ended", what)
				}
				if !m.GetRevocationsSet() {
					continue
				}
				var got []string
				for _, r := range m.GetRevocations() {
					got = append(got, r.GetId())
				}
				slices.Sort(got)
				slices.Sort(ids)
				if slices.Equal(got, ids) {
					return
				}
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitRevocations("no revocations at first")

	resp, err := ca1.Admin.CreateRevocation(ctx, &adminv1.CreateRevocationRequest{Revocation: &typesv1.Revocation{
		SpiffeId: "spiffe://example.org/ns/shop/sa/cart", Reason: "across replicas"}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetRevocation().GetId()
	if !strings.HasPrefix(id, "k8s-") {
		t.Fatalf("a revocation in Kubernetes mode is not a cluster object: %s", id)
	}
	waitRevocations("the revocation taken at the other replica", id)

	// kubectl apply, as a cluster admin.
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "signet.dev/v1alpha1", "kind": "Revocation",
		"metadata": map[string]any{"name": "leaked-svid"}, "spec": map[string]any{"serial": "0A:1B:2C", "reason": "kubectl"}}}
	revs := dyn.Resource(schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "revocations"})
	if _, err := revs.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { revs.Delete(context.Background(), "leaked-svid", metav1.DeleteOptions{}) })
	waitRevocations("the applied object", id, "k8s-leaked-svid")
	// The API server refuses an object that names both or neither.
	bad := obj.DeepCopy()
	bad.SetName("both")
	unstructured.SetNestedField(bad.Object, "spiffe://example.org/x", "spec", "spiffeID")
	if _, err := revs.Create(ctx, bad, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "one of serial, caKey, spiffeID and agent") {
		t.Fatalf("a Revocation naming both: %v", err)
	}

	// An object that expired already (it covers SVIDs issued two days
	// ago, which have all expired) is never in force, and the leader
	// deletes it.
	old := obj.DeepCopy()
	old.SetName("long-ago")
	unstructured.RemoveNestedField(old.Object, "spec", "serial")
	unstructured.SetNestedField(old.Object, "spiffe://example.org/ns/shop/sa/old", "spec", "spiffeID")
	unstructured.SetNestedField(old.Object, time.Now().Add(-48*time.Hour).UTC().Format(time.RFC3339), "spec", "issuedBefore")
	if _, err := revs.Create(ctx, old, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the leader deletes the expired Revocation object", func() bool {
		_, err := revs.Get(ctx, "long-ago", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})

	list, err := ca2.Admin.ListRevocations(ctx, &adminv1.ListRevocationsRequest{})
	if err != nil || len(list.GetRevocations()) != 2 {
		t.Fatalf("list at the other replica: %v, %v", list, err)
	}
	if _, err := ca2.Admin.DeleteRevocation(ctx, &adminv1.DeleteRevocationRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	waitRevocations("the withdrawal", "k8s-leaked-svid")
}

// TestCAKeysAcrossReplicas: what an agent acknowledges at one replica
// (a Lease) is in the other's status; a CA key revoked at one replica is
// a Revocation object that carries the key and its grace, and neither
// replica signs with the key afterwards.
func TestCAKeysAcrossReplicas(t *testing.T) {
	const ns = "signet-cakeys"
	ca1 := startCA(t, ns, "ca-1")
	ca2 := startCA(t, ns, "ca-2")
	ctx := context.Background()
	svid := attestAgent(t, ca2, "node-k1")
	root := keyIDOf(svid.Certificates[1].AuthorityKeyId)
	if _, err := ca2.NodeClient(svid).AckBundle(ctx, &agentv1.AckBundleRequest{Ack: &typesv1.BundleAck{
		BundleSequence: 1, X509Authorities: []string{root}, SvidsByRoot: map[string]uint32{root: 3}}}); err != nil {
		t.Fatal(err)
	}
	agentID := svid.ID.String()
	eventually(t, 20*time.Second, "the acknowledgement taken at ca-2 in ca-1's status", func() bool {
		st, err := ca1.Admin.GetCAStatus(ctx, &adminv1.GetCAStatusRequest{})
		if err != nil || !slices.Contains(st.GetLiveAgents(), agentID) {
			return false
		}
		for _, k := range st.GetKeys() {
			if k.GetId() == root {
				return k.GetAgentsHolding() == 1 && k.GetSvids() == 3 && len(k.GetAgentsLagging()) == 0
			}
		}
		return false
	})
	// A changed acknowledgement at the other replica replaces it (that
	// replica writes over the Lease its informer holds, or reads it after
	// a conflict); the same one again writes nothing.
	ack := &typesv1.BundleAck{BundleSequence: 1, X509Authorities: []string{root}, SvidsByRoot: map[string]uint32{root: 5}}
	if _, err := ca1.NodeClient(svid).AckBundle(ctx, &agentv1.AckBundleRequest{Ack: ack}); err != nil {
		t.Fatal(err)
	}
	var lease *coordinationv1.Lease
	eventually(t, 20*time.Second, "the acknowledgement taken at ca-1 in ca-2's status", func() bool {
		st, err := ca2.Admin.GetCAStatus(ctx, &adminv1.GetCAStatusRequest{})
		if err != nil {
			return false
		}
		for _, k := range st.GetKeys() {
			if k.GetId() == root && k.GetSvids() == 5 {
				list, err := cluster.Client.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: kcluster.AckLabel + "=true"})
				if err != nil || len(list.Items) != 1 {
					t.Fatalf("acknowledgement Leases: %v, %v", list, err)
				}
				lease = &list.Items[0]
				return true
			}
		}
		return false
	})
	if _, err := ca2.NodeClient(svid).AckBundle(ctx, &agentv1.AckBundleRequest{Ack: ack}); err != nil {
		t.Fatal(err)
	}
	again, err := cluster.Client.CoordinationV1().Leases(ns).Get(ctx, lease.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ResourceVersion != lease.ResourceVersion {
		t.Fatalf("the same acknowledgement rewrote the Lease (resourceVersion %s → %s)", lease.ResourceVersion, again.ResourceVersion)
	}

	inter := svid.Certificates[1]
	resp, err := ca2.Admin.CreateRevocation(ctx, &adminv1.CreateRevocationRequest{Revocation: &typesv1.Revocation{CaKey: keyIDOf(inter.SubjectKeyId)}})
	if err != nil {
		t.Fatal(err)
	}
	rv := resp.GetRevocation()
	if rv.GetSerial() != inter.SerialNumber.Text(16) || rv.GetEnforceAfter() <= rv.GetCreatedAt() || rv.GetExpiresAt() < inter.NotAfter.Unix() {
		t.Fatalf("the CA key revocation as stored: %v", rv)
	}
	// Both replicas move to another intermediate: an agent SVID renewed at
	// either chains to a new one.
	for name, ca := range map[string]*systest.CA{"ca-1": ca1, "ca-2": ca2} {
		eventually(t, 20*time.Second, name+" signs under another intermediate", func() bool {
			_, csr := systest.NewCSR(t)
			r, err := ca.NodeClient(svid).RenewAgent(ctx, &agentv1.RenewAgentRequest{Csr: csr})
			if err != nil {
				return false
			}
			c, err := x509.ParseCertificate(r.GetSvidChain()[1])
			return err == nil && !c.Equal(inter)
		})
	}
}

func keyIDOf(b []byte) string { return hex.EncodeToString(b) }

// TestTrafficAcrossReplicas: traffic counts reported at the replica that
// does not lead reach the leader (through the replica's shard); the
// leader writes the server's TrafficProfile in the server's namespace and
// records the new caller as an Event on it.
func TestTrafficAcrossReplicas(t *testing.T) {
	const ns = "signet-traffic"
	ca1 := startCA(t, ns, "ca-1")
	ca2 := startCA(t, ns, "ca-2")
	ctx := context.Background()
	var leader string
	eventually(t, 30*time.Second, "a leader", func() bool {
		l, err := cluster.Client.CoordinationV1().Leases(ns).Get(ctx, server.DefaultLeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return false
		}
		leader = *l.Spec.HolderIdentity
		return true
	})
	follower := ca1
	if leader == "ca-1" {
		follower = ca2
	}
	svid := attestAgent(t, follower, "node-t1")
	createPod(t, "shop", "web-t1", "web", "node-t1", nil)
	webID := "spiffe://example.org/ns/shop/sa/web"
	// The follower takes an agent's counts only for its node's workloads
	// (others are refused, and the call still succeeds): wait until it
	// serves the pod's identity to the agent.
	v := follow(t, follower, svid)
	eventually(t, 30*time.Second, "web's identity pushed to the agent by the follower", func() bool {
		return slices.Contains(mapValues(v.ids()), webID)
	})
	eventually(t, 10*time.Second, "web's counts taken by the follower", func() bool {
		_, err := follower.NodeClient(svid).ReportDecisions(ctx, &typesv1.DecisionReport{Traffic: []*typesv1.TrafficCount{{Server: webID,
			Peer: "spiffe://example.org/ns/shop/sa/front", Method: "/shop.v1.Web/Get", Minute: time.Now().Unix() / 60 * 60, Calls: 5, BytesOut: 500}}})
		return err == nil
	})
	profiles := dyn.Resource(schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "trafficprofiles"}).Namespace("shop")
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// What the leader had to learn from, for the failure's reader.
		if l, err := cluster.Client.CoordinationV1().Leases(ns).Get(ctx, server.DefaultLeaseName, metav1.GetOptions{}); err == nil && l.Spec.HolderIdentity != nil {
			t.Logf("leader now %s (was %s), %d transitions", *l.Spec.HolderIdentity, leader, ptrOr(l.Spec.LeaseTransitions))
		}
		cms, _ := cluster.Client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: "signet.dev/traffic-shard"})
		for _, cm := range cms.Items {
			t.Logf("shard %s: annotations %v, %d bytes", cm.Name, cm.Annotations, len(cm.Data["counts"]))
		}
	})
	var name string
	eventually(t, 60*time.Second, "web's TrafficProfile, written by the leader", func() bool {
		list, err := profiles.List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, u := range list.Items {
			if s, _, _ := unstructured.NestedString(u.Object, "spec", "server"); s == webID {
				callers, _, _ := unstructured.NestedInt64(u.Object, "status", "callers")
				name = u.GetName()
				return callers == 1
			}
		}
		return false
	})
	eventually(t, 30*time.Second, "the new caller as an Event on the profile", func() bool {
		evs, err := cluster.Client.CoreV1().Events("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind == "TrafficProfile" && e.InvolvedObject.Name == name && e.Reason == "AnomalyNewCaller" &&
				strings.Contains(e.Message, "spiffe://example.org/ns/shop/sa/front") {
				return true
			}
		}
		return false
	})
}

func ptrOr(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}
