package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/signet-id/signet/agent/csi"
	"github.com/signet-id/signet/ca/podcert"
	"github.com/signet-id/signet/e2e/nodeenv"
	"github.com/signet-id/signet/e2e/testenv"
)

// overlay is the test overlay: only what this one-node cluster needs. The
// CA and the agent on host networking (the CA reaches the API server, and
// the agent the CA and the kubelet, on 127.0.0.1; the API server calls the
// webhook at https://localhost:8443), one CA replica, and the images built
// here (never pulled). The kubelet's root dir of the test node is set as a
// user would: the overlay of the docs, or Helm's agent.kubeletRootDir.
func overlay(t *testing.T, objs []*unstructured.Unstructured, apiPort string) {
	t.Helper()
	for _, u := range objs {
		switch u.GetKind() + "/" + u.GetName() {
		case "Deployment/signet-ca":
			must(t, unstructured.SetNestedField(u.Object, int64(1), "spec", "replicas"))
			spec := podSpec(t, u)
			spec["hostNetwork"] = true
			c := container(spec)
			c["image"], c["imagePullPolicy"] = "signet-ca:e2e", "Never"
			c["args"] = replaceArg(c["args"], "--webhook-dns=", "--webhook-dns=localhost")
			c["env"] = []any{map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}, map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": apiPort}}
		case "DaemonSet/signet-agent":
			spec := podSpec(t, u)
			spec["hostNetwork"] = true
			c := container(spec)
			c["image"], c["imagePullPolicy"] = "signet-agent:e2e", "Never"
			c["args"] = append(replaceArg(c["args"], "--ca-address=", "--ca-address=127.0.0.1:8081").([]any), "--kubelet-url="+testenv.KubeletURL)
		case "MutatingWebhookConfiguration/signet", "ValidatingWebhookConfiguration/signet":
			hooks, _, _ := unstructured.NestedSlice(u.Object, "webhooks")
			for _, h := range hooks {
				cc := h.(map[string]any)["clientConfig"].(map[string]any)
				path := cc["service"].(map[string]any)["path"].(string)
				delete(cc, "service")
				cc["url"] = "https://localhost:8443" + path
			}
			must(t, unstructured.SetNestedSlice(u.Object, hooks, "webhooks"))
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func podSpec(t *testing.T, u *unstructured.Unstructured) map[string]any {
	spec, ok, _ := unstructured.NestedMap(u.Object, "spec", "template", "spec")
	if !ok {
		t.Fatalf("%s has no pod spec", u.GetName())
	}
	u.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"] = spec
	return spec
}

func container(spec map[string]any) map[string]any {
	return spec["containers"].([]any)[0].(map[string]any)
}

func replaceArg(args any, prefix, with string) any {
	var out []any
	for _, a := range args.([]any) {
		if strings.HasPrefix(a.(string), prefix) {
			a = with
		}
		out = append(out, a)
	}
	return out
}

// TestDeployment installs Signet on the real node from the shipped
// manifests, rendered by kustomize (deploy/base) and by Helm
// (deploy/helm/signet), each through the test overlay, with the scheduler
// and the controllers running: the DaemonSet's agent attests through PSAT
// and registers its CSI driver with the kubelet; workload pods in a
// namespace that enforces Pod Security's restricted level, on the pod
// network, are admitted by the real API server, get the socket injected as
// a CSI volume, their SVIDs through it, and the client calls the server
// through the SDK under an AccessPolicy. The agent then restarts under
// them, and no mount is left once they are gone.
func TestDeployment(t *testing.T) {
	if err := env.Cluster.StartControllers(); err != nil {
		t.Fatal(err)
	}
	// Images, as `make images` builds them.
	static := filepath.Join(env.Dir, "static-deploy")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", static+"/",
		"github.com/signet-id/signet/cmd/signet-ca", "github.com/signet-id/signet/cmd/signet-agent",
		"github.com/signet-id/signet/examples/shop-grpc-server", "github.com/signet-id/signet/examples/shop-grpc-client")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	images := filepath.Join(env.Dir, "images-deploy")
	if out, err := exec.Command("go", "run", "github.com/signet-id/signet/cmd/signet-image", "-bin", static, "-out", images, "-tag", "e2e").CombinedOutput(); err != nil {
		t.Fatalf("signet-image: %v\n%s", err, out)
	}
	for _, name := range []string{"signet-ca", "signet-agent"} {
		must(t, env.Node.ImportTarball(filepath.Join(images, name+".tar")))
	}
	for _, name := range []string{"shop-grpc-server", "shop-grpc-client"} {
		must(t, env.Node.ImportImage("localhost/"+name+":e2e", filepath.Join(static, name)))
	}
	t.Cleanup(func() {
		// The DaemonSet's directories on the host.
		os.RemoveAll("/run/signet")
		os.RemoveAll("/run/signet-csi")
	})
	_, apiPort, _ := strings.Cut(strings.TrimPrefix(env.Cluster.URL, "https://"), ":")
	root := env.Node.RootDir()

	t.Run("kustomize", func(t *testing.T) {
		// The overlay docs/run-on-kubernetes.md gives for a kubelet with
		// another root dir, as a user copies it.
		objs := renderTool(t, "kustomize", "build", docsOverlay(t, root))
		overlay(t, objs, apiPort)
		deployAndRun(t, objs, "deploy-kustomize")
	})
	t.Run("helm", func(t *testing.T) {
		objs := renderTool(t, "helm", "template", "signet", "../../deploy/helm/signet", "--namespace", "signet-system",
			"--set", "agent.kubeletRootDir="+root)
		overlay(t, objs, apiPort)
		deployAndRun(t, objs, "deploy-helm")
	})
}

// docsOverlay writes the kustomize overlay of docs/run-on-kubernetes.md
// for a kubelet with root dir root (the docs' /data/kubelet), on the base
// of this checkout, and returns its directory.
func docsOverlay(t *testing.T, root string) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/run-on-kubernetes.md")
	must(t, err)
	const start = "  ```yaml\n  # kustomization.yaml of your overlay\n"
	i := strings.Index(string(doc), start)
	if i < 0 {
		t.Fatal("docs/run-on-kubernetes.md has no kustomize overlay for the kubelet's root dir")
	}
	block, _, _ := strings.Cut(string(doc)[i+len(start):], "  ```")
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		lines = append(lines, strings.TrimPrefix(l, "  "))
	}
	dir := t.TempDir()
	abs, err := filepath.Abs("../../deploy/base")
	must(t, err)
	// kustomize takes bases by relative path only.
	base, err := filepath.Rel(dir, abs)
	must(t, err)
	k := strings.ReplaceAll(strings.Join(lines, "\n"), "/data/kubelet", root)
	k = strings.Replace(k, "github.com/signet-id/signet/deploy/base", base, 1)
	must(t, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644))
	return dir
}

func renderTool(t *testing.T, tool string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := exec.Command(filepath.Join(testenv.BinDir(), tool), args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", tool, args, err)
	}
	objs, err := testenv.ParseYAML(out)
	must(t, err)
	return objs
}

// deployAndRun applies objs, runs the workloads in namespace ns, restarts
// the agent under them, and uninstalls.
func deployAndRun(t *testing.T, objs []*unstructured.Unstructured, ns string) {
	ctx := context.Background()
	kube := env.Cluster.Client
	must(t, env.Cluster.Apply(ctx, objs, false))
	dyn, err := dynamic.NewForConfig(env.Cluster.Config)
	must(t, err)
	t.Cleanup(func() { uninstall(t, ns) })

	// The DaemonSet's agent becomes ready (attested through PSAT), and the
	// kubelet registers its CSI driver: the node's CSINode names it.
	agentPod := waitAgent(t, "")
	wait(t, time.Minute, "the kubelet to register csi.signet.dev", func() bool {
		n, err := kube.StorageV1().CSINodes().Get(ctx, testenv.NodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == "csi.signet.dev" && d.NodeID == testenv.NodeName {
				return true
			}
		}
		return false
	}, func() string { return podsState(ctx, "signet-system") })

	// Two workloads in a namespace that asks for the socket and enforces
	// Pod Security's restricted level.
	_, err = kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{"signet.dev/inject": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}}}, metav1.CreateOptions{})
	must(t, err)
	for _, sa := range []string{"server", "client"} {
		must(t, env.ServiceAccount(ctx, ns, sa))
	}
	policy := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "signet.dev/v1alpha1", "kind": "AccessPolicy", "metadata": map[string]any{"name": "server", "namespace": ns},
		"spec": map[string]any{"target": "spiffe://example.org/ns/" + ns + "/sa/server", "rules": []any{
			map[string]any{"action": "allow", "peers": []any{map[string]any{"serviceAccount": ns + "/client"}}, "methods": []any{"/grpc.health.v1.Health/Check"}}}},
	}}
	wait(t, time.Minute, "the AccessPolicy admitted", func() bool {
		_, err := dyn.Resource(schemaAccessPolicies).Namespace(ns).Create(ctx, policy, metav1.CreateOptions{})
		return err == nil || apierrors.IsAlreadyExists(err)
	}, func() string { return "" })

	// Pod Security is enforced for real: the hostPath form of the socket,
	// on the host's network, is refused by the API server itself.
	hostPathPod := nodeenv.RestrictedPod(ns, "host", "server", "localhost/shop-grpc-server:e2e")
	hostPathPod.Spec.HostNetwork = true
	hostPathPod.Spec.Volumes = []corev1.Volume{{Name: "s", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/signet"}}}}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, hostPathPod, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "violates PodSecurity") {
		t.Fatalf("a hostPath pod in the restricted namespace: %v", err)
	}

	var server *corev1.Pod
	wait(t, time.Minute, "the server pod admitted with the socket injected", func() bool {
		p, err := kube.CoreV1().Pods(ns).Create(ctx, nodeenv.RestrictedPod(ns, "server", "server", "localhost/shop-grpc-server:e2e", "-addr", ":18444"), metav1.CreateOptions{})
		if err == nil {
			server = p
		}
		return err == nil
	}, func() string { return "" })
	if v := server.Spec.Volumes; len(v) == 0 || v[0].Name != "signet-agent-socket" || v[0].CSI == nil || v[0].CSI.Driver != "csi.signet.dev" {
		t.Fatalf("the socket was not injected as a CSI volume: %+v", v)
	}
	wait(t, time.Minute, "the server listening", func() bool {
		log, _ := env.Node.PodLog(ns, "server", string(server.UID), "main")
		return strings.Contains(log, "listening on")
	}, func() string { return podsState(ctx, ns) + podsState(ctx, "signet-system") })
	// The kubelet reports the pod's address a moment after it runs.
	wait(t, time.Minute, "the server's pod IP", func() bool {
		server, err = kube.CoreV1().Pods(ns).Get(ctx, "server", metav1.GetOptions{})
		return err == nil && server.Status.PodIP != "" && len(server.Status.ContainerStatuses) == 1
	}, func() string { return podsState(ctx, ns) })
	if server.Spec.HostNetwork || server.Status.PodIP == server.Status.HostIP {
		t.Fatalf("the server is not on the pod network: IP %q", server.Status.PodIP)
	}
	serverAddr := server.Status.PodIP + ":18444"
	runClient(t, ns, "client", serverAddr)

	// What the server's container sees: the socket, nothing else of the
	// host, and no way to write there.
	pid, err := env.Node.ContainerPID(server.Status.ContainerStatuses[0].ContainerID)
	must(t, err)
	inPod := fmt.Sprintf("/proc/%d/root/run/signet", pid)
	entries, err := os.ReadDir(inPod)
	must(t, err)
	if len(entries) != 1 || entries[0].Name() != "agent.sock" {
		t.Errorf("the pod's /run/signet holds %v, want the socket only", entries)
	}
	if err := os.WriteFile(inPod+"/fake.sock", nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into the pod's /run/signet: %v, want EROFS", err)
	}

	// The agent restarts under the pods: the server keeps its volume, and
	// the new agent's socket is in it as soon as the agent is up.
	must(t, kube.CoreV1().Pods("signet-system").Delete(ctx, agentPod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	newAgent := waitAgent(t, agentPod.UID)
	readyAt := time.Now()
	wait(t, 5*time.Second, "the restarted agent's socket in the server's volume", func() bool {
		c, err := net.Dial("unix", inPod+"/agent.sock")
		if err == nil {
			c.Close()
		}
		return err == nil
	}, func() string { return podsState(ctx, "signet-system") })
	if d := time.Since(readyAt); d > time.Second {
		t.Errorf("the server's volume showed the new socket %v after the agent was ready, want within a second", d)
	}
	// The server's own Workload API stream comes back through it: the new
	// agent audits a fetch by the server's pod.
	var agentLog string
	wait(t, time.Minute, "the server fetching from the restarted agent", func() bool {
		agentLog, _ = env.Node.PodLog("signet-system", newAgent.Name, string(newAgent.UID), "agent")
		return strings.Contains(agentLog, "k8s:pod-uid:"+string(server.UID))
	}, func() string { return podsState(ctx, ns) + "\nthe new agent's log:\n" + agentLog })
	// And a new pod mounts through the new registration.
	runClient(t, ns, "client-after-restart", serverAddr)

	// Pods deleted while the agent restarts: no mount is left behind.
	must(t, kube.CoreV1().Pods("signet-system").Delete(ctx, newAgent.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}))
	must(t, kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{}))
	waitAgent(t, newAgent.UID)
	root := env.Node.RootDir()
	// The kubelet retries the unpublish; the restarted agent also sweeps
	// mounts of pods gone for 30 s.
	wait(t, 90*time.Second, "no socket volume left mounted", func() bool { return len(csiMounts(t, root)) == 0 },
		func() string { return fmt.Sprint(csiMounts(t, root)) })
}

// runClient runs a client pod against the server and checks what the
// server's AccessPolicy let it do.
func runClient(t *testing.T, ns, name, serverAddr string) {
	t.Helper()
	ctx := context.Background()
	client, err := env.Cluster.Client.CoreV1().Pods(ns).Create(ctx, nodeenv.RestrictedPod(ns, name, "client", "localhost/shop-grpc-client:e2e",
		"-addr", serverAddr, "-server-id", "spiffe://example.org/ns/"+ns+"/sa/server"), metav1.CreateOptions{})
	must(t, err)
	var clientLog string
	wait(t, time.Minute, "the client's calls", func() bool {
		clientLog, _ = env.Node.PodLog(ns, name, string(client.UID), "main")
		return strings.Contains(clientLog, "Health/List")
	}, func() string { return clientLog + podsState(ctx, ns) })
	for _, want := range []string{"(spiffe://example.org/ns/" + ns + "/sa/client): Health/Check -> SERVING", "Health/List -> PermissionDenied"} {
		if !strings.Contains(clientLog, want) {
			t.Errorf("client %s's log lacks %q:\n%s", name, want, clientLog)
		}
	}
}

// waitAgent waits for the DaemonSet's agent pod, other than the one of
// UID old, to be ready, and returns it.
func waitAgent(t *testing.T, old types.UID) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	var ready *corev1.Pod
	wait(t, 3*time.Minute, "the agent DaemonSet's pod ready", func() bool {
		pods, err := env.Cluster.Client.CoreV1().Pods("signet-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		if err != nil {
			return false
		}
		for i, p := range pods.Items {
			if p.UID == old || p.DeletionTimestamp != nil {
				continue
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					ready = &pods.Items[i]
					return true
				}
			}
		}
		return false
	}, func() string { return podsState(ctx, "signet-system") })
	return ready
}

// csiMounts lists the mounts of CSI volumes under the kubelet's pods
// directory.
func csiMounts(t *testing.T, kubeletRoot string) []string {
	t.Helper()
	mounts, err := csi.ReadMounts()
	must(t, err)
	var out []string
	for _, m := range mounts {
		if strings.HasPrefix(m.MountPoint, kubeletRoot+"/pods/") && strings.Contains(m.MountPoint, "/kubernetes.io~csi/") {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// uninstall removes what deployAndRun installed, and waits for Signet's
// pods to be gone, so that the next install starts clean.
func uninstall(t *testing.T, ns string) {
	ctx := context.Background()
	kube := env.Cluster.Client
	adm := kube.AdmissionregistrationV1()
	adm.MutatingWebhookConfigurations().Delete(ctx, "signet", metav1.DeleteOptions{})
	adm.ValidatingWebhookConfigurations().Delete(ctx, "signet", metav1.DeleteOptions{})
	adm.ValidatingAdmissionPolicyBindings().Delete(ctx, "signet-trafficprofiles", metav1.DeleteOptions{})
	adm.ValidatingAdmissionPolicies().Delete(ctx, "signet-trafficprofiles", metav1.DeleteOptions{})
	kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{})
	kube.AppsV1().DaemonSets("signet-system").Delete(ctx, "signet-agent", metav1.DeleteOptions{})
	kube.AppsV1().Deployments("signet-system").Delete(ctx, "signet-ca", metav1.DeleteOptions{})
	kube.StorageV1().CSIDrivers().Delete(ctx, "csi.signet.dev", metav1.DeleteOptions{})
	// The CA's ClusterTrustBundle is cluster-scoped: it outlives the
	// namespace (docs/pod-certificates.md).
	kube.CertificatesV1().ClusterTrustBundles().DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: podcert.CANamespaceLabel + "=signet-system"})
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=signet"}
	wait(t, 2*time.Minute, "Signet's pods gone", func() bool {
		kube.CoreV1().Pods("signet-system").DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, sel)
		pods, err := kube.CoreV1().Pods("signet-system").List(ctx, sel)
		rest, err2 := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil && err2 == nil && len(pods.Items) == 0 && len(rest.Items) == 0
	}, func() string { return podsState(ctx, "signet-system") })
}

func wait(t *testing.T, d time.Duration, what string, ok func() bool, state func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\n%s", what, state())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func podsState(ctx context.Context, ns string) string {
	pods, err := env.Cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b bytes.Buffer
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "%s: %s %+v\n", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
		for _, c := range p.Status.ContainerStatuses {
			log, _ := env.Node.PodLog(ns, p.Name, string(p.UID), c.Name)
			var keep []string
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, "workload.") || strings.Contains(l, "error") || strings.Contains(l, "refuse") || strings.Contains(l, "WARN") {
					keep = append(keep, l)
				}
			}
			if len(keep) > 15 {
				keep = keep[len(keep)-15:]
			}
			log = strings.Join(keep, "\n")
			fmt.Fprintf(&b, "  log %s:\n%s\n", c.Name, log)
		}
	}
	return b.String()
}

var schemaAccessPolicies = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "accesspolicies"}
