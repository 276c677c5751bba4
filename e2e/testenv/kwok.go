package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KwokAnnotation marks the nodes kwok manages (and the taint it asks pods
// on them to tolerate).
const KwokAnnotation = "kwok.x-k8s.io/node"

// StartKwok runs kwok (built by build.sh) against the cluster: it manages
// the nodes annotated KwokAnnotation=fake, which become Ready and renew a
// Lease like a kubelet's, and their pods, which become Running (with an
// IP), complete, and go when deleted. No container runs anywhere. kwok
// stops with the cluster.
func (c *Cluster) StartKwok() error {
	bin := BinDir()
	if _, err := os.Stat(filepath.Join(bin, "kwok")); err != nil {
		if err := Build(); err != nil {
			return err
		}
	}
	stages, err := filepath.Glob(filepath.Join(bin, "kwok-stages", "*.yaml"))
	if err != nil || len(stages) == 0 {
		return fmt.Errorf("testenv: no kwok stages in %s (run e2e/testenv/build.sh)", filepath.Join(bin, "kwok-stages"))
	}
	p, err := startProcess(c.Dir, "kwok", filepath.Join(bin, "kwok"), "--kubeconfig", c.Kubeconfig,
		"--manage-nodes-with-annotation-selector", KwokAnnotation+"=fake", "--cidr", "10.128.0.0/9", "--node-ip", "127.0.0.1",
		"--node-lease-duration-seconds", "40", "-v", "ERROR", "--config", strings.Join(stages, ","))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, p)
	return nil
}

// CreateKwokNode registers a node that kwok manages.
func (c *Cluster) CreateKwokNode(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, Annotations: map[string]string{KwokAnnotation: "fake"}, Labels: map[string]string{"type": "kwok"},
	}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// KwokPod is a pod for a kwok node: bound to it, tolerating its taint,
// with no service-account token mounted.
func KwokPod(ns, name, sa, node string, labels map[string]string) *corev1.Pod {
	no := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
			Containers:  []corev1.Container{{Name: "main", Image: "localhost/none:1"}},
			Tolerations: []corev1.Toleration{{Key: KwokAnnotation, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
		},
	}
}
