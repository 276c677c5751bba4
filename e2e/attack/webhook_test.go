package attack

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
)

// shipped renders the objects as a user installs them: kustomize build
// deploy/base, or helm template deploy/helm/signet into signet-system.
func shipped(t *testing.T, renderer string) []*unstructured.Unstructured {
	t.Helper()
	var cmd *exec.Cmd
	switch renderer {
	case "kustomize":
		cmd = exec.Command(filepath.Join(testenv.BinDir(), "kustomize"), "build", "../../deploy/base")
	case "helm":
		cmd = exec.Command(filepath.Join(testenv.BinDir(), "helm"), "template", "signet", "../../deploy/helm/signet", "--namespace", "signet-system")
	default:
		t.Fatalf("no renderer %s", renderer)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", renderer, err)
	}
	objs, err := testenv.ParseYAML(out)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// shippedWebhooks renders the webhook configurations as a user installs
// them (kustomize build deploy/base, or helm template deploy/helm/signet)
// and changes only how the API server reaches the webhook: a URL on
// localhost instead of the Service (this cluster has no pod network), and
// the objects' name. Rules, selectors and match conditions are as shipped.
func shippedWebhooks(t *testing.T, renderer, url, name string) []*unstructured.Unstructured {
	t.Helper()
	var hooks []*unstructured.Unstructured
	for _, u := range shipped(t, renderer) {
		if k := u.GetKind(); k != "MutatingWebhookConfiguration" && k != "ValidatingWebhookConfiguration" {
			continue
		}
		list, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
		for _, h := range list {
			cc := h.(map[string]any)["clientConfig"].(map[string]any)
			path := cc["service"].(map[string]any)["path"].(string)
			delete(cc, "service")
			cc["url"] = url + path
		}
		if err := unstructured.SetNestedSlice(u.Object, list, "webhooks"); err != nil {
			t.Fatal(err)
		}
		u.SetName(name)
		hooks = append(hooks, u)
	}
	if len(hooks) != 2 {
		t.Fatalf("%s rendered %d webhook configurations, want 2", renderer, len(hooks))
	}
	return hooks
}

// TestShippedWebhookConfiguration attacks the pod webhook as deploy/base
// and the Helm chart install it:
//   - a pod that labels itself as the CA's (app.kubernetes.io/component:
//     ca) to skip the webhook, and mounts the agent's socket directory
//     writable or runs under the agent's account;
//   - a pod in the CA's namespace with the CA's account and a hostPath;
//   - the second agent service account (node attestation accepts all);
//   - /var/run/signet, the same directory as /run/signet on most nodes;
//   - /proc/<pid>/root/..., which reaches any directory, and the CSI
//     plugin's socket directory;
//   - the CSI socket volume asked for writable;
//   - kubectl debug: an ephemeral container that mounts the injected
//     socket directory writable, or joins a pod with the agent's account.
func TestShippedWebhookConfiguration(t *testing.T) {
	ctx := context.Background()
	c := env.Cluster.Client
	const cfgName = "signet-attack"
	agents := []string{"signet-system/signet-agent", "signet-system/signet-agent-pool2"}
	for _, a := range agents {
		ns, sa, _ := strings.Cut(a, "/")
		if err := env.ServiceAccount(ctx, ns, sa); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.ServiceAccount(ctx, "signet-system", "signet-ca"); err != nil {
		t.Fatal(err)
	}
	// A CA with the webhook, its own replica set per renderer.
	startCA := func(t *testing.T, ns, addr string) {
		if err := env.Namespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
		systest.StartCA(t, func(c *server.Config) {
			c.Kube = &server.KubeConfig{
				Kubeconfig: env.Cluster.Kubeconfig, ClusterName: "attack", AgentServiceAccounts: agents,
				Namespace: ns, Identity: "attack",
				Webhook: &server.WebhookConfig{ListenAddr: addr, DNSNames: []string{"localhost"}, ConfigurationName: cfgName},
			}
		})
	}
	namespace(t, "attack-plain", nil)
	namespace(t, "attack-inject", map[string]string{"signet.dev/inject": "enabled"})

	newPod := func(ns, sa string, labels map[string]string, mutate func(*corev1.Pod)) error {
		no := false
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "attack-", Namespace: ns, Labels: labels},
			// Bound to a node without a kubelet: stored, never run.
			Spec: corev1.PodSpec{NodeName: "attack-nowhere", ServiceAccountName: sa, AutomountServiceAccountToken: &no,
				Containers: []corev1.Container{{Name: "main", Image: "localhost/none:1"}}}}
		if mutate != nil {
			mutate(p)
		}
		_, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		return err
	}
	hostPath := func(dir string, readOnly bool) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "sock", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "sock", MountPath: "/sock", ReadOnly: readOnly}}
		}
	}
	caLabel := map[string]string{"app.kubernetes.io/name": "signet", "app.kubernetes.io/component": "ca"}

	for _, renderer := range []string{"kustomize", "helm"} {
		t.Run(renderer, func(t *testing.T) {
			addr := systest.FreeAddr(t)
			_, port, _ := strings.Cut(addr, ":")
			hooks := shippedWebhooks(t, renderer, "https://localhost:"+port, cfgName)
			adm := c.AdmissionregistrationV1()
			defer func() {
				adm.MutatingWebhookConfigurations().Delete(ctx, cfgName, metav1.DeleteOptions{})
				adm.ValidatingWebhookConfigurations().Delete(ctx, cfgName, metav1.DeleteOptions{})
			}()
			// Installed as kubectl apply does it: configurations and CA at
			// once. With kustomize the configurations come first; with Helm
			// the CA runs first and fills in their caBundle when they
			// appear.
			if renderer == "helm" {
				startCA(t, "attack-ca-"+renderer, addr)
			}
			if err := env.Cluster.Apply(ctx, hooks, false); err != nil {
				t.Fatal(err)
			}
			if renderer != "helm" {
				startCA(t, "attack-ca-"+renderer, addr)
			}
			// The configuration takes effect asynchronously, and the CA's
			// leader fills in its caBundle: wait until a pod that every
			// version refuses is refused.
			eventually(t, 30*time.Second, "the webhook in effect", func() bool {
				err := newPod("attack-plain", "default", nil, hostPath("/run/signet", false))
				return err != nil && strings.Contains(err.Error(), "reaches the Signet agent's socket directory")
			})
			refused := func(what, want string, err error) {
				t.Helper()
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s: got %v, want a refusal containing %q", what, err, want)
				}
			}
			refused("a pod labelled as the CA's, mounting the socket directory writable", "reaches the Signet agent's socket directory",
				newPod("attack-plain", "default", caLabel, hostPath("/run/signet", false)))
			refused("the agent's account under the CA's label",
				"belongs to the signet-agent DaemonSet", newPod("signet-system", "signet-agent", caLabel, nil))
			refused("the CA's account with a hostPath", "reaches the Signet agent's socket directory",
				newPod("signet-system", "signet-ca", caLabel, hostPath("/run", true)))
			refused("the second agent account", "belongs to the signet-agent DaemonSet", newPod("signet-system", "signet-agent-pool2", nil, nil))
			refused("hostPath /var/run/signet", "reaches the Signet agent's socket directory", newPod("attack-plain", "default", nil, hostPath("/var/run/signet", true)))
			refused("hostPath /var", "reaches the Signet agent's socket directory", newPod("attack-plain", "default", nil, hostPath("/var", true)))
			// The kubelet resolves a hostPath as root on the host: through
			// /proc's links any spelling reaches the socket directory.
			refused("hostPath /proc/1/root/run/signet", "reaches any directory of the host", newPod("attack-plain", "default", nil, hostPath("/proc/1/root/run/signet", true)))
			refused("hostPath /proc/self/cwd", "reaches any directory of the host", newPod("attack-plain", "default", nil, hostPath("/proc/self/cwd", true)))
			// The CSI plugin's socket: a pod serving it would mount what it
			// likes into every pod.
			refused("hostPath /run/signet-csi", "a directory of the Signet agent", newPod("attack-plain", "default", nil, hostPath("/run/signet-csi", false)))
			// The injected CSI volume, or one of the pod's own, writable.
			refused("the CSI socket volume writable", "readOnly: true", newPod("attack-plain", "default", nil, func(p *corev1.Pod) {
				no := false
				p.Spec.Volumes = []corev1.Volume{{Name: "sock", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "csi.signet.dev", ReadOnly: &no}}}}
			}))
			// A Revocation the CA would ignore is refused at once, with why.
			revs, err := dynamic.NewForConfig(env.Cluster.Config)
			if err != nil {
				t.Fatal(err)
			}
			future := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "signet.dev/v1alpha1", "kind": "Revocation",
				"metadata": map[string]any{"generateName": "future-"}, "spec": map[string]any{
					"spiffeID": "spiffe://example.org/x", "issuedBefore": time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}}}
			_, err = revs.Resource(schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "revocations"}).Create(ctx, future, metav1.CreateOptions{})
			refused("a Revocation of SVIDs not issued yet", "in the future", err)
			// What the exemption is for: the CA's own pods.
			if err := newPod("signet-system", "signet-ca", caLabel, nil); err != nil {
				t.Errorf("the CA's pod: %v", err)
			}

			// kubectl debug: an injected pod gets an ephemeral container
			// that mounts the socket directory writable.
			p, err := c.CoreV1().Pods("attack-inject").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "app-"},
				Spec: corev1.PodSpec{NodeName: "attack-nowhere", Containers: []corev1.Container{{Name: "main", Image: "localhost/none:1"}}}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Spec.Volumes) == 0 || p.Spec.Volumes[len(p.Spec.Volumes)-1].Name != "signet-agent-socket" {
				t.Fatalf("the socket was not injected: %+v", p.Spec.Volumes)
			}
			debug := func(p *corev1.Pod, readOnly bool) error {
				p = p.DeepCopy()
				var mounts []corev1.VolumeMount
				for _, v := range p.Spec.Volumes {
					if v.Name == "signet-agent-socket" {
						mounts = []corev1.VolumeMount{{Name: v.Name, MountPath: "/debug-sock", ReadOnly: readOnly}}
					}
				}
				p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
					Name: "debugger-" + time.Now().Format("150405.000000")[7:], Image: "localhost/none:1", VolumeMounts: mounts}})
				_, err := c.CoreV1().Pods(p.Namespace).UpdateEphemeralContainers(ctx, p.Name, p, metav1.UpdateOptions{})
				return err
			}
			refused("an ephemeral container mounting the socket directory writable", "writable", debug(p, false))
			if err := debug(p, true); err != nil {
				t.Errorf("a read-only debugging container: %v", err)
			}
			agentPod, err := c.CoreV1().Pods("signet-system").Get(ctx, "signet-agent", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			refused("an ephemeral container in a pod with the agent's account", "signet-agent", debug(agentPod, true))
		})
	}
}
