// Package kube tests Signet's Kubernetes mode against a real
// kube-apiserver and etcd (e2e/testenv): PSAT node attestation,
// identities derived from pods and IdentityRules, and CA replicas.
package kube

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/testenv"
	"github.com/signet-id/signet/internal/systest"
)

var (
	cluster *testenv.Cluster
	dyn     dynamic.Interface
)

const (
	agentNS  = "signet-system"
	agentSA  = "signet-agent"
	clusterN = "test"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "signet-kube")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster, err = testenv.Start(dir)
	if err != nil {
		// Fail, never skip: every test here needs the API server.
		fmt.Fprintln(os.Stderr, "cannot start the test cluster:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := 1
	if err = setup(); err != nil {
		fmt.Fprintln(os.Stderr, "setting up the test cluster:", err)
	} else {
		code = m.Run()
	}
	cluster.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// setup installs the IdentityRule CRD and the default rule from deploy/,
// as a user would, and the agents' namespace and service account.
func setup() error {
	var err error
	if dyn, err = dynamic.NewForConfig(cluster.Config); err != nil {
		return err
	}
	ctx := context.Background()
	for _, crd := range []string{"identityrules", "accesspolicies"} {
		if err := apply(ctx, "../../deploy/base/crds/"+crd+".signet.dev.yaml"); err != nil {
			return err
		}
	}
	crd := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range []string{"identityrules.signet.dev", "accesspolicies.signet.dev"} {
		for {
			u, err := dyn.Resource(crd).Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(u) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not established: %v", name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// The API server takes a moment to serve a new CRD's resource.
	for {
		err := apply(ctx, "../../deploy/base/rules/default.yaml")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := createNamespace(ctx, agentNS); err != nil {
		return err
	}
	return createSA(ctx, agentNS, agentSA)
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// apply creates every object of a YAML file (CRDs and IdentityRules).
func apply(ctx context.Context, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, doc := range bytes.Split(raw, []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		gvr, err := resourceOf(u)
		if err != nil {
			return err
		}
		if _, err := dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: create %s: %w", path, u.GetName(), err)
		}
	}
	return nil
}

func resourceOf(u *unstructured.Unstructured) (schema.GroupVersionResource, error) {
	gv, err := schema.ParseGroupVersion(u.GetAPIVersion())
	if err != nil {
		return schema.GroupVersionResource{}, err
	}
	return gv.WithResource(strings.ToLower(u.GetKind()) + "s"), nil
}

func createNamespace(ctx context.Context, name string) error {
	_, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func createSA(ctx context.Context, ns, name string) error {
	_, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// createNode registers a Node object (no kubelet behind it: pods bound to
// it are stored, never run).
func createNode(t *testing.T, name string) {
	t.Helper()
	_, err := cluster.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// createPod creates a pod bound to node and returns it.
func createPod(t *testing.T, ns, name, sa, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if err := createNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := createSA(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	no := false
	p, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{Name: "main", Image: "localhost/none:1"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func deletePod(t *testing.T, p *corev1.Pod) {
	t.Helper()
	zero := int64(0)
	err := cluster.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// podToken asks the API server for a token of the pod's service account,
// bound to the pod, with audience aud.
func podToken(t *testing.T, p *corev1.Pod, aud string) string {
	t.Helper()
	tr, err := cluster.Client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(context.Background(), p.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:      []string{aud},
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// startCA starts a CA in Kubernetes mode whose Secret and Lease live in
// namespace ns.
func startCA(t *testing.T, ns, identity string, opts ...func(*server.Config)) *systest.CA {
	t.Helper()
	if err := createNamespace(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return systest.StartCA(t, append([]func(*server.Config){func(c *server.Config) {
		c.Kube = &server.KubeConfig{
			Kubeconfig: cluster.Kubeconfig, ClusterName: clusterN, AgentServiceAccounts: []string{agentNS + "/" + agentSA},
			Namespace: ns, Identity: identity,
		}
		c.RotateInterval = time.Second
	}}, opts...)...)
}

// agentPod creates the agent's pod on node.
func agentPod(t *testing.T, node string) *corev1.Pod {
	t.Helper()
	createNode(t, node)
	return createPod(t, agentNS, "agent-"+node+"-"+fmt.Sprint(time.Now().UnixNano()%100000), agentSA, node, nil)
}

func eventually(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
