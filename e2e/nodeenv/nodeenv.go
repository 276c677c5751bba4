// Package nodeenv runs Signet on the real test node for the packages that
// need one (e2e/node, e2e/attack): the control plane and the node of
// e2e/testenv, the CRDs and default rule of deploy/, and signet-ca and
// signet-agent as processes, the agent attesting through PSAT and asking
// the real kubelet. Only one node can run on a machine at a time, so make
// test runs these packages one after the other.
package nodeenv

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/e2e/testenv"
)

// CSIDriver is the CSI driver of the agent that runs as a process: a
// name of its own, so that the agent DaemonSet of TestDeployment
// (csi.signet.dev) can register beside it on the same kubelet.
const CSIDriver = "csi-e2e.signet.dev"

// Socket volumes a workload pod can reach the agent through.
const (
	// ViaHostPath: a hostPath volume, on the host's network (the tests of
	// attestation that predate the pod network).
	ViaHostPath = "hostPath"
	// ViaHostPathPodNet: a hostPath volume, on the pod network, with the
	// security context of ViaCSI (only the volume differs).
	ViaHostPathPodNet = "hostPath-podnet"
	// ViaCSI: the agent's CSI volume, a restricted pod on the pod network.
	ViaCSI = "csi"
)

// WorkloadImage is the image of e2e/node/workload, which fetches its SVID
// through the Workload API and prints it as a JSON line.
const WorkloadImage = "localhost/signet-e2e/workload:1"

// Env is a running node with Signet on it.
type Env struct {
	// Dir holds everything of the run; Bin the binaries of cmd/... and the
	// workload.
	Dir, Bin string
	Cluster  *testenv.Cluster
	Node     *testenv.Node
	Signet   *Signet
}

// Main runs a test package's tests on a node it starts for them, with
// env set, and returns the exit code for os.Exit. Without the node the
// package fails; it never skips.
func Main(m *testing.M, env **Env, ready func(*Env) error) int {
	// Short: containerd's socket path must fit in a sockaddr.
	dir, err := os.MkdirTemp("", "sn")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	e, err := Start(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer e.Stop()
	*env = e
	if ready != nil {
		if err := ready(e); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return m.Run()
}

// Start builds Signet's binaries, starts the control plane, the node and
// Signet under dir. A short dir: containerd's socket path must fit in a
// sockaddr.
func Start(dir string) (*Env, error) {
	e := &Env{Dir: dir, Bin: filepath.Join(dir, "bin")}
	// Other users may pass through (to the binaries and the agent's
	// socket), not list it; the data directories are the CA's and the
	// agent's own.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	out, err := exec.Command("go", "build", "-o", e.Bin+"/", "github.com/signet-id/signet/cmd/...").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("build: %v\n%s", err, out)
	}
	// Tests run these binaries as other users too.
	os.Chmod(e.Bin, 0o755)
	if err := testenv.BuildStatic("github.com/signet-id/signet/e2e/node/workload", filepath.Join(e.Bin, "workload")); err != nil {
		return nil, fmt.Errorf("build workload: %w", err)
	}
	if e.Cluster, err = testenv.Start(filepath.Join(dir, "c")); err != nil {
		return nil, fmt.Errorf("start the control plane: %w", err)
	}
	if e.Node, err = testenv.StartNode(e.Cluster, filepath.Join(dir, "n")); err != nil {
		e.Stop()
		return nil, fmt.Errorf("start the node: %w", err)
	}
	if err := e.Node.ImportImage(WorkloadImage, filepath.Join(e.Bin, "workload")); err != nil {
		e.Stop()
		return nil, fmt.Errorf("import the workload image: %w", err)
	}
	if err := e.setupCluster(context.Background()); err != nil {
		e.Stop()
		return nil, fmt.Errorf("set up the cluster: %w", err)
	}
	if e.Signet, err = e.startSignet(); err != nil {
		e.Stop()
		return nil, fmt.Errorf("start signet: %w", err)
	}
	return e, nil
}

// Stop stops Signet, the node and the control plane.
func (e *Env) Stop() {
	if e.Signet != nil {
		e.Signet.stop()
	}
	if e.Node != nil {
		e.Node.Stop()
	}
	if e.Cluster != nil {
		e.Cluster.Stop()
	}
}

// setupCluster installs what deploy/ holds (the CRD, the default rule) and
// what the agent's DaemonSet would have: its namespace, service account,
// the RBAC to read its kubelet's pods, and a pod of its own.
func (e *Env) setupCluster(ctx context.Context) error {
	c := e.Cluster.Client
	dyn, err := dynamic.NewForConfig(e.Cluster.Config)
	if err != nil {
		return err
	}
	for _, crd := range []string{"identityrules", "accesspolicies", "revocations", "trafficprofiles", "federatedtrustdomains"} {
		if err := applyFile(ctx, dyn, "../../deploy/base/crds/"+crd+".signet.dev.yaml"); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for applyFile(ctx, dyn, "../../deploy/base/rules/default.yaml") != nil {
		if time.Now().After(deadline) {
			return applyFile(ctx, dyn, "../../deploy/base/rules/default.yaml")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, ns := range []string{"signet-system", "signet-proc", "demo"} {
		if err := e.Namespace(ctx, ns); err != nil {
			return err
		}
	}
	if err := e.ServiceAccount(ctx, "signet-system", "signet-agent"); err != nil {
		return err
	}
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "signet-agent"},
		// The agent reads its own kubelet's pods, nothing else.
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/pods"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "signet-agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "signet-agent"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "signet-system", Name: "signet-agent"}},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err = c.CoreV1().Pods("signet-system").Create(ctx, Pod("signet-system", "signet-agent", "signet-agent", testenv.SandboxImage, nil), metav1.CreateOptions{})
	if err != nil {
		return err
	}
	// The CSIDriver object of the process agent's plugin, as
	// deploy/base/csidriver.yaml has it for csi.signet.dev.
	raw, err := os.ReadFile("../../deploy/base/csidriver.yaml")
	if err != nil {
		return err
	}
	var driver storagev1.CSIDriver
	if err := yaml.UnmarshalStrict(raw, &driver); err != nil {
		return err
	}
	driver.Name = CSIDriver
	_, err = c.StorageV1().CSIDrivers().Create(ctx, &driver, metav1.CreateOptions{})
	return err
}

func applyFile(ctx context.Context, dyn dynamic.Interface, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: obj}
	gv, err := schema.ParseGroupVersion(u.GetAPIVersion())
	if err != nil {
		return err
	}
	_, err = dyn.Resource(gv.WithResource(strings.ToLower(u.GetKind())+"s")).Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// Namespace creates a namespace unless it exists.
func (e *Env) Namespace(ctx context.Context, name string) error {
	return e.Cluster.EnsureNamespace(ctx, name)
}

// ServiceAccount creates a service account unless it exists.
func (e *Env) ServiceAccount(ctx context.Context, ns, name string) error {
	return e.Cluster.EnsureServiceAccount(ctx, ns, name)
}

// RestrictedPod is a pod bound to the test node on the pod network,
// written to Pod Security's restricted level: non-root, no privilege
// escalation, no capabilities, seccomp RuntimeDefault.
func RestrictedPod(ns, name, sa, image string, args ...string) *corev1.Pod {
	no, yes, uid := false, true, int64(65532)
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
		NodeName: testenv.NodeName, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
		RestartPolicy: corev1.RestartPolicyNever, TerminationGracePeriodSeconds: new(int64),
		SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: &yes, RunAsUser: &uid,
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		Containers: []corev1.Container{{Name: "main", Image: image, ImagePullPolicy: corev1.PullNever, Args: args,
			SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &no, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
	}}
}

// CSIPod is a RestrictedPod that reaches the agent's socket through a CSI
// inline volume of driver at /run/signet.
func CSIPod(ns, name, sa, image, driver string) *corev1.Pod {
	ro := true
	p := RestrictedPod(ns, name, sa, image)
	p.Spec.RestartPolicy = ""
	p.Spec.Volumes = []corev1.Volume{{Name: "signet", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: driver, ReadOnly: &ro}}}}
	c := &p.Spec.Containers[0]
	c.VolumeMounts = []corev1.VolumeMount{{Name: "signet", MountPath: "/run/signet", ReadOnly: true}}
	c.Env = []corev1.EnvVar{{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/signet/agent.sock"}}
	return p
}

// Pod is a hostNetwork pod bound to the test node; with socketDir set it
// mounts the agent's socket directory and points the Workload API
// clients at it.
func Pod(ns, name, sa, image string, socketDir *string) *corev1.Pod {
	no := false
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			NodeName: testenv.NodeName, HostNetwork: true, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
			TerminationGracePeriodSeconds: new(int64),
			Containers:                    []corev1.Container{{Name: "main", Image: image, ImagePullPolicy: corev1.PullNever}},
		},
	}
	if socketDir != nil {
		p.Spec.Volumes = []corev1.Volume{{Name: "signet", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: *socketDir}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "signet", MountPath: "/run/signet", ReadOnly: true}}
		p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/signet/agent.sock"}}
	}
	return p
}

// Signet is signet-ca and signet-agent, running as processes.
type Signet struct {
	CAData, AgentData, SocketDir string
	// CSISocket is the agent's CSI plugin socket (driver CSIDriver).
	CSISocket string
	CA, Agent *exec.Cmd
	// CAAddr is the CA's agent API address.
	CAAddr string
}

func (e *Env) startSignet() (*Signet, error) {
	ctx := context.Background()
	s := &Signet{
		CAData: filepath.Join(e.Dir, "ca"), AgentData: filepath.Join(e.Dir, "agent"), SocketDir: filepath.Join(e.Dir, "sock"),
		CSISocket: filepath.Join(e.Dir, "csi", "csi.sock"),
	}
	for _, d := range []string{s.CAData, s.AgentData, s.SocketDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	caAddr, caHealth := testenv.FreeAddr(), testenv.FreeAddr()
	s.CAAddr = caAddr
	s.CA = exec.Command(filepath.Join(e.Bin, "signet-ca"), "--trust-domain", "example.org", "--data-dir", s.CAData,
		"--listen", caAddr, "--health-addr", caHealth, "--kubeconfig", e.Cluster.Kubeconfig, "--cluster-name", "e2e",
		// Its Secret, Lease and bundle ConfigMap live apart from those of
		// the CA that TestDeployment installs from deploy/.
		"--agent-service-account", "signet-system/signet-agent", "--namespace", "signet-proc",
		// Pod certificates, refreshed as early as the API allows, so that
		// a test sees the kubelet refresh one.
		"--pod-certificates", "--pod-certificate-refresh", "10m")
	if err := StartLogged(s.CA, filepath.Join(e.Dir, "ca.log")); err != nil {
		return nil, err
	}
	if err := WaitReady("http://"+caHealth+"/readyz", s.CA); err != nil {
		s.stop()
		return nil, fmt.Errorf("signet-ca: %w (log %s)", err, filepath.Join(e.Dir, "ca.log"))
	}
	bundle := filepath.Join(e.Dir, "bundle.pem")
	out, err := exec.Command(filepath.Join(e.Bin, "signet"), "--admin-socket", filepath.Join(s.CAData, "admin.sock"), "bundle", "show").Output()
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("signet bundle show: %w", err)
	}
	if err := os.WriteFile(bundle, out, 0o644); err != nil {
		return nil, err
	}
	// Two tokens of the agent's pod: one with the CA's audience for node
	// attestation, one for the API server, which the kubelet accepts.
	agentPod, err := e.Cluster.Client.CoreV1().Pods("signet-system").Get(ctx, "signet-agent", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	caToken, kubeletToken := filepath.Join(e.Dir, "ca.token"), filepath.Join(e.Dir, "kubelet.token")
	for file, aud := range map[string][]string{caToken: {"signet-ca"}, kubeletToken: nil} {
		tok, err := e.Cluster.BoundToken(ctx, agentPod, aud, 0)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(file, []byte(tok), 0o600); err != nil {
			return nil, err
		}
	}
	agentHealth := testenv.FreeAddr()
	s.Agent = exec.Command(filepath.Join(e.Bin, "signet-agent"), "--trust-domain", "example.org", "--ca-address", caAddr,
		"--data-dir", s.AgentData, "--trust-bundle", bundle, "--socket", filepath.Join(s.SocketDir, "agent.sock"),
		"--health-addr", agentHealth, "--node-attestor", "k8s_psat", "--token-file", caToken, "--node-name", testenv.NodeName,
		"--kubelet-url", testenv.KubeletURL, "--kubelet-ca", e.Cluster.CAFile, "--kubelet-token-file", kubeletToken,
		"--kubelet-root-dir", e.Node.RootDir(), "--csi-socket", s.CSISocket, "--csi-driver", CSIDriver)
	if err := StartLogged(s.Agent, filepath.Join(e.Dir, "agent.log")); err != nil {
		s.stop()
		return nil, err
	}
	if err := WaitReady("http://"+agentHealth+"/readyz", s.Agent); err != nil {
		s.stop()
		log, _ := os.ReadFile(filepath.Join(e.Dir, "agent.log"))
		return nil, fmt.Errorf("signet-agent: %w\n%s", err, log)
	}
	return s, nil
}

// StartLogged starts cmd with its output in logPath; it dies with the test.
func StartLogged(cmd *exec.Cmd, logPath string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd.Start()
}

// WaitReady waits until url answers 200, or cmd exits.
func WaitReady(url string, cmd *exec.Cmd) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if cmd.ProcessState != nil {
			return fmt.Errorf("exited")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready at %s in time", url)
}

func (s *Signet) stop() {
	for _, c := range []*exec.Cmd{s.Agent, s.CA} {
		if c != nil && c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { c.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				c.Process.Kill()
			}
		}
	}
}

// WorkloadResult is the workload's JSON line, with the kubelet's time for
// it.
type WorkloadResult struct {
	SPIFFEID  string   `json:"spiffe_id"`
	SPIFFEIDs []string `json:"spiffe_ids"`
	MS        float64  `json:"ms"`
	Attempts  int      `json:"attempts"`
	Errors    []string `json:"errors"`
	LoggedAt  time.Time
}

// RunWorkload creates a workload pod on the host network with the socket
// directory by hostPath, and waits for its result line.
func (e *Env) RunWorkload(t testing.TB, ns, name, sa string) (*corev1.Pod, WorkloadResult, time.Time) {
	t.Helper()
	return e.RunWorkloadVia(t, ns, name, sa, ViaHostPath)
}

// RunWorkloadVia creates a workload pod that reaches the socket via
// ViaHostPath, ViaHostPathPodNet or ViaCSI, and waits for its result line.
func (e *Env) RunWorkloadVia(t testing.TB, ns, name, sa, via string) (*corev1.Pod, WorkloadResult, time.Time) {
	t.Helper()
	ctx := context.Background()
	if err := e.Namespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := e.ServiceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	spec := Pod(ns, name, sa, WorkloadImage, &e.Signet.SocketDir)
	switch via {
	case ViaCSI:
		spec = CSIPod(ns, name, sa, WorkloadImage, CSIDriver)
	case ViaHostPathPodNet:
		// The CSI pod with a hostPath instead: only the volume differs.
		spec = CSIPod(ns, name, sa, WorkloadImage, CSIDriver)
		spec.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: e.Signet.SocketDir}}
	}
	p, err := e.Cluster.Client.CoreV1().Pods(ns).Create(ctx, spec, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		log, _ := e.Node.PodLog(ns, name, string(p.UID), "main")
		for _, l := range StdoutLines(log) {
			var r WorkloadResult
			if json.Unmarshal([]byte(l.Text), &r) != nil {
				continue
			}
			r.LoggedAt = l.At
			return p, r, created
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, _ := e.Cluster.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	t.Fatalf("no result from workload %s/%s; pod status %+v", ns, name, got.Status)
	return nil, WorkloadResult{}, created
}

// LogLine is one line a container wrote to its standard output, with the
// time the runtime logged it.
type LogLine struct {
	At   time.Time
	Text string
}

// StdoutLines reads the standard output lines of a container log in the
// CRI format ("<time> stdout F <text>"); other lines are left out.
func StdoutLines(log string) []LogLine {
	var out []LogLine
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		if len(f) != 4 || f[1] != "stdout" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			continue
		}
		out = append(out, LogLine{At: at, Text: f[3]})
	}
	return out
}

// DeletePod deletes p at once.
func (e *Env) DeletePod(t testing.TB, p *corev1.Pod) { t.Helper(); e.Cluster.DeletePod(t, p) }

// FindAudit waits for an agent audit record that match accepts (they are
// written asynchronously).
func (e *Env) FindAudit(t testing.TB, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		f, err := os.Open(filepath.Join(e.Signet.AgentData, "audit.log"))
		if err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var rec map[string]any
				if json.Unmarshal(sc.Bytes(), &rec) == nil && match(rec) {
					f.Close()
					return rec
				}
			}
			f.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no matching agent audit record")
	return nil
}

// Strs reads a JSON list of strings.
func Strs(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
