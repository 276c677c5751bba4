package testenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeRunsPod starts the control plane and the node and runs a real
// container on it.
func TestNodeRunsPod(t *testing.T) {
	dir, err := os.MkdirTemp("", "te")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	c, err := Start(filepath.Join(dir, "c"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	n, err := StartNode(c, filepath.Join(dir, "n"))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "te"}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().ServiceAccounts("te").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sleeper", Namespace: "te"},
		Spec: corev1.PodSpec{
			NodeName: NodeName, HostNetwork: true, AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{Name: "main", Image: SandboxImage, ImagePullPolicy: corev1.PullNever}},
		},
	}
	start := time.Now()
	if _, err := c.Client.CoreV1().Pods("te").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		p, err := c.Client.CoreV1().Pods("te").Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].ContainerID != "" {
			t.Logf("pod running after %s: %s", time.Since(start), p.Status.ContainerStatuses[0].ContainerID)
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("pod not running: %+v", p.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
