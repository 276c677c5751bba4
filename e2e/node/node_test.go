// Package node runs Signet on a real node: a real kubelet with containerd
// and runc (e2e/testenv), signet-ca and signet-agent as processes, and a
// workload container whose real process is attested through the kubelet's
// /pods and its /proc/<pid>/cgroup. Only one node can run on a machine, so
// make test runs this package on its own.
package node

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/e2e/testenv"
)

var env struct {
	dir     string
	bin     string
	cluster *testenv.Cluster
	node    *testenv.Node
	signet  *signetProcs
}

const workloadImage = "localhost/signet-e2e/workload:1"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// Short: containerd's socket path must fit in a sockaddr.
	dir, err := os.MkdirTemp("", "sn")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	env.dir = dir
	fail := func(what string, err error) int {
		// Fail, never skip: these tests need the real node.
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		return 1
	}
	env.bin = filepath.Join(dir, "bin")
	out, err := exec.Command("go", "build", "-o", env.bin+"/", "github.com/signet-id/signet/cmd/...").CombinedOutput()
	if err != nil {
		return fail("build", fmt.Errorf("%v\n%s", err, out))
	}
	if err := testenv.BuildStatic("github.com/signet-id/signet/e2e/node/workload", filepath.Join(env.bin, "workload")); err != nil {
		return fail("build workload", err)
	}
	if env.cluster, err = testenv.Start(filepath.Join(dir, "c")); err != nil {
		return fail("start the control plane", err)
	}
	defer env.cluster.Stop()
	if env.node, err = testenv.StartNode(env.cluster, filepath.Join(dir, "n")); err != nil {
		return fail("start the node", err)
	}
	defer env.node.Stop()
	if err := env.node.ImportImage(workloadImage, filepath.Join(env.bin, "workload")); err != nil {
		return fail("import the workload image", err)
	}
	if err := setupCluster(context.Background()); err != nil {
		return fail("set up the cluster", err)
	}
	if env.signet, err = startSignet(); err != nil {
		return fail("start signet", err)
	}
	defer env.signet.stop()
	return m.Run()
}

// setupCluster installs what deploy/ holds (the CRD, the default rule) and
// what the agent's DaemonSet would have: its namespace, service account,
// the RBAC to read its kubelet's pods, and a pod of its own.
func setupCluster(ctx context.Context) error {
	c := env.cluster.Client
	dyn, err := dynamic.NewForConfig(env.cluster.Config)
	if err != nil {
		return err
	}
	for _, crd := range []string{"identityrules", "accesspolicies"} {
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
		if err := namespace(ctx, ns); err != nil {
			return err
		}
	}
	if err := serviceAccount(ctx, "signet-system", "signet-agent"); err != nil {
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
	_, err = c.CoreV1().Pods("signet-system").Create(ctx, pod("signet-system", "signet-agent", "signet-agent", testenv.SandboxImage, nil), metav1.CreateOptions{})
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

func namespace(ctx context.Context, name string) error {
	_, err := env.cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func serviceAccount(ctx context.Context, ns, name string) error {
	_, err := env.cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// pod is a hostNetwork pod bound to the test node; with socketDir set it
// mounts the agent's socket directory and points the Workload API
// clients at it.
func pod(ns, name, sa, image string, socketDir *string) *corev1.Pod {
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

// signetProcs are signet-ca and signet-agent, running as processes.
type signetProcs struct {
	caData, agentData, socketDir string
	ca, agent                    *exec.Cmd
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startSignet() (*signetProcs, error) {
	ctx := context.Background()
	s := &signetProcs{
		caData: filepath.Join(env.dir, "ca"), agentData: filepath.Join(env.dir, "agent"), socketDir: filepath.Join(env.dir, "sock"),
	}
	for _, d := range []string{s.caData, s.agentData, s.socketDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	caAddr, caHealth := freeAddr(), freeAddr()
	s.ca = exec.Command(filepath.Join(env.bin, "signet-ca"), "--trust-domain", "example.org", "--data-dir", s.caData,
		"--listen", caAddr, "--health-addr", caHealth, "--kubeconfig", env.cluster.Kubeconfig, "--cluster-name", "e2e",
		// Its Secret, Lease and bundle ConfigMap live apart from those of
		// the CA that TestDeployment installs from deploy/.
		"--agent-service-account", "signet-system/signet-agent", "--namespace", "signet-proc")
	if err := startLogged(s.ca, filepath.Join(env.dir, "ca.log")); err != nil {
		return nil, err
	}
	if err := waitReady("http://"+caHealth+"/readyz", s.ca); err != nil {
		s.stop()
		return nil, fmt.Errorf("signet-ca: %w (log %s)", err, filepath.Join(env.dir, "ca.log"))
	}
	bundle := filepath.Join(env.dir, "bundle.pem")
	out, err := exec.Command(filepath.Join(env.bin, "signet"), "--admin-socket", filepath.Join(s.caData, "admin.sock"), "bundle", "show").Output()
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("signet bundle show: %w", err)
	}
	if err := os.WriteFile(bundle, out, 0o644); err != nil {
		return nil, err
	}
	// Two tokens of the agent's pod: one with the CA's audience for node
	// attestation, one for the API server, which the kubelet accepts.
	agentPod, err := env.cluster.Client.CoreV1().Pods("signet-system").Get(ctx, "signet-agent", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	caToken, kubeletToken := filepath.Join(env.dir, "ca.token"), filepath.Join(env.dir, "kubelet.token")
	for file, aud := range map[string][]string{caToken: {"signet-ca"}, kubeletToken: nil} {
		tr, err := env.cluster.Client.CoreV1().ServiceAccounts("signet-system").CreateToken(ctx, "signet-agent", &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: aud, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agentPod.Name, UID: agentPod.UID}},
		}, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(file, []byte(tr.Status.Token), 0o600); err != nil {
			return nil, err
		}
	}
	agentHealth := freeAddr()
	s.agent = exec.Command(filepath.Join(env.bin, "signet-agent"), "--trust-domain", "example.org", "--ca-address", caAddr,
		"--data-dir", s.agentData, "--trust-bundle", bundle, "--socket", filepath.Join(s.socketDir, "agent.sock"),
		"--health-addr", agentHealth, "--node-attestor", "k8s_psat", "--token-file", caToken, "--node-name", testenv.NodeName,
		"--kubelet-url", testenv.KubeletURL, "--kubelet-ca", env.cluster.CAFile, "--kubelet-token-file", kubeletToken)
	if err := startLogged(s.agent, filepath.Join(env.dir, "agent.log")); err != nil {
		s.stop()
		return nil, err
	}
	if err := waitReady("http://"+agentHealth+"/readyz", s.agent); err != nil {
		s.stop()
		log, _ := os.ReadFile(filepath.Join(env.dir, "agent.log"))
		return nil, fmt.Errorf("signet-agent: %w\n%s", err, log)
	}
	return s, nil
}

func startLogged(cmd *exec.Cmd, logPath string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd.Start()
}

func waitReady(url string, cmd *exec.Cmd) error {
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

func (s *signetProcs) stop() {
	for _, c := range []*exec.Cmd{s.agent, s.ca} {
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

// workloadResult is the workload's JSON line, with the kubelet's time for
// it.
type workloadResult struct {
	SPIFFEID string   `json:"spiffe_id"`
	MS       float64  `json:"ms"`
	Attempts int      `json:"attempts"`
	Errors   []string `json:"errors"`
	LoggedAt time.Time
}

// runWorkload creates a workload pod and waits for its result line.
func runWorkload(t testing.TB, ns, name, sa string) (*corev1.Pod, workloadResult, time.Time) {
	t.Helper()
	ctx := context.Background()
	if err := namespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := serviceAccount(ctx, ns, sa); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	p, err := env.cluster.Client.CoreV1().Pods(ns).Create(ctx, pod(ns, name, sa, workloadImage, &env.signet.socketDir), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		log, _ := env.node.PodLog(ns, name, string(p.UID), "main")
		sc := bufio.NewScanner(strings.NewReader(log))
		for sc.Scan() {
			// "<time> stdout F <json>"
			f := strings.SplitN(sc.Text(), " ", 4)
			if len(f) != 4 || f[1] != "stdout" {
				continue
			}
			var r workloadResult
			if json.Unmarshal([]byte(f[3]), &r) != nil {
				continue
			}
			if r.LoggedAt, err = time.Parse(time.RFC3339Nano, f[0]); err != nil {
				t.Fatalf("log time %q: %v", f[0], err)
			}
			return p, r, created
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, _ := env.cluster.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	t.Fatalf("no result from workload %s/%s; pod status %+v", ns, name, got.Status)
	return nil, workloadResult{}, created
}

func deletePod(t testing.TB, p *corev1.Pod) {
	zero := int64(0)
	if err := env.cluster.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}
