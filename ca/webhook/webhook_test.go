package webhook

import (
	"encoding/json"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func handler() *Handler {
	return New(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), SocketDir: "/run/signet",
		AgentServiceAccount: "signet-system/signet-agent", AgentDaemonSet: "signet-agent",
		NamespaceLabels: func(ns string) map[string]string {
			if ns == "inject" {
				return map[string]string{InjectLabel: "enabled"}
			}
			return nil
		}})
}

func request(t *testing.T, ns string, pod *corev1.Pod) *admissionv1.AdmissionRequest {
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &admissionv1.AdmissionRequest{Namespace: ns, Object: runtime.RawExtension{Raw: raw}}
}

func TestWithin(t *testing.T) {
	for p, want := range map[string]bool{"/run/signet": true, "/run/signet/": true, "/run": true, "/": true, "/run/signet/x": true,
		"/run/signetx": false, "/var/run": false, "/run/other": false, "/run/../run/signet": true} {
		if got := within(p, "/run/signet"); got != want {
			t.Errorf("within(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestMutateIsIdempotentAndScoped(t *testing.T) {
	h := handler()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}, {Name: "b", Env: []corev1.EnvVar{{Name: "X", Value: "1"}}}}}}
	if r := h.mutatePod(request(t, "plain", pod)); !r.Allowed || r.Patch != nil {
		t.Fatalf("a namespace without the label was patched: %+v", r)
	}
	r := h.mutatePod(request(t, "inject", pod))
	var ops []map[string]any
	if err := json.Unmarshal(r.Patch, &ops); err != nil || len(ops) != 5 { // volume, 2 mounts, 2 env
		t.Fatalf("patch %s: %v", r.Patch, err)
	}
	// The same pod as injected: nothing more to add.
	dir := corev1.HostPathDirectory
	pod.Spec.Volumes = []corev1.Volume{{Name: VolumeName, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/signet", Type: &dir}}}}
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].VolumeMounts = []corev1.VolumeMount{{Name: VolumeName, MountPath: "/run/signet", ReadOnly: true}}
		pod.Spec.Containers[i].Env = append(pod.Spec.Containers[i].Env, corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/signet/agent.sock"})
	}
	if r := h.mutatePod(request(t, "inject", pod)); r.Patch != nil {
		t.Fatalf("second injection patched again: %s", r.Patch)
	}
	if r := h.validatePod(request(t, "inject", pod)); !r.Allowed {
		t.Fatalf("the injected form was refused: %v", r.Result.Message)
	}
	// The same volume, writable: refused.
	pod.Spec.Containers[1].VolumeMounts[0].ReadOnly = false
	if r := h.validatePod(request(t, "inject", pod)); r.Allowed {
		t.Fatal("a writable mount of the socket directory was allowed")
	}
	// The injected form in a namespace that did not ask for it: refused.
	pod.Spec.Containers[1].VolumeMounts[0].ReadOnly = true
	if r := h.validatePod(request(t, "plain", pod)); r.Allowed {
		t.Fatal("the socket directory was allowed outside an injected namespace")
	}
}

func TestAgentAccount(t *testing.T) {
	h := handler()
	yes := true
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-x",
		OwnerReferences: []metav1.OwnerReference{{Kind: "DaemonSet", Name: "signet-agent", Controller: &yes}}},
		Spec: corev1.PodSpec{ServiceAccountName: "signet-agent", Volumes: []corev1.Volume{{Name: "s", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/signet"}}}}}}
	if r := h.validatePod(request(t, "signet-system", pod)); !r.Allowed {
		t.Fatalf("the agent DaemonSet's pod was refused: %v", r.Result.Message)
	}
	pod.OwnerReferences[0].Name = "other"
	if r := h.validatePod(request(t, "signet-system", pod)); r.Allowed {
		t.Fatal("another owner's pod used the agent's account")
	}
}
