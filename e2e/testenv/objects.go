package testenv

import (
	"context"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EnsureNamespace creates a namespace unless it exists.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// EnsureServiceAccount creates a service account unless it exists.
func (c *Cluster) EnsureServiceAccount(ctx context.Context, ns, name string) error {
	_, err := c.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// CreateNode registers a Node object (no kubelet behind it: pods bound to
// it are stored, never run).
func (c *Cluster) CreateNode(t testing.TB, name string) {
	t.Helper()
	_, err := c.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// CreatePod creates a pod bound to node (with its namespace and service
// account, if missing) and returns it.
func (c *Cluster) CreatePod(t testing.TB, ns, name, sa, node string, labels map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	no := false
	p, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
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

// DeletePod deletes p at once.
func (c *Cluster) DeletePod(t testing.TB, p *corev1.Pod) {
	t.Helper()
	zero := int64(0)
	err := c.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// PodToken asks the API server for a token of the pod's service account,
// bound to the pod, with audience aud.
func (c *Cluster) PodToken(t testing.TB, p *corev1.Pod, aud string) string {
	t.Helper()
	tok, err := c.BoundToken(context.Background(), p, []string{aud}, 0)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// BoundToken asks the API server for a token of the pod's service
// account, bound to the pod, with audiences aud (the API server's if
// none), valid for expiration (the API server's default if zero).
func (c *Cluster) BoundToken(ctx context.Context, p *corev1.Pod, aud []string, expiration time.Duration) (string, error) {
	spec := authnv1.TokenRequestSpec{Audiences: aud,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}}
	if expiration > 0 {
		secs := int64(expiration / time.Second)
		spec.ExpirationSeconds = &secs
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, p.Spec.ServiceAccountName, &authnv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// Eventually waits for ok, asking every 10 ms, and fails the test after
// timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
