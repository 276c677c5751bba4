// Package webhook is Signet's admission control, served by signet-ca: it
// injects the agent's socket into pods of namespaces that ask for it, and
// refuses pods that would reach the agent's socket directory by a hostPath
// of their own, pods that borrow the agent's service account, and
// IdentityRules whose templates could leave the trust domain or enter
// signet/.
package webhook

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/signet-id/signet/ca/accesspolicy"
	"github.com/signet-id/signet/ca/clusterrevocation"
	"github.com/signet-id/signet/ca/identityrule"
	"github.com/signet-id/signet/internal/signetid"
)

// Labels and names of the contract with users.
const (
	// InjectLabel on a namespace asks for the socket in its pods.
	InjectLabel = "signet.dev/inject"
	// VolumeName is the injected volume.
	VolumeName = "signet-agent-socket"
)

// How the socket is injected.
const (
	// SocketVolumeCSI injects a CSI inline volume of the agent's driver,
	// which Pod Security's baseline and restricted levels allow.
	SocketVolumeCSI = "csi"
	// SocketVolumeHostPath injects a hostPath volume of the socket
	// directory, for clusters without CSI; only the privileged level
	// allows it.
	SocketVolumeHostPath = "hostPath"
)

// Config configures the admission handlers.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// SocketDir is the agent's socket directory on the host, e.g. /run/signet;
	// pods see the socket at the same path.
	SocketDir string
	// SocketVolume is how the socket is injected: SocketVolumeCSI (the
	// default) or SocketVolumeHostPath.
	SocketVolume string
	// CSIDriver is the agent's CSI driver; if empty, signetid.CSIDriver.
	CSIDriver string
	// ProtectedDirs are more directories of the agent on the hosts that
	// no pod may reach by hostPath (the CSI plugin's socket directory).
	ProtectedDirs []string
	// AgentServiceAccounts ("namespace/name"), every account that node
	// attestation accepts, may be used only by pods of the agent DaemonSet
	// AgentDaemonSet (in the account's namespace).
	AgentServiceAccounts []string
	AgentDaemonSet       string
	// AgentPodCreators are the users that create the DaemonSet's pods: the
	// DaemonSet controller. A pod with the agent's service account created
	// by anyone else is refused, whatever owner reference it claims. If
	// empty, DefaultAgentPodCreators.
	AgentPodCreators []string
	// NamespaceLabels returns a namespace's labels.
	NamespaceLabels func(ns string) map[string]string
	// IsClusterAdmin reports whether a user may do anything in the
	// cluster (a SubjectAccessReview); only such users may label a
	// namespace signet.dev/cross-namespace.
	IsClusterAdmin func(user authnv1.UserInfo) (bool, error)
}

// DefaultAgentPodCreators is the DaemonSet controller as the API server
// sees it: with its own service account (kube-controller-manager
// --use-service-account-credentials, as kubeadm and most distributions run
// it) or as the controller manager itself.
var DefaultAgentPodCreators = []string{"system:serviceaccount:kube-system:daemon-set-controller", "system:kube-controller-manager"}

// Handler serves the three admission endpoints.
type Handler struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the handler: /mutate-pods, /validate-pods,
// /validate-identityrules, /validate-accesspolicies, /validate-namespaces,
// /validate-revocations.
func New(cfg Config) *Handler {
	if cfg.SocketVolume == "" {
		cfg.SocketVolume = SocketVolumeCSI
	}
	if cfg.CSIDriver == "" {
		cfg.CSIDriver = signetid.CSIDriver
	}
	h := &Handler{cfg: cfg, mux: http.NewServeMux()}
	h.mux.HandleFunc("POST /mutate-pods", h.review(h.mutatePod))
	h.mux.HandleFunc("POST /validate-pods", h.review(h.validatePod))
	h.mux.HandleFunc("POST /validate-identityrules", h.review(h.validateRule))
	h.mux.HandleFunc("POST /validate-accesspolicies", h.review(h.validatePolicy))
	h.mux.HandleFunc("POST /validate-namespaces", h.review(h.validateNamespace))
	h.mux.HandleFunc("POST /validate-revocations", h.review(h.validateRevocation))
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// maxReview bounds an AdmissionReview body.
const maxReview = 8 << 20

func (h *Handler) review(fn func(*admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxReview+1))
		if err != nil || len(body) > maxReview {
			http.Error(w, "bad request body", http.StatusBadRequest)
			return
		}
		var rev admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &rev); err != nil || rev.Request == nil {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		resp := fn(rev.Request)
		resp.UID = rev.Request.UID
		out := admissionv1.AdmissionReview{TypeMeta: rev.TypeMeta, Response: resp}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	}
}

func allow() *admissionv1.AdmissionResponse { return &admissionv1.AdmissionResponse{Allowed: true} }

func deny(format string, args ...any) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Reason: metav1.StatusReasonForbidden, Code: http.StatusForbidden,
		Message: "signet: " + fmt.Sprintf(format, args...),
	}}
}

func (h *Handler) socketPath() string { return path.Join(h.cfg.SocketDir, "agent.sock") }

// mutatePod adds the socket volume, a read-only mount at the same path in
// every container, and SPIFFE_ENDPOINT_SOCKET, for pods of namespaces
// labelled signet.dev/inject=enabled. Doing it twice changes nothing.
func (h *Handler) mutatePod(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	if h.cfg.NamespaceLabels(req.Namespace)[InjectLabel] != "enabled" {
		return allow()
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny("pod: %v", err)
	}
	var patch []map[string]any
	add := func(path string, v any) { patch = append(patch, map[string]any{"op": "add", "path": path, "value": v}) }
	hasVolume := false
	for _, v := range pod.Spec.Volumes {
		hasVolume = hasVolume || v.Name == VolumeName
	}
	if !hasVolume {
		vol := h.socketVolume()
		if len(pod.Spec.Volumes) == 0 {
			add("/spec/volumes", []corev1.Volume{vol})
		} else {
			add("/spec/volumes/-", vol)
		}
	}
	for kind, list := range map[string][]corev1.Container{"containers": pod.Spec.Containers, "initContainers": pod.Spec.InitContainers} {
		for i, c := range list {
			mounted := false
			for _, m := range c.VolumeMounts {
				mounted = mounted || m.Name == VolumeName
			}
			if !mounted {
				m := corev1.VolumeMount{Name: VolumeName, MountPath: h.cfg.SocketDir, ReadOnly: true}
				if len(c.VolumeMounts) == 0 {
					add(fmt.Sprintf("/spec/%s/%d/volumeMounts", kind, i), []corev1.VolumeMount{m})
				} else {
					add(fmt.Sprintf("/spec/%s/%d/volumeMounts/-", kind, i), m)
				}
			}
			hasEnv := false
			for _, e := range c.Env {
				hasEnv = hasEnv || e.Name == "SPIFFE_ENDPOINT_SOCKET"
			}
			if !hasEnv {
				e := corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix://" + h.socketPath()}
				if len(c.Env) == 0 {
					add(fmt.Sprintf("/spec/%s/%d/env", kind, i), []corev1.EnvVar{e})
				} else {
					add(fmt.Sprintf("/spec/%s/%d/env/-", kind, i), e)
				}
			}
		}
	}
	if len(patch) == 0 {
		return allow()
	}
	raw, err := json.Marshal(patch)
	if err != nil {
		return deny("patch: %v", err)
	}
	pt := admissionv1.PatchTypeJSONPatch
	return &admissionv1.AdmissionResponse{Allowed: true, Patch: raw, PatchType: &pt}
}

// socketVolume is the volume injected into pods.
func (h *Handler) socketVolume() corev1.Volume {
	if h.cfg.SocketVolume == SocketVolumeHostPath {
		dir := corev1.HostPathDirectory
		return corev1.Volume{Name: VolumeName, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: h.cfg.SocketDir, Type: &dir}}}
	}
	ro := true
	return corev1.Volume{Name: VolumeName, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: h.cfg.CSIDriver, ReadOnly: &ro}}}
}

// within reports whether p is dir, under it, or one of its parents, on a
// node where some directories are known by two names.
func within(p, dir string) bool {
	p, dir = canonical(p), canonical(dir)
	if p == "/" || p == dir || strings.HasPrefix(p+"/", dir+"/") {
		return true
	}
	// A parent of any name of dir: /var holds /run/signet as
	// /var/run/signet.
	for _, name := range names(dir) {
		if strings.HasPrefix(name+"/", p+"/") {
			return true
		}
	}
	return false
}

// names are the spellings of a canonical path through the aliases.
func names(p string) []string {
	out := []string{p}
	for _, a := range aliases {
		if p == a[1] || strings.HasPrefix(p, a[1]+"/") {
			out = append(out, a[0]+p[len(a[1]):])
		}
	}
	return out
}

// aliases are directories that Linux distributions link to another: the
// kubelet follows the link, so a hostPath through either name reaches the
// same place. The webhook cannot look at the node's filesystem; a hostPath
// through a link of the node's own making is left to Pod Security (see
// docs/run-on-kubernetes.md).
var aliases = [][2]string{{"/var/run", "/run"}, {"/var/lock", "/run/lock"}}

// canonical cleans p and writes an alias as the directory it links to
// (/var/run/x as /run/x).
func canonical(p string) string {
	p = path.Clean("/" + p)
	for _, a := range aliases {
		if p == a[0] || strings.HasPrefix(p, a[0]+"/") {
			p = a[1] + p[len(a[0]):]
		}
	}
	return p
}

// validatePod refuses pods that reach the socket directory by a hostPath
// other than the injected one, pods that use an agent's service account
// without being the agent DaemonSet's, and ephemeral containers (kubectl
// debug, the pods/ephemeralcontainers subresource) that would write to the
// socket directory or run with an agent's account.
func (h *Handler) validatePod(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny("pod: %v", err)
	}
	if h.isAgentAccount(req.Namespace, pod.Spec.ServiceAccountName) {
		account := req.Namespace + "/" + pod.Spec.ServiceAccountName
		isAgent := false
		for _, o := range pod.OwnerReferences {
			if o.Kind == "DaemonSet" && o.Name == h.cfg.AgentDaemonSet && o.Controller != nil && *o.Controller {
				isAgent = true
			}
		}
		if !isAgent {
			return deny("the service account %s belongs to the signet-agent DaemonSet; pod %s may not use it", account, pod.Name)
		}
		// An owner reference is only a claim; who creates the pod is what
		// the API server authenticated.
		if req.Operation == admissionv1.Create && !slices.Contains(h.agentPodCreators(), req.UserInfo.Username) {
			return deny("pods with the service account %s are created by the DaemonSet controller only (%s), not by %s",
				account, strings.Join(h.agentPodCreators(), ", "), req.UserInfo.Username)
		}
		// A debugging container in the agent's pod would hold the agent's
		// credentials and its view of every process on the node.
		if len(pod.Spec.EphemeralContainers) > 0 {
			return deny("pod %s runs with the agent's service account %s; ephemeral containers may not be added to it", pod.Name, account)
		}
		return allow()
	}
	injected := h.cfg.NamespaceLabels(req.Namespace)[InjectLabel] == "enabled"
	for _, v := range pod.Spec.Volumes {
		if v.CSI != nil && v.CSI.Driver == h.cfg.CSIDriver {
			if v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
				return deny("volume %q of driver %s must set readOnly: true: the agent's socket is only ever mounted read-only", v.Name, h.cfg.CSIDriver)
			}
			if c, ok := writableMount(&pod, v.Name); ok {
				return deny("container %q mounts the Signet agent's socket (volume %q) writable; it may be mounted read-only only", c, v.Name)
			}
		}
		if v.HostPath == nil {
			continue
		}
		if link, ok := magicLink(v.HostPath.Path); ok {
			return deny("volume %q mounts hostPath %s, which goes through %s, a link that reaches any directory of the host (the Signet agent's socket directory %s too)",
				v.Name, v.HostPath.Path, link, h.cfg.SocketDir)
		}
		if !within(v.HostPath.Path, h.cfg.SocketDir) {
			for _, dir := range h.cfg.ProtectedDirs {
				if within(v.HostPath.Path, dir) {
					return deny("volume %q mounts hostPath %s, which reaches %s, a directory of the Signet agent", v.Name, v.HostPath.Path, dir)
				}
			}
			continue
		}
		// The injected hostPath volume: in hostPath mode, or on a pod
		// created before the switch to CSI (a pod's volumes never change,
		// so an update keeps what its create was allowed).
		hostPathOK := h.cfg.SocketVolume == SocketVolumeHostPath || req.Operation == admissionv1.Update
		if injected && hostPathOK && v.Name == VolumeName && canonical(v.HostPath.Path) == canonical(h.cfg.SocketDir) {
			if c, ok := writableMount(&pod, v.Name); ok {
				return deny("container %q mounts the Signet agent's socket directory (volume %q) writable; it may be mounted read-only only", c, v.Name)
			}
			continue
		}
		return deny("volume %q mounts hostPath %s, which reaches the Signet agent's socket directory %s; use a csi volume of driver %s (readOnly: true), or label the namespace %s=enabled to have it injected",
			v.Name, v.HostPath.Path, h.cfg.SocketDir, h.cfg.CSIDriver, InjectLabel)
	}
	return allow()
}

// magicLink reports whether p goes through one of the kernel's links
// that resolve to another process's view of the filesystem
// (/proc/<pid>/root, /proc/self/cwd, /proc/<pid>/fd/<n>, /dev/fd/<n>...):
// the kubelet resolves a hostPath as root on the host, so through them a
// hostPath reaches any directory whatever its spelling.
func magicLink(p string) (string, bool) {
	parts := strings.Split(strings.TrimPrefix(path.Clean("/"+p), "/"), "/")
	if len(parts) >= 2 && parts[0] == "dev" && (parts[1] == "fd" || parts[1] == "stdin" || parts[1] == "stdout" || parts[1] == "stderr") {
		return "/dev/" + parts[1], true
	}
	if len(parts) < 3 || parts[0] != "proc" {
		return "", false
	}
	// /proc/<pid>/..., /proc/<pid>/task/<tid>/..., /proc/self, /proc/thread-self
	rest := parts[2:]
	if len(rest) >= 3 && rest[0] == "task" {
		rest = rest[2:]
	}
	switch rest[0] {
	case "root", "cwd", "fd", "map_files", "exe", "ns":
		return "/proc/" + parts[1] + "/" + rest[0], true
	}
	return "", false
}

// isAgentAccount reports whether namespace/name is one of the agents'
// service accounts.
func (h *Handler) isAgentAccount(namespace, name string) bool {
	return slices.Contains(h.cfg.AgentServiceAccounts, namespace+"/"+name)
}

func (h *Handler) agentPodCreators() []string {
	if len(h.cfg.AgentPodCreators) > 0 {
		return h.cfg.AgentPodCreators
	}
	return DefaultAgentPodCreators
}

// writableMount returns a container (ephemeral ones included) that mounts
// volume without readOnly.
func writableMount(pod *corev1.Pod, volume string) (string, bool) {
	for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers, ephemeral(pod)} {
		for _, c := range list {
			for _, m := range c.VolumeMounts {
				if m.Name == volume && !m.ReadOnly {
					return c.Name, true
				}
			}
		}
	}
	return "", false
}

func ephemeral(pod *corev1.Pod) []corev1.Container {
	var out []corev1.Container
	for _, e := range pod.Spec.EphemeralContainers {
		out = append(out, corev1.Container(e.EphemeralContainerCommon))
	}
	return out
}

// validateRule refuses IdentityRules the CA would refuse.
func (h *Handler) validateRule(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	var rule struct {
		Spec struct {
			SPIFFEIDTemplate string   `json:"spiffeIDTemplate"`
			DNSNameTemplates []string `json:"dnsNameTemplates"`
			AllowPodMetadata bool     `json:"allowPodMetadata"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(req.Object.Raw, &rule); err != nil {
		return deny("IdentityRule: %v", err)
	}
	_, err := identityrule.Compile(h.cfg.TrustDomain, identityrule.Spec{
		SPIFFEIDTemplate: rule.Spec.SPIFFEIDTemplate, DNSNameTemplates: rule.Spec.DNSNameTemplates, AllowPodMetadata: rule.Spec.AllowPodMetadata,
	})
	if err != nil {
		return deny("IdentityRule %s: %v", req.Name, err)
	}
	return allow()
}

// validatePolicy refuses AccessPolicies that target servers of other
// namespaces, or allow peers of other namespaces where no cluster admin
// allowed it.
func (h *Handler) validatePolicy(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(req.Object.Raw); err != nil {
		return deny("AccessPolicy: %v", err)
	}
	u.SetNamespace(req.Namespace)
	p, err := accesspolicy.FromObject(&u)
	if err == nil {
		cross := h.cfg.NamespaceLabels(req.Namespace)[accesspolicy.CrossNamespaceLabel] == "allowed"
		err = accesspolicy.CheckNamespaced(h.cfg.TrustDomain, req.Namespace, cross, p)
	}
	if err != nil {
		return deny("AccessPolicy %s/%s: %v", req.Namespace, req.Name, err)
	}
	return allow()
}

// validateRevocation refuses Revocation objects the CA would ignore (a
// time in the future, an ID that is no SPIFFE ID, an agent_id of no
// agent), so that the operator learns at once.
func (h *Handler) validateRevocation(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(req.Object.Raw); err != nil {
		return deny("Revocation: %v", err)
	}
	if err := clusterrevocation.Check(&u, time.Now()); err != nil {
		return deny("Revocation %s: %v", req.Name, err)
	}
	return allow()
}

// validateNamespace lets only cluster admins set the cross-namespace label.
func (h *Handler) validateNamespace(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	label := func(raw []byte) (string, bool) {
		var ns corev1.Namespace
		if len(raw) == 0 || json.Unmarshal(raw, &ns) != nil {
			return "", false
		}
		v, ok := ns.Labels[accesspolicy.CrossNamespaceLabel]
		return v, ok
	}
	newV, newOK := label(req.Object.Raw)
	oldV, oldOK := label(req.OldObject.Raw)
	if !newOK || (oldOK && oldV == newV) {
		return allow() // unset, removed or unchanged
	}
	admin, err := h.cfg.IsClusterAdmin(req.UserInfo)
	if err != nil {
		return deny("cannot check whether %s is a cluster admin: %v", req.UserInfo.Username, err)
	}
	if !admin {
		return deny("only cluster admins may set the label %s on namespace %s", accesspolicy.CrossNamespaceLabel, req.Name)
	}
	return allow()
}
