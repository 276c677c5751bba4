package webhook

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// handler injects the socket as it does by default, through the CSI
// driver; hostPathHandler as a hostPath volume.
func handler() *Handler { return newHandler("") }

func hostPathHandler() *Handler { return newHandler(SocketVolumeHostPath) }

func newHandler(mode string) *Handler {
	return New(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), SocketDir: "/run/signet",
		SocketVolume: mode, ProtectedDirs: []string{"/run/signet-csi"},
		AgentServiceAccounts: []string{"signet-system/signet-agent", "pool-b/signet-agent-b"}, AgentDaemonSet: "signet-agent",
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
		"/run/signetx": false, "/var/run": true, "/var/run/signet": true, "/var//run/signet/": true, "/var/run/other": false,
		"/var": true, "/var/lock": false, "/run/other": false, "/run/../run/signet": true, "run/signet": true} {
		if got := within(p, "/run/signet"); got != want {
			t.Errorf("within(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestMutateIsIdempotentAndScoped(t *testing.T) {
	h := hostPathHandler()
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
	create := func(user string) *admissionv1.AdmissionRequest {
		req := request(t, "signet-system", pod)
		req.Operation = admissionv1.Create
		req.UserInfo.Username = user
		return req
	}
	for _, user := range DefaultAgentPodCreators {
		if r := h.validatePod(create(user)); !r.Allowed {
			t.Fatalf("the agent DaemonSet's pod created by %s was refused: %v", user, r.Result.Message)
		}
	}
	// The owner reference is only a claim: someone who may create pods in
	// the namespace cannot pass as the DaemonSet.
	if r := h.validatePod(create("alice")); r.Allowed || !strings.Contains(r.Result.Message, "DaemonSet controller") {
		t.Fatalf("a pod claiming the DaemonSet as owner, created by a user: %+v", r.Result)
	}
	// Updates (labels, finalizers) come from anyone allowed to make them;
	// the account cannot change after creation.
	update := request(t, "signet-system", pod)
	update.Operation, update.UserInfo.Username = admissionv1.Update, "alice"
	if r := h.validatePod(update); !r.Allowed {
		t.Fatalf("an update of the agent's pod was refused: %v", r.Result.Message)
	}
	pod.OwnerReferences[0].Name = "other"
	if r := h.validatePod(create(DefaultAgentPodCreators[0])); r.Allowed {
		t.Fatal("another owner's pod used the agent's account")
	}
	// Configured creators replace the defaults.
	custom := New(Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), SocketDir: "/run/signet",
		AgentServiceAccounts: []string{"signet-system/signet-agent"}, AgentDaemonSet: "signet-agent", AgentPodCreators: []string{"ds-operator"},
		NamespaceLabels: func(string) map[string]string { return nil }})
	pod.OwnerReferences[0].Name = "signet-agent"
	if r := custom.validatePod(create("ds-operator")); !r.Allowed {
		t.Fatalf("a configured creator was refused: %v", r.Result.Message)
	}
	if r := custom.validatePod(create(DefaultAgentPodCreators[0])); r.Allowed {
		t.Fatal("a default creator passed although creators were configured")
	}
}

// TestEveryAgentAccount: each account that node attestation accepts is
// kept to the agent DaemonSet, not only the first.
func TestEveryAgentAccount(t *testing.T) {
	h := handler()
	for _, ns := range []string{"signet-system", "pool-b"} {
		sa := map[string]string{"signet-system": "signet-agent", "pool-b": "signet-agent-b"}[ns]
		req := request(t, ns, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "impostor"}, Spec: corev1.PodSpec{ServiceAccountName: sa}})
		req.Operation = admissionv1.Create
		if r := h.validatePod(req); r.Allowed {
			t.Errorf("a pod with the agent account %s/%s was allowed", ns, sa)
		}
	}
}

// TestEphemeralContainers: a debugging container may not mount the
// injected socket directory writable, nor join an agent's pod.
func TestEphemeralContainers(t *testing.T) {
	h := hostPathHandler()
	dir := corev1.HostPathDirectory
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{
		Volumes:    []corev1.Volume{{Name: VolumeName, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/signet", Type: &dir}}}},
		Containers: []corev1.Container{{Name: "main", VolumeMounts: []corev1.VolumeMount{{Name: VolumeName, MountPath: "/run/signet", ReadOnly: true}}}},
		EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger",
			VolumeMounts: []corev1.VolumeMount{{Name: VolumeName, MountPath: "/x"}}}}},
	}}
	req := request(t, "inject", pod)
	req.Operation, req.SubResource = admissionv1.Update, "ephemeralcontainers"
	if r := h.validatePod(req); r.Allowed || !strings.Contains(r.Result.Message, `container "debugger"`) {
		t.Fatalf("a writable ephemeral mount of the socket: %+v", r.Result)
	}
	pod.Spec.EphemeralContainers[0].VolumeMounts[0].ReadOnly = true
	if r := h.validatePod(request(t, "inject", pod)); !r.Allowed {
		t.Fatalf("a read-only ephemeral mount was refused: %v", r.Result.Message)
	}
	yes := true
	agent := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-x", OwnerReferences: []metav1.OwnerReference{{Kind: "DaemonSet", Name: "signet-agent", Controller: &yes}}},
		Spec: corev1.PodSpec{ServiceAccountName: "signet-agent", EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger"}}}}}
	req = request(t, "signet-system", agent)
	req.Operation, req.SubResource = admissionv1.Update, "ephemeralcontainers"
	if r := h.validatePod(req); r.Allowed {
		t.Fatal("an ephemeral container joined the agent's pod")
	}
}

// TestMutateCSI: by default the socket comes in a read-only CSI inline
// volume of the agent's driver, which Pod Security's restricted level
// allows; the hostPath form is refused then, except on updates of pods
// created before the switch.
func TestMutateCSI(t *testing.T) {
	h := handler()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}
	r := h.mutatePod(request(t, "inject", pod))
	var ops []struct {
		Op, Path string
		Value    json.RawMessage
	}
	if err := json.Unmarshal(r.Patch, &ops); err != nil || len(ops) != 3 {
		t.Fatalf("patch %s: %v", r.Patch, err)
	}
	var vols []corev1.Volume
	if err := json.Unmarshal(ops[0].Value, &vols); err != nil || len(vols) != 1 {
		t.Fatalf("volume patch %s: %v", ops[0].Value, err)
	}
	v := vols[0]
	if v.Name != VolumeName || v.HostPath != nil || v.CSI == nil || v.CSI.Driver != "csi.signet.dev" || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
		t.Fatalf("injected volume %+v", v)
	}
	pod.Spec.Volumes = vols
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: VolumeName, MountPath: "/run/signet", ReadOnly: true}}
	if r := h.validatePod(request(t, "inject", pod)); !r.Allowed {
		t.Fatalf("the injected CSI volume was refused: %v", r.Result.Message)
	}
	// Any namespace may ask for the socket by a CSI volume of its own.
	if r := h.validatePod(request(t, "plain", pod)); !r.Allowed {
		t.Fatalf("a CSI volume outside an injected namespace was refused: %v", r.Result.Message)
	}
	// A container that mounts it writable is refused, as in hostPath mode.
	pod.Spec.Containers[0].VolumeMounts[0].ReadOnly = false
	if r := h.validatePod(request(t, "plain", pod)); r.Allowed || !strings.Contains(r.Result.Message, "writable") {
		t.Fatalf("a writable mount of the CSI volume: %+v", r.Result)
	}
	pod.Spec.Containers[0].VolumeMounts[0].ReadOnly = true
	// Unless it asks for it writable: the driver would refuse it later,
	// with the pod stuck; refuse it now, with the reason.
	no := false
	pod.Spec.Volumes[0].CSI.ReadOnly = &no
	if r := h.validatePod(request(t, "plain", pod)); r.Allowed || !strings.Contains(r.Result.Message, "readOnly: true") {
		t.Fatalf("a writable CSI volume of the driver: %+v", r.Result)
	}
	// The hostPath form, even injected-looking, is refused in CSI mode...
	dir := corev1.HostPathDirectory
	pod.Spec.Volumes = []corev1.Volume{{Name: VolumeName, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/signet", Type: &dir}}}}
	req := request(t, "inject", pod)
	req.Operation = admissionv1.Create
	if r := h.validatePod(req); r.Allowed || !strings.Contains(r.Result.Message, "use a csi volume") {
		t.Fatalf("a hostPath socket volume in CSI mode: %+v", r.Result)
	}
	// ...but a pod that has it from before keeps being updatable.
	req.Operation = admissionv1.Update
	if r := h.validatePod(req); !r.Allowed {
		t.Fatalf("an update of a pod injected by hostPath before: %v", r.Result.Message)
	}
}

// TestHostPathAliases: every spelling of a path that reaches the socket
// directory, or the CSI plugin's, is refused: parents, aliases of /run,
// and the kernel's links that reach any directory.
func TestHostPathAliases(t *testing.T) {
	for _, h := range []*Handler{handler(), hostPathHandler()} {
		for _, p := range []string{
			"/run/signet", "/run/signet/agent.sock", "/var/run/signet", "/var/run", "/run", "/", "/var", "//run//signet/",
			"/run/signet-csi", "/var/run/signet-csi/csi.sock",
			"/proc/1/root", "/proc/1/root/run/signet", "/proc/self/root/var/run", "/proc/thread-self/cwd", "/proc/42/task/42/root/run",
			"/proc/1/fd/3", "/dev/fd/3", "/proc/1/map_files/x", "/proc/1/../1/root/run/signet",
		} {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{
				Volumes: []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: p}}}}}}
			if r := h.validatePod(request(t, "inject", pod)); r.Allowed {
				t.Errorf("mode %s: hostPath %s allowed", h.cfg.SocketVolume, p)
			}
		}
		for _, p := range []string{"/proc", "/proc/meminfo", "/sys", "/var/log", "/run/other", "/run/signetx", "/var/lib/kubelet/plugins_registry", "/dev"} {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{
				Volumes: []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: p}}}}}}
			if r := h.validatePod(request(t, "plain", pod)); !r.Allowed {
				t.Errorf("mode %s: hostPath %s refused: %s", h.cfg.SocketVolume, p, r.Result.Message)
			}
		}
	}
}
