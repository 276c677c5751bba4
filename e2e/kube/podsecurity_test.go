package kube

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/signet-id/signet/e2e/nodeenv"
)

// TestPodSecurityLevels: the real API server's Pod Security admission
// judges the pods of the shipped manifests as docs/pod-security.md says:
// the CA passes restricted; the agent needs privileged (baseline refuses
// it); a workload with the socket as the webhook injects it, as a CSI
// volume, passes restricted, and the hostPath form does not pass
// baseline.
func TestPodSecurityLevels(t *testing.T) {
	ctx := context.Background()
	for _, level := range []string{"restricted", "baseline", "privileged"} {
		ns := "psa-" + level
		if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"pod-security.kubernetes.io/enforce": level}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, sa := range []string{"default", "signet-ca", "signet-agent"} {
			if err := cluster.EnsureServiceAccount(ctx, ns, sa); err != nil {
				t.Fatal(err)
			}
		}
	}
	templates := map[string]corev1.PodSpec{}
	for _, u := range baseObjects(t) {
		if u.GetKind() != "Deployment" && u.GetKind() != "DaemonSet" {
			continue
		}
		var w struct {
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &w); err != nil {
			t.Fatal(err)
		}
		templates[u.GetName()] = w.Spec.Template.Spec
	}
	// A restricted pod with the socket as the webhook injects it.
	workload := nodeenv.CSIPod("", "w", "default", "w", "csi.signet.dev").Spec
	workload.NodeName = ""
	hostPathWorkload := *workload.DeepCopy()
	hostPathWorkload.Volumes = []corev1.Volume{{Name: "signet", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/signet"}}}}
	for _, c := range []struct {
		name    string
		spec    corev1.PodSpec
		level   string
		allowed bool
	}{
		{"signet-ca", templates["signet-ca"], "restricted", true},
		{"signet-agent", templates["signet-agent"], "baseline", false},
		{"signet-agent", templates["signet-agent"], "privileged", true},
		{"csi-workload", workload, "restricted", true},
		{"hostpath-workload", hostPathWorkload, "baseline", false},
	} {
		if len(c.spec.Containers) == 0 {
			t.Fatalf("no pod template for %s in deploy/base", c.name)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: c.name}, Spec: c.spec}
		_, err := cluster.Client.CoreV1().Pods("psa-"+c.level).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		switch {
		case c.allowed && err != nil:
			t.Errorf("%s under %s: %v", c.name, c.level, err)
		case !c.allowed && (err == nil || !strings.Contains(err.Error(), "violates PodSecurity")):
			t.Errorf("%s under %s: %v, want a PodSecurity violation", c.name, c.level, err)
		}
	}
}
