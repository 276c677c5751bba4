package node

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/signet-id/signet/ca/podcert"
	"github.com/signet-id/signet/e2e/nodeenv"
)

// podCertLine is a line of the workload's pod certificate watch.
type podCertLine struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Roots     int       `json:"roots"`
	Verified  bool      `json:"verified"`
	Error     string    `json:"error"`
	LoggedAt  time.Time `json:"-"`
}

// podCertPod is a restricted pod that gets its SVID as projected files:
// a podCertificate source of Signet's signer and the signer's
// ClusterTrustBundle, and no agent socket.
func podCertPod(ns, name, sa string, labels map[string]string) *corev1.Pod {
	signer := podcert.DefaultSignerName
	p := nodeenv.RestrictedPod(ns, name, sa, nodeenv.WorkloadImage)
	p.Labels = labels
	p.Spec.RestartPolicy = ""
	gid, mode := int64(65532), int32(0o440)
	p.Spec.SecurityContext.FSGroup = &gid
	p.Spec.Volumes = []corev1.Volume{{Name: "svid", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: &mode,
		Sources: []corev1.VolumeProjection{
			{PodCertificate: &corev1.PodCertificateProjection{SignerName: signer, KeyType: "ECDSAP256", CredentialBundlePath: "credentialbundle.pem"}},
			{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{SignerName: &signer, Path: "bundle.pem",
				LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{podcert.TrustDomainLabel: "example.org"}}}},
		},
	}}}}
	c := &p.Spec.Containers[0]
	c.VolumeMounts = []corev1.VolumeMount{{Name: "svid", MountPath: "/var/run/svid", ReadOnly: true}}
	c.Env = []corev1.EnvVar{{Name: "POD_CERTIFICATE_DIR", Value: "/var/run/svid"}}
	return p
}

// podCertLines reads the workload's watch lines from its log.
func podCertLines(t testing.TB, p *corev1.Pod) []podCertLine {
	t.Helper()
	log, _ := env.Node.PodLog(p.Namespace, p.Name, string(p.UID), "main")
	var out []podCertLine
	for _, ll := range nodeenv.StdoutLines(log) {
		var l podCertLine
		if json.Unmarshal([]byte(ll.Text), &l) != nil {
			continue
		}
		l.LoggedAt = ll.At
		out = append(out, l)
	}
	return out
}

// requests returns the PodCertificateRequests of pod uid.
func requests(t testing.TB, ns string, uid types.UID) []certv1.PodCertificateRequest {
	t.Helper()
	list, err := env.Cluster.Client.CertificatesV1().PodCertificateRequests(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []certv1.PodCertificateRequest
	for _, r := range list.Items {
		if r.Spec.PodUID == uid {
			out = append(out, r)
		}
	}
	return out
}

func condition(r certv1.PodCertificateRequest, typ string) *metav1.Condition {
	for i, c := range r.Status.Conditions {
		if c.Type == typ {
			return &r.Status.Conditions[i]
		}
	}
	return nil
}

// runPodCert creates a podCertPod and waits for its first line: the
// certificate files are there.
func runPodCert(t testing.TB, ns, name, sa string) (*corev1.Pod, podCertLine, time.Time) {
	t.Helper()
	ctx := context.Background()
	if err := env.Namespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := env.ServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	p, err := env.Cluster.Client.CoreV1().Pods(ns).Create(ctx, podCertPod(ns, name, sa, nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if ls := podCertLines(t, p); len(ls) > 0 {
			return p, ls[0], created
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no certificate files in pod %s/%s; requests %+v", ns, name, requests(t, ns, p.UID))
	return nil, podCertLine{}, created
}

// TestPodCertificates: on the real node, a pod with a podCertificate and
// a clusterTrustBundle projected volume gets an X509-SVID of the identity
// its IdentityRules give it, whose chain verifies against the mounted
// bundle, with no agent socket; a pod no rule selects gets a denial on its
// request; and the kubelet refreshes the certificate at the beginRefreshAt
// the signer set (10 minutes after NotBefore under this test's
// --pod-certificate-refresh, the API's earliest).
func TestPodCertificates(t *testing.T) {
	ctx := context.Background()
	const ns, sa = "podcert", "app"
	if err := env.Namespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := env.ServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	pods := env.Cluster.Client.CoreV1().Pods(ns)
	p, first, created := runPodCert(t, ns, "svid-files", sa)
	defer deletePod(t, p)
	if want := "spiffe://example.org/ns/" + ns + "/sa/" + sa; !first.Verified || first.SPIFFEID != want {
		t.Fatalf("the pod's certificate: %+v, want a verified X509-SVID of %s", first, want)
	}
	if life := first.NotAfter.Sub(first.NotBefore); life != time.Hour {
		t.Errorf("lifetime %s, want one hour (the CA's X509-SVID lifetime, the API's minimum)", life)
	}
	filesAfter := first.LoggedAt.Sub(created)

	// The agent path in the same run, for comparison.
	wp, r, wcreated := env.RunWorkloadVia(t, "podcert-agent", "svid-socket", sa, nodeenv.ViaCSI)
	deletePod(t, wp)
	t.Logf("pod created -> X509-SVID in the pod: pod certificate (projected files) %s; agent (CSI socket, Workload API) %s",
		filesAfter.Round(time.Millisecond), r.LoggedAt.Sub(wcreated).Round(time.Millisecond))

	reqs := requests(t, ns, p.UID)
	if len(reqs) != 1 || condition(reqs[0], certv1.PodCertificateRequestConditionTypeIssued) == nil {
		t.Fatalf("requests of the pod: %+v, want one issued", reqs)
	}
	issued := reqs[0]
	if got, want := issued.Status.BeginRefreshAt.Time, issued.Status.NotBefore.Add(podcert.MinRefreshMargin); !got.Equal(want) {
		t.Fatalf("beginRefreshAt %s, want NotBefore + 10m = %s", got, want)
	}

	// A pod that no IdentityRule selects: the default rule, narrowed for
	// the moment to pods without a label, leaves it out.
	dyn, err := dynamic.NewForConfig(env.Cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	rules := dyn.Resource(schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "identityrules"})
	patch := func(sel any) {
		t.Helper()
		raw, _ := json.Marshal(map[string]any{"spec": map[string]any{"podSelector": sel}})
		if _, err := rules.Patch(ctx, "default", types.MergePatchType, raw, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	patch(map[string]any{"matchExpressions": []any{map[string]any{"key": "e2e.signet.dev/no-rule", "operator": "DoesNotExist"}}})
	defer patch(nil)
	waitRule(t, rules, func(u *unstructured.Unstructured) bool {
		_, ok, _ := unstructured.NestedMap(u.Object, "spec", "podSelector")
		return ok
	})
	dp, err := pods.Create(ctx, podCertPod(ns, "no-identity", sa, map[string]string{"e2e.signet.dev/no-rule": "yes"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer deletePod(t, dp)
	var denied *metav1.Condition
	wait(t, 2*time.Minute, "a denial on the request of the pod no rule selects", func() bool {
		for _, r := range requests(t, ns, dp.UID) {
			if denied = condition(r, certv1.PodCertificateRequestConditionTypeDenied); denied != nil {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("%+v", requests(t, ns, dp.UID)) })
	if denied.Reason != podcert.ReasonNoIdentity || !strings.Contains(denied.Message, ns+"/no-identity") {
		t.Fatalf("denial %s: %s, want %s naming the pod", denied.Reason, denied.Message, podcert.ReasonNoIdentity)
	}
	patch(nil)

	// The kubelet refreshes the certificate once beginRefreshAt has passed
	// (it adds up to five minutes of jitter, and looks every minute or
	// two), and the pod sees a new one, valid as the first.
	var second podCertLine
	wait(t, 20*time.Minute, "the kubelet refreshes the pod's certificate", func() bool {
		for _, l := range podCertLines(t, p) {
			if l.Serial != first.Serial {
				second = l
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("requests %+v", requests(t, ns, p.UID)) })
	if !second.Verified || second.SPIFFEID != first.SPIFFEID {
		t.Fatalf("the refreshed certificate: %+v", second)
	}
	if second.LoggedAt.Before(issued.Status.BeginRefreshAt.Time) {
		t.Fatalf("refreshed at %s, before beginRefreshAt %s", second.LoggedAt, issued.Status.BeginRefreshAt.Time)
	}
	t.Logf("refreshed %s after beginRefreshAt", second.LoggedAt.Sub(issued.Status.BeginRefreshAt.Time).Round(time.Second))
}

// waitRule waits until the IdentityRule default satisfies ok and the CA
// has taken it in: its status observes the rule's generation (a pod
// created before would race the CA's informer).
func waitRule(t *testing.T, rules dynamic.NamespaceableResourceInterface, ok func(*unstructured.Unstructured) bool) {
	t.Helper()
	wait(t, time.Minute, "the CA takes in the IdentityRule change", func() bool {
		u, err := rules.Get(context.Background(), "default", metav1.GetOptions{})
		if err != nil || !ok(u) {
			return false
		}
		g, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
		return g == u.GetGeneration()
	}, func() string { return "" })
}
