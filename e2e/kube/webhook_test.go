package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/signet-id/signet/ca/accesspolicy"
	"github.com/signet-id/signet/ca/podidentity"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
)

// TestAdmissionWebhook: the API server calls the CA's webhook over TLS
// (its certificate from Signet, the caBundle kept by the CA): pods of
// labelled namespaces get the socket injected; pods that mount the socket
// directory themselves, borrow the agent's account, and rules that leave
// the trust domain are refused with a clear message.
func TestAdmissionWebhook(t *testing.T) {
	ctx := context.Background()
	addr := systest.FreeAddr(t)
	_, port, _ := strings.Cut(addr, ":")
	const cfgName = "signet-e2e"
	if err := createNamespace(ctx, "hook-ca"); err != nil {
		t.Fatal(err)
	}
	systest.StartCA(t, func(c *server.Config) {
		c.Kube = &server.KubeConfig{
			Kubeconfig: cluster.Kubeconfig, ClusterName: clusterN, AgentServiceAccounts: []string{agentNS + "/" + agentSA},
			Namespace: "hook-ca", Identity: "hook",
			Webhook: &server.WebhookConfig{ListenAddr: addr, DNSNames: []string{"localhost"}, ConfigurationName: cfgName},
		}
	})
	// Scope: namespaces labelled for this test, so other tests are not
	// affected.
	scope := &metav1.LabelSelector{MatchLabels: map[string]string{"signet-e2e-webhook": "yes"}}
	fail, none := admissionregv1.Fail, admissionregv1.SideEffectClassNone
	url := func(p string) *string { u := "https://localhost:" + port + p; return &u }
	podRule := []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
		Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}
	adm := cluster.Client.AdmissionregistrationV1()
	if _, err := adm.MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: cfgName},
		Webhooks: []admissionregv1.MutatingWebhook{{Name: "inject.signet.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: url("/mutate-pods")},
			Rules: podRule, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"signet.dev/inject": "enabled"}},
			FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.ValidatingWebhookConfigurations().Create(ctx, &admissionregv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: cfgName},
		Webhooks: []admissionregv1.ValidatingWebhook{
			{Name: "pods.signet.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: url("/validate-pods")},
				Rules: podRule, NamespaceSelector: scope, FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}},
			{Name: "identityrules.signet.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: url("/validate-identityrules")},
				Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create, admissionregv1.Update},
					Rule: admissionregv1.Rule{APIGroups: []string{"signet.dev"}, APIVersions: []string{"v1alpha1"}, Resources: []string{"identityrules"}}}},
				ObjectSelector: scope, FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}},
			{Name: "accesspolicies.signet.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: url("/validate-accesspolicies")},
				Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create, admissionregv1.Update},
					Rule: admissionregv1.Rule{APIGroups: []string{"signet.dev"}, APIVersions: []string{"v1alpha1"}, Resources: []string{"accesspolicies"}}}},
				NamespaceSelector: scope, FailurePolicy: &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}},
			{Name: "namespaces.signet.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: url("/validate-namespaces")},
				Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create, admissionregv1.Update},
					Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"namespaces"}}}},
				ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: accesspolicy.CrossNamespaceLabel, Operator: metav1.LabelSelectorOpExists}}},
				FailurePolicy:  &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		adm.MutatingWebhookConfigurations().Delete(ctx, cfgName, metav1.DeleteOptions{})
		adm.ValidatingWebhookConfigurations().Delete(ctx, cfgName, metav1.DeleteOptions{})
	})
	// The CA's leader fills in the caBundle.
	eventually(t, 20*time.Second, "the caBundle", func() bool {
		v, err := adm.ValidatingWebhookConfigurations().Get(ctx, cfgName, metav1.GetOptions{})
		m, err2 := adm.MutatingWebhookConfigurations().Get(ctx, cfgName, metav1.GetOptions{})
		return err == nil && err2 == nil && len(v.Webhooks[0].ClientConfig.CABundle) > 0 && len(m.Webhooks[0].ClientConfig.CABundle) > 0
	})

	for name, labels := range map[string]map[string]string{"hook-inject": {"signet.dev/inject": "enabled", "signet-e2e-webhook": "yes"}, "hook-plain": {"signet-e2e-webhook": "yes"}} {
		if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := createSA(ctx, name, "default"); err != nil {
			t.Fatal(err)
		}
	}
	createNode(t, "node-w1")
	newPod := func(ns, name string, mutate func(*corev1.Pod)) (*corev1.Pod, error) {
		no := false
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PodSpec{NodeName: "node-w1", AutomountServiceAccountToken: &no,
				Containers: []corev1.Container{{Name: "main", Image: "localhost/none:1"}}}}
		if mutate != nil {
			mutate(p)
		}
		return cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	}
	// Webhook configurations take effect asynchronously.
	var injected *corev1.Pod
	eventually(t, 20*time.Second, "the injection", func() bool {
		p, err := newPod("hook-inject", "app-"+time.Now().Format("150405.000000000")[7:], nil)
		if err == nil && len(p.Spec.Volumes) > 0 {
			injected = p
			return true
		}
		return false
	})
	v := injected.Spec.Volumes[0]
	c := injected.Spec.Containers[0]
	// The default: the agent's CSI volume, read-only.
	if v.Name != "signet-agent-socket" || v.HostPath != nil || v.CSI == nil || v.CSI.Driver != "csi.signet.dev" || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly || len(c.VolumeMounts) != 1 ||
		!c.VolumeMounts[0].ReadOnly || c.VolumeMounts[0].MountPath != "/run/signet" || len(c.Env) != 1 || c.Env[0].Value != "unix:///run/signet/agent.sock" {
		t.Fatalf("injected pod: volumes %+v, container %+v", injected.Spec.Volumes, c)
	}

	_, err := newPod("hook-plain", "sneaky", func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run"}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "run", MountPath: "/host-run"}}
	})
	if err == nil || !strings.Contains(err.Error(), "reaches the Signet agent's socket directory") {
		t.Fatalf("pod mounting /run: %v", err)
	}
	if _, err := newPod("hook-plain", "ok", nil); err != nil {
		t.Fatalf("an ordinary pod: %v", err)
	}

	// The agent's account, outside the agent DaemonSet.
	if err := createSA(ctx, "hook-plain", "x"); err != nil {
		t.Fatal(err)
	}
	ns, _ := cluster.Client.CoreV1().Namespaces().Get(ctx, agentNS, metav1.GetOptions{})
	ns.Labels["signet-e2e-webhook"] = "yes"
	if _, err := cluster.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns, _ := cluster.Client.CoreV1().Namespaces().Get(ctx, agentNS, metav1.GetOptions{})
		delete(ns.Labels, "signet-e2e-webhook")
		cluster.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	})
	eventually(t, 10*time.Second, "the agent account refused", func() bool {
		_, err := newPod(agentNS, "impostor-"+time.Now().Format("150405.000000000")[7:], func(p *corev1.Pod) { p.Spec.ServiceAccountName = agentSA })
		return err != nil && strings.Contains(err.Error(), "belongs to the signet-agent DaemonSet")
	})
	// Claiming the DaemonSet as owner does not help: the API server says
	// who creates the pod, and it is not the DaemonSet controller.
	yes := true
	_, err = newPod(agentNS, "forged-owner", func(p *corev1.Pod) {
		p.Spec.ServiceAccountName = agentSA
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "signet-agent", UID: "00000000-0000-0000-0000-000000000001", Controller: &yes}}
	})
	if err == nil || !strings.Contains(err.Error(), "created by the DaemonSet controller only") {
		t.Fatalf("a pod with a forged DaemonSet owner and the agent's account: %v", err)
	}

	// An IdentityRule that passes the schema but leaves the trust domain.
	rule := ruleObject("hook-elsewhere", map[string]any{"spiffeIDTemplate": "spiffe://other.org/x/{{.PodName}}"})
	rule.SetLabels(map[string]string{"signet-e2e-webhook": "yes"})
	_, err = dyn.Resource(podidentity.IdentityRuleResource).Create(ctx, rule, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "must start with") {
		t.Fatalf("rule outside the trust domain: %v", err)
	}

	// AccessPolicies of hook-plain: only its own servers, only its own
	// peers until a cluster admin labels it.
	policies := dyn.Resource(accesspolicy.Resource).Namespace("hook-plain")
	policy := func(name, target string, peer map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "signet.dev/v1alpha1", "kind": "AccessPolicy", "metadata": map[string]any{"name": name, "namespace": "hook-plain"},
			"spec": map[string]any{"target": target, "rules": []any{map[string]any{"action": "allow", "peers": []any{peer}}}},
		}}
	}
	own := "spiffe://example.org/ns/hook-plain/sa/api"
	if _, err := policies.Create(ctx, policy("theirs", "spiffe://example.org/ns/payments/sa/api", map[string]any{"namespace": "hook-plain"}), metav1.CreateOptions{}); err == nil ||
		!strings.Contains(err.Error(), "must be a server of namespace hook-plain") {
		t.Fatalf("policy for another namespace's server: %v", err)
	}
	wide := policy("wide", own, map[string]any{"namespace": "payments"})
	if _, err := policies.Create(ctx, wide, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "allows peers outside namespace hook-plain") {
		t.Fatalf("cross-namespace policy without the label: %v", err)
	}
	// alice may edit namespaces, but is no cluster admin.
	if _, err := cluster.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "ns-editor"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "update", "patch"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "alice-ns-editor"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "ns-editor"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "alice"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	aliceCfg := rest.CopyConfig(cluster.Config)
	aliceCfg.Impersonate = rest.ImpersonationConfig{UserName: "alice"}
	alice, err := kubernetes.NewForConfig(aliceCfg)
	if err != nil {
		t.Fatal(err)
	}
	label := func(c kubernetes.Interface) error {
		ns, err := c.CoreV1().Namespaces().Get(ctx, "hook-plain", metav1.GetOptions{})
		if err != nil {
			return err
		}
		ns.Labels[accesspolicy.CrossNamespaceLabel] = "allowed"
		_, err = c.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
		return err
	}
	eventually(t, 10*time.Second, "alice refused by the webhook (not by RBAC)", func() bool {
		err := label(alice)
		return err != nil && strings.Contains(err.Error(), "only cluster admins may set the label")
	})
	if err := label(cluster.Client); err != nil {
		t.Fatalf("a cluster admin labelling: %v", err)
	}
	eventually(t, 10*time.Second, "the cross-namespace policy admitted after the label", func() bool {
		_, err := policies.Create(ctx, wide, metav1.CreateOptions{})
		return err == nil
	})
}

// rotatingWebhook is a CA serving the pod-mutating webhook, registered as
// configuration name for the pods of namespace name+"-app", with short-lived
// keys.
type rotatingWebhook struct {
	ca   *systest.CA
	addr string
	name string
}

func startRotatingWebhook(t *testing.T, name string, rootTTL, intermediateTTL time.Duration) *rotatingWebhook {
	t.Helper()
	ctx := context.Background()
	w := &rotatingWebhook{addr: systest.FreeAddr(t), name: name}
	_, port, _ := strings.Cut(w.addr, ":")
	if err := createNamespace(ctx, name+"-ca"); err != nil {
		t.Fatal(err)
	}
	w.ca = systest.StartCA(t, func(c *server.Config) {
		c.RootTTL, c.IntermediateTTL, c.RotateInterval = rootTTL, intermediateTTL, time.Second
		c.X509TTL, c.AgentTTL = intermediateTTL/2, intermediateTTL/2
		c.Kube = &server.KubeConfig{
			Kubeconfig: cluster.Kubeconfig, ClusterName: clusterN, AgentServiceAccounts: []string{agentNS + "/" + agentSA},
			Namespace: name + "-ca", Identity: name,
			Webhook: &server.WebhookConfig{ListenAddr: w.addr, DNSNames: []string{"localhost"}, ConfigurationName: name},
		}
	})
	fail, none := admissionregv1.Fail, admissionregv1.SideEffectClassNone
	u := "https://localhost:" + port + "/mutate-pods"
	adm := cluster.Client.AdmissionregistrationV1()
	if _, err := adm.MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregv1.MutatingWebhook{{Name: "inject.signet.dev", ClientConfig: admissionregv1.WebhookClientConfig{URL: &u},
			Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"signet-e2e-webhook": name}},
			FailurePolicy:     &fail, SideEffects: &none, AdmissionReviewVersions: []string{"v1"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { adm.MutatingWebhookConfigurations().Delete(ctx, name, metav1.DeleteOptions{}) })
	if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name + "-app",
		Labels: map[string]string{"signet-e2e-webhook": name, "signet.dev/inject": "enabled"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := createSA(ctx, name+"-app", "default"); err != nil {
		t.Fatal(err)
	}
	createNode(t, "node-"+name)
	return w
}

// served is the webhook's serving certificate chain, verified against the
// CA's current roots.
func (w *rotatingWebhook) served(t *testing.T) []*x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", w.addr, &tls.Config{RootCAs: certPool(w.ca.Roots()), ServerName: "localhost"})
	if err != nil {
		t.Fatalf("webhook TLS: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().VerifiedChains[0]
}

// injectedPod creates a pod and reports whether the API server had the
// webhook mutate it.
func (w *rotatingWebhook) injectedPod() bool {
	no := false
	p, err := cluster.Client.CoreV1().Pods(w.name+"-app").Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "p-"},
		Spec:       corev1.PodSpec{NodeName: "node-" + w.name, AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "main", Image: "localhost/none:1"}}},
	}, metav1.CreateOptions{})
	return err == nil && len(p.Spec.Volumes) > 0
}

// TestWebhookCertificateRotates: the webhook's certificate follows the
// CA's intermediate (here 20 s, replaced at half life), and the API server
// keeps calling the webhook across the change.
func TestWebhookCertificateRotates(t *testing.T) {
	w := startRotatingWebhook(t, "rot", 365*24*time.Hour, 20*time.Second)
	eventually(t, 20*time.Second, "the webhook in use", w.injectedPod)
	first := w.served(t)[0]
	eventually(t, 30*time.Second, "a new webhook certificate", func() bool { return !w.served(t)[0].Equal(first) })
	second := w.served(t)[0]
	if second.Issuer.String() == first.Issuer.String() && second.AuthorityKeyId != nil && string(second.AuthorityKeyId) == string(first.AuthorityKeyId) {
		t.Fatal("the new certificate has the old issuer")
	}
	if !w.injectedPod() {
		t.Fatal("the API server did not call the webhook after the rotation")
	}
}

// TestWebhookFollowsRootRotation: with a 60 s root, the next root is
// published at 30 s and activated at 50 s; the leader puts it in the
// webhook configuration's caBundle before the webhook's certificate chains
// to it, so the API server never fails to call the webhook.
func TestWebhookFollowsRootRotation(t *testing.T) {
	w := startRotatingWebhook(t, "rootrot", time.Minute, 10*time.Second)
	eventually(t, 20*time.Second, "the webhook in use", w.injectedPod)
	firstRoot := w.served(t)
	root0 := firstRoot[len(firstRoot)-1]
	calls, failures := 0, 0
	deadline := time.Now().Add(90 * time.Second)
	for {
		chain := w.served(t)
		if !chain[len(chain)-1].Equal(root0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook certificate never chained to a new root")
		}
		calls++
		if !w.injectedPod() {
			failures++
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Calls keep working on the new root, and the caBundle holds it.
	for i := 0; i < 5; i++ {
		calls++
		if !w.injectedPod() {
			failures++
		}
	}
	if failures > 0 {
		t.Fatalf("%d of %d pod creations were not mutated across the root rotation", failures, calls)
	}
	chain := w.served(t)
	newRoot := chain[len(chain)-1]
	m, err := cluster.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), w.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(m.Webhooks[0].ClientConfig.CABundle) {
		t.Fatal("caBundle holds no certificate")
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: certPool(chain[1 : len(chain)-1])}); err != nil {
		t.Fatalf("the caBundle does not verify the webhook's certificate on the new root %s: %v", newRoot.Subject, err)
	}
	t.Logf("%d pod creations, all mutated, across the root rotation", calls)
}

func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
