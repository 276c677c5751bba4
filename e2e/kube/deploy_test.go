package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/e2e/testenv"
)

const base = "../../deploy/base"

// baseObjects reads every object the kustomize base lists.
func baseObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(base, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	for _, file := range k.Resources {
		raw, err := os.ReadFile(filepath.Join(base, file))
		if err != nil {
			t.Fatal(err)
		}
		objs, err := testenv.ParseYAML(raw)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		out = append(out, objs...)
	}
	return out
}

// applyObjects applies objects server-side, for real or as a dry run.
func applyObjects(t *testing.T, objs []*unstructured.Unstructured, dryRun bool) {
	t.Helper()
	if err := cluster.Apply(context.Background(), objs, dryRun); err != nil {
		t.Fatal(err)
	}
}

// TestDeployBaseDryRun: every object of deploy/base passes a server-side
// dry-run apply against the real API server (schemas, CRDs, RBAC shapes).
func TestDeployBaseDryRun(t *testing.T) {
	objs := baseObjects(t)
	if len(objs) < 15 {
		t.Fatalf("only %d objects in the base", len(objs))
	}
	applyObjects(t, objs, true)
}

// TestDeployRBAC: with the base's RBAC applied, SubjectAccessReviews show
// that the agent can read its kubelet's pods and nothing else, and the CA
// can do its work and no more.
func TestDeployRBAC(t *testing.T) {
	var rbac []*unstructured.Unstructured
	for _, u := range baseObjects(t) {
		switch u.GetKind() {
		case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			rbac = append(rbac, u)
		}
	}
	// A namespace's owner, with every right in it (a ClusterRole of all
	// verbs on all resources, bound in the namespace: more than
	// Kubernetes' admin role): a Revocation refuses identities in every
	// namespace, so only cluster admins may make or withdraw one.
	const nsAdmin = "alice@example.com"
	if err := createNamespace(context.Background(), "shop"); err != nil {
		t.Fatal(err)
	}
	rbac = append(rbac, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
		"metadata": map[string]any{"name": "test-namespace-owner"},
		"rules":    []any{map[string]any{"apiGroups": []any{"*"}, "resources": []any{"*"}, "verbs": []any{"*"}}},
	}}, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
		"metadata": map[string]any{"name": "alice-owner", "namespace": "shop"},
		"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-namespace-owner"},
		"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": nsAdmin}},
	}})
	applyObjects(t, rbac, false)
	const agent, ca = "system:serviceaccount:signet-system:signet-agent", "system:serviceaccount:signet-system:signet-ca"
	for _, tt := range []struct {
		user string
		attr authzv1.ResourceAttributes
		want bool
	}{
		{agent, authzv1.ResourceAttributes{Verb: "get", Resource: "nodes", Subresource: "pods", Name: "node-a"}, true},
		{agent, authzv1.ResourceAttributes{Verb: "get", Resource: "nodes", Subresource: "proxy", Name: "node-a"}, false},
		{agent, authzv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "signet-system", Name: "signet-ca-keys"}, false},
		{agent, authzv1.ResourceAttributes{Verb: "list", Resource: "pods"}, false},
		{agent, authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Subresource: "exec", Namespace: "shop", Name: "web"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "watch", Resource: "pods"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "delete", Resource: "pods", Namespace: "shop", Name: "web"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "identityrules", Subresource: "status", Name: "default"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "identityrules", Name: "default"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "update", Resource: "secrets", Namespace: "signet-system", Name: "signet-ca-keys"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "signet-system", Name: "other"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "get", Resource: "secrets", Namespace: "shop", Name: "signet-ca-keys"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "create", Resource: "secrets", Namespace: "shop"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "signet-system", Name: "signet-ca"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system", Name: "kube-scheduler"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "watch", Group: "coordination.k8s.io", Resource: "leases", Namespace: "signet-system"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "signet-system", Name: "signet-ack-0123"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "watch", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-node-lease"}, false},
		{nsAdmin, authzv1.ResourceAttributes{Verb: "create", Resource: "pods", Namespace: "shop"}, true},
		{nsAdmin, authzv1.ResourceAttributes{Verb: "create", Group: "signet.dev", Resource: "revocations"}, false},
		{nsAdmin, authzv1.ResourceAttributes{Verb: "delete", Group: "signet.dev", Resource: "revocations", Name: "leaked-svid"}, false},
		{agent, authzv1.ResourceAttributes{Verb: "create", Group: "signet.dev", Resource: "revocations"}, false},
		// A FederatedTrustDomain makes another trust domain's identities
		// trusted everywhere: cluster admins (and the CA, for its admin
		// API) only.
		{nsAdmin, authzv1.ResourceAttributes{Verb: "create", Group: "signet.dev", Resource: "federatedtrustdomains"}, false},
		{nsAdmin, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "federatedtrustdomains", Name: "partner.example"}, false},
		{nsAdmin, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "federatedtrustdomains", Subresource: "status", Name: "partner.example"}, false},
		{agent, authzv1.ResourceAttributes{Verb: "create", Group: "signet.dev", Resource: "federatedtrustdomains"}, false},
		{agent, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "federatedtrustdomains", Subresource: "status", Name: "partner.example"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "federatedtrustdomains", Subresource: "status", Name: "partner.example"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Resource: "configmaps", Namespace: "signet-system", Name: "signet-bundle"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Resource: "configmaps", Namespace: "kube-system", Name: "signet-bundle"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "create", Group: "signet.dev", Resource: "trafficprofiles", Namespace: "shop"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "trafficprofiles", Subresource: "status", Namespace: "shop", Name: "tp-1"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "delete", Group: "signet.dev", Resource: "trafficprofiles", Namespace: "shop", Name: "tp-1"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "create", Resource: "events", Namespace: "shop"}, true},
		{nsAdmin, authzv1.ResourceAttributes{Verb: "update", Group: "signet.dev", Resource: "trafficprofiles", Subresource: "status", Namespace: "shop", Name: "tp-1"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "signet"}, true},
		{ca, authzv1.ResourceAttributes{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "validatingwebhookconfigurations", Name: "someone-else"}, false},
		{ca, authzv1.ResourceAttributes{Verb: "delete", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Name: "signet"}, false},
	} {
		// RBAC changes take effect asynchronously: wait for the allowed ones.
		deadline := time.Now().Add(15 * time.Second)
		for {
			sar, err := cluster.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authzv1.SubjectAccessReview{
				Spec: authzv1.SubjectAccessReviewSpec{User: tt.user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:signet-system"}, ResourceAttributes: &tt.attr},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if sar.Status.Allowed == tt.want {
				break
			}
			if !tt.want || time.Now().After(deadline) {
				t.Errorf("%s may %s %s/%s %s/%s: %v, want %v", tt.user, tt.attr.Verb, tt.attr.Resource, tt.attr.Subresource, tt.attr.Namespace, tt.attr.Name, sar.Status.Allowed, tt.want)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// render runs a renderer from the test environment's cache and parses
// its output.
func render(t *testing.T, tool string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	bin := filepath.Join(testenv.BinDir(), tool)
	if _, err := os.Stat(bin); err != nil {
		if err := testenv.Build(); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", tool, args, err, stderr.String())
	}
	objs, err := testenv.ParseYAML(out)
	if err != nil {
		t.Fatalf("%s output: %v", tool, err)
	}
	return objs
}

func byKey(objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	m := map[string]*unstructured.Unstructured{}
	for _, u := range objs {
		m[u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName()] = u
	}
	return m
}

// sameObjects fails t for every object that helm (h) and kustomize (k)
// do not both render alike.
func sameObjects(t *testing.T, h, k map[string]*unstructured.Unstructured) {
	t.Helper()
	for key, want := range k {
		got, ok := h[key]
		if !ok {
			t.Errorf("helm does not render %s", key)
			continue
		}
		if !equality.Semantic.DeepEqual(got.Object, want.Object) {
			gj, _ := json.Marshal(got.Object)
			wj, _ := json.Marshal(want.Object)
			t.Errorf("%s differs:\nhelm:      %s\nkustomize: %s", key, gj, wj)
		}
	}
	for key := range h {
		if _, ok := k[key]; !ok {
			t.Errorf("helm renders %s, kustomize does not", key)
		}
	}
}

// TestHelmAndKustomizeAgree: `kustomize build deploy/base` and
// `helm template` of deploy/helm/signet with its default values give the
// same objects, and both pass a server-side dry-run apply.
func TestHelmAndKustomizeAgree(t *testing.T) {
	kz := render(t, "kustomize", "build", base)
	hm := render(t, "helm", "template", "signet", "../../deploy/helm/signet", "--namespace", "signet-system", "--include-crds")
	k, h := byKey(kz), byKey(hm)
	if len(k) < 20 {
		t.Fatalf("kustomize rendered only %d objects", len(k))
	}
	sameObjects(t, h, k)
	applyObjects(t, kz, true)
	applyObjects(t, hm, true)

	// Values reach the objects.
	custom := render(t, "helm", "template", "signet", "../../deploy/helm/signet", "--namespace", "id",
		"--set", "trustDomain=corp.example", "--set", "webhook.enabled=false", "--set", "ca.replicas=3", "--set", "ca.keyType=ec-p384", "--set", "ca.jwtKeyType=rsa-2048",
		"--set", "ca.kms=awskms:region=eu-west-1", "--set", "ca.serviceAccountAnnotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::111122223333:role/signet-ca",
		"--set", "ca.env[0].name=AWS_REGION", "--set", "ca.env[0].value=eu-west-1",
		"--set", "webhook.agentPodCreators[0]=system:serviceaccount:kube-system:ds-operator")
	c := byKey(custom)
	dep := c["Deployment id/signet-ca"]
	if dep == nil {
		t.Fatal("no CA Deployment with custom values")
	}
	raw, _ := json.Marshal(dep.Object)
	for _, want := range []string{`"replicas":3`, "--trust-domain=corp.example", "--key-type=ec-p384", "--jwt-key-type=rsa-2048", "--agent-service-account=id/signet-agent",
		"--kms=awskms:region=eu-west-1", `"env":[{"name":"AWS_REGION","value":"eu-west-1"}]`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("custom values: %s missing from the CA Deployment", want)
		}
	}
	// The TrafficProfile policy names the CA's account in the release's
	// namespace.
	if vap, _ := json.Marshal(c["ValidatingAdmissionPolicy /signet-trafficprofiles"]); !strings.Contains(string(vap), "system:serviceaccount:id:signet-ca") {
		t.Errorf("the TrafficProfile admission policy of a release in id does not name id's CA account: %s", vap)
	}
	if sa := c["ServiceAccount id/signet-ca"]; sa == nil || sa.GetAnnotations()["eks.amazonaws.com/role-arn"] != "arn:aws:iam::111122223333:role/signet-ca" {
		t.Error("ca.serviceAccountAnnotations missing from the CA's ServiceAccount")
	}
	if err := createNamespace(context.Background(), "id"); err != nil {
		t.Fatal(err)
	}
	applyObjects(t, custom, true)
	if strings.Contains(string(raw), "--webhook-listen") || strings.Contains(string(raw), "--agent-pod-creator") || c["ValidatingWebhookConfiguration /signet"] != nil {
		t.Error("webhook.enabled=false still renders the webhook")
	}
	withValues := byKey(render(t, "helm", "template", "signet", "../../deploy/helm/signet", "--namespace", "id",
		"--set", "webhook.agentPodCreators[0]=system:serviceaccount:kube-system:ds-operator",
		"--set", "webhook.socketVolume=hostPath", "--set", "agent.kubeletRootDir=/data/kubelet"))
	caRaw, _ := json.Marshal(withValues["Deployment id/signet-ca"].Object)
	for _, want := range []string{"--agent-pod-creator=system:serviceaccount:kube-system:ds-operator", "--socket-volume=hostPath"} {
		if !strings.Contains(string(caRaw), want) {
			t.Errorf("%s missing from the CA's arguments", want)
		}
	}
	agentRaw, _ := json.Marshal(withValues["DaemonSet id/signet-agent"].Object)
	for _, want := range []string{"--kubelet-root-dir=/data/kubelet", `"path":"/data/kubelet/plugins_registry"`, `"path":"/data/kubelet/pods"`,
		`"mountPath":"/data/kubelet/pods","mountPropagation":"Bidirectional"`} {
		if !strings.Contains(string(agentRaw), want) {
			t.Errorf("agent.kubeletRootDir: %s missing from the agent DaemonSet", want)
		}
	}
	if strings.Contains(string(agentRaw), "/var/lib/kubelet") {
		t.Error("agent.kubeletRootDir: /var/lib/kubelet left in the agent DaemonSet")
	}
}

// TestPublicEndpoints: the chart with the OIDC issuer and the bundle
// endpoint (https_web) on, and the kustomize base with the components
// oidc, bundle-endpoint and bundle-endpoint-web and the issuer as an
// overlay's patch, give the same objects; both pass a server-side dry-run
// apply, serve each endpoint on a Service of its own, and let them through
// the CA's NetworkPolicy.
func TestPublicEndpoints(t *testing.T) {
	hm := render(t, "helm", "template", "signet", "../../deploy/helm/signet", "--namespace", "signet-system", "--include-crds",
		"--set", "ca.oidc.issuer=https://oidc.example.org", "--set", "ca.oidc.tlsSecret=signet-oidc-tls",
		"--set", "ca.federation.bundleEndpoint=true", "--set", "ca.federation.tlsSecret=signet-bundle-endpoint-tls")
	overlay := t.TempDir()
	abs, err := filepath.Abs("../../deploy")
	if err != nil {
		t.Fatal(err)
	}
	// kustomize takes bases and components by relative path only.
	if abs, err = filepath.Rel(overlay, abs); err != nil {
		t.Fatal(err)
	}
	kust := fmt.Sprintf(`resources: [%[1]s/base]
components: [%[1]s/components/oidc, %[1]s/components/bundle-endpoint, %[1]s/components/bundle-endpoint-web]
patches:
  - target: {kind: Deployment, name: signet-ca}
    patch: |
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --oidc-issuer=https://oidc.example.org
`, abs)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	kz := render(t, "kustomize", "build", overlay)
	h, k := byKey(hm), byKey(kz)
	// The issuer comes from the overlay's patch, after the components'
	// arguments: the CA's arguments are compared as a set.
	for _, objs := range []map[string]*unstructured.Unstructured{h, k} {
		dep := objs["Deployment signet-system/signet-ca"]
		if dep == nil {
			t.Fatal("no CA Deployment")
		}
		containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
		c := containers[0].(map[string]any)
		args, _ := c["args"].([]any)
		slices.SortFunc(args, func(a, b any) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
		c["args"] = args
		unstructured.SetNestedSlice(dep.Object, containers, "spec", "template", "spec", "containers")
	}
	sameObjects(t, h, k)
	applyObjects(t, hm, true)
	applyObjects(t, kz, true)

	for name, port := range map[string]string{"signet-ca-oidc": "oidc", "signet-ca-bundle-endpoint": "bundle-endpoint"} {
		svc := k["Service signet-system/"+name]
		if svc == nil {
			t.Fatalf("no Service %s", name)
		}
		ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
		if len(ports) != 1 || ports[0].(map[string]any)["targetPort"] != port {
			t.Errorf("Service %s ports %v; want %s only", name, ports, port)
		}
	}
	dep := k["Deployment signet-system/signet-ca"]
	containers, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "containers")
	args := fmt.Sprint(containers[0].(map[string]any)["args"])
	for _, want := range []string{"--oidc-issuer=https://oidc.example.org", "--oidc-listen=0.0.0.0:8444", "--federation-listen=0.0.0.0:8445", "--federation-tls-cert=/etc/signet/federation/tls.crt"} {
		if !strings.Contains(args, want) {
			t.Errorf("the CA's args lack %s: %s", want, args)
		}
	}
	np := k["NetworkPolicy signet-system/signet-ca"]
	ingress, _, _ := unstructured.NestedSlice(np.Object, "spec", "ingress")
	if s := fmt.Sprint(ingress); !strings.Contains(s, "8444") || !strings.Contains(s, "8445") {
		t.Errorf("the CA's NetworkPolicy does not admit the public ports: %s", s)
	}
}
