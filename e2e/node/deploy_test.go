package node

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/signet-id/signet/e2e/testenv"
)

// overlay is the test overlay: only what this one-node cluster without a
// pod network needs. Every pod on host networking, one CA replica, the
// images built here (never pulled), the CA reaching the API server and the
// agent reaching the CA and the kubelet on 127.0.0.1, the API server
// calling the webhook at https://localhost:8443, and the CA tolerating
// the node's not-ready taint (no CNI).
func overlay(t *testing.T, objs []*unstructured.Unstructured, apiPort string) {
	t.Helper()
	for _, u := range objs {
		switch u.GetKind() + "/" + u.GetName() {
		case "Deployment/signet-ca":
			must(t, unstructured.SetNestedField(u.Object, int64(1), "spec", "replicas"))
			spec := podSpec(t, u)
			spec["hostNetwork"] = true
			spec["tolerations"] = []any{map[string]any{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}}
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

// TestDeployment installs Signet from deploy/base through the test overlay
// on the real node, with the scheduler and the controllers running: the
// DaemonSet's agent attests through PSAT; two workload pods of a namespace
// labelled for injection are admitted through the webhook, get their SVIDs
// through the injected socket, and the client calls the server through the
// SDK under an AccessPolicy.
func TestDeployment(t *testing.T) {
	ctx := context.Background()
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

	// kustomize build deploy/base | test overlay | server-side apply.
	kz := filepath.Join(testenv.BinDir(), "kustomize")
	out, err := exec.Command(kz, "build", "../../deploy/base").Output()
	if err != nil {
		t.Fatalf("kustomize: %v", err)
	}
	objs, err := testenv.ParseYAML(out)
	must(t, err)
	_, apiPort, _ := strings.Cut(strings.TrimPrefix(env.Cluster.URL, "https://"), ":")
	overlay(t, objs, apiPort)
	must(t, env.Cluster.Apply(ctx, objs, false))
	dyn, err := dynamic.NewForConfig(env.Cluster.Config)
	must(t, err)
	t.Cleanup(func() {
		adm := env.Cluster.Client.AdmissionregistrationV1()
		adm.MutatingWebhookConfigurations().Delete(ctx, "signet", metav1.DeleteOptions{})
		adm.ValidatingWebhookConfigurations().Delete(ctx, "signet", metav1.DeleteOptions{})
		env.Cluster.Client.AppsV1().DaemonSets("signet-system").Delete(ctx, "signet-agent", metav1.DeleteOptions{})
		env.Cluster.Client.AppsV1().Deployments("signet-system").Delete(ctx, "signet-ca", metav1.DeleteOptions{})
		// The DaemonSet's socket directory on the host.
		os.RemoveAll("/run/signet")
	})

	// The DaemonSet's agent becomes ready: attested through PSAT.
	wait(t, 3*time.Minute, "the agent DaemonSet ready", func() bool {
		ds, err := env.Cluster.Client.AppsV1().DaemonSets("signet-system").Get(ctx, "signet-agent", metav1.GetOptions{})
		return err == nil && ds.Status.NumberReady == 1
	}, func() string { return podsState(ctx, "signet-system") })

	// Two workloads in a namespace that asks for the socket.
	const ns = "deploy-demo"
	_, err = env.Cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
		Labels: map[string]string{"signet.dev/inject": "enabled"}}}, metav1.CreateOptions{})
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
	workload := func(name, sa, image string, args ...string) *corev1.Pod {
		no := false
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
			NodeName: testenv.NodeName, HostNetwork: true, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
			RestartPolicy: corev1.RestartPolicyNever, TerminationGracePeriodSeconds: new(int64),
			Containers: []corev1.Container{{Name: "main", Image: image, ImagePullPolicy: corev1.PullNever, Args: args}}}}
	}
	var server *corev1.Pod
	wait(t, time.Minute, "the server pod admitted with the socket injected", func() bool {
		p, err := env.Cluster.Client.CoreV1().Pods(ns).Create(ctx, workload("server", "server", "localhost/shop-grpc-server:e2e", "-addr", "127.0.0.1:18444"), metav1.CreateOptions{})
		if err == nil {
			server = p
		}
		return err == nil
	}, func() string { return "" })
	if len(server.Spec.Volumes) == 0 || server.Spec.Volumes[0].Name != "signet-agent-socket" {
		t.Fatalf("the socket was not injected: %+v", server.Spec.Volumes)
	}
	wait(t, time.Minute, "the server listening", func() bool {
		log, _ := env.Node.PodLog(ns, "server", string(server.UID), "main")
		return strings.Contains(log, "listening on")
	}, func() string { return podsState(ctx, ns) + podsState(ctx, "signet-system") })
	client, err := env.Cluster.Client.CoreV1().Pods(ns).Create(ctx, workload("client", "client", "localhost/shop-grpc-client:e2e",
		"-addr", "127.0.0.1:18444", "-server-id", "spiffe://example.org/ns/"+ns+"/sa/server"), metav1.CreateOptions{})
	must(t, err)
	var clientLog string
	wait(t, time.Minute, "the client's calls", func() bool {
		clientLog, _ = env.Node.PodLog(ns, "client", string(client.UID), "main")
		return strings.Contains(clientLog, "Health/List")
	}, func() string { return clientLog })
	for _, want := range []string{"(spiffe://example.org/ns/" + ns + "/sa/client): Health/Check -> SERVING", "Health/List -> PermissionDenied"} {
		if !strings.Contains(clientLog, want) {
			t.Errorf("client log lacks %q:\n%s", want, clientLog)
		}
	}
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
