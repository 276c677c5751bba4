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

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
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
	for _, crd := range []string{"identityrules", "accesspolicies", "revocations", "trafficprofiles", "federatedtrustdomains"} {
		if err := apply(ctx, "../../deploy/base/crds/"+crd+".signet.dev.yaml"); err != nil {
			return err
		}
	}
	crd := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	deadline := time.Now().Add(30 * time.Second)
	for _, name := range []string{"identityrules.signet.dev", "accesspolicies.signet.dev", "revocations.signet.dev", "trafficprofiles.signet.dev", "federatedtrustdomains.signet.dev"} {
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
	return cluster.EnsureNamespace(ctx, name)
}

func createSA(ctx context.Context, ns, name string) error {
	return cluster.EnsureServiceAccount(ctx, ns, name)
}

func createNode(t *testing.T, name string) { t.Helper(); cluster.CreateNode(t, name) }

func createPod(t *testing.T, ns, name, sa, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	return cluster.CreatePod(t, ns, name, sa, node, labels)
}

func deletePod(t *testing.T, p *corev1.Pod) { t.Helper(); cluster.DeletePod(t, p) }

func podToken(t *testing.T, p *corev1.Pod, aud string) string {
	t.Helper()
	return cluster.PodToken(t, p, aud)
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
	testenv.Eventually(t, timeout, what, ok)
}
