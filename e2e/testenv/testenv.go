// Package testenv runs a real Kubernetes control plane (etcd and
// kube-apiserver) on loopback for tests, and a real node (containerd and a
// kubelet) next to it. The binaries are built from the Go module proxy by
// build.sh into a cache directory (make test runs it first); Start builds
// them itself when they are missing. Tests that need the environment fail
// when it cannot start: they never skip.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Issuer is the service-account token issuer of every test cluster.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// BinDir is where build.sh puts the binaries.
func BinDir() string {
	if d := os.Getenv("SIGNET_TESTENV_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("SIGNET_TESTENV_CACHE")
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		cache = filepath.Join(base, "signet-testenv")
	}
	return filepath.Join(cache, "bin")
}

// Build runs build.sh, which builds what is missing (about ten minutes on
// two cores the first time, under a second after).
func Build() error {
	_, src, _, _ := runtime.Caller(0)
	cmd := exec.Command("bash", filepath.Join(filepath.Dir(src), "build.sh"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("testenv: build.sh: %w", err)
	}
	return nil
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	Dir string
	// URL is the API server's https address.
	URL string
	// CAFile signed the API server's and kubelet's serving certificates and
	// the admin's and node's client certificates; CAKeyFile is its key.
	CAFile, CAKeyFile string
	// SAKeyFile is the key service-account tokens are signed with: tests
	// forge tokens with it.
	SAKeyFile string
	// Kubeconfig authenticates as a cluster admin.
	Kubeconfig string
	// Config and Client act as a cluster admin.
	Config *rest.Config
	Client kubernetes.Interface

	procs []*process
}

type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
	dir  string
	args []string
}

func startProcess(dir, name string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testenv: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), log: logPath, dir: dir, args: args}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the last lines of the process's log, for error messages.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 25 {
		lines = lines[len(lines)-25:]
	}
	return strings.Join(lines, "\n")
}

func (p *process) stop() {
	if p.exited() {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// FreeAddr is a loopback address with a port free now.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Options change how Start runs the control plane.
type Options struct {
	// APIServerArgs are added to kube-apiserver's flags (for example
	// --authentication-config).
	APIServerArgs []string
}

// Start starts etcd and kube-apiserver with state in dir and waits until
// the API server is ready.
func Start(dir string) (*Cluster, error) { return StartWith(dir, Options{}) }

// StartWith is Start with options.
func StartWith(dir string, opts Options) (*Cluster, error) {
	bin := BinDir()
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			if err := Build(); err != nil {
				return nil, err
			}
			break
		}
	}
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	ca, err := newAuthority()
	if err != nil {
		return nil, err
	}
	if err := ca.save(pki); err != nil {
		return nil, err
	}
	if err := ca.issue(pki, "apiserver", leaf{cn: "kube-apiserver", server: true,
		dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)}}); err != nil {
		return nil, err
	}
	if err := writeServiceAccountKeys(pki); err != nil {
		return nil, err
	}
	tok := make([]byte, 24)
	rand.Read(tok)
	token := hex.EncodeToString(tok)
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+`,testenv-admin,testenv-admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, err
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	c := &Cluster{
		Dir: dir, URL: fmt.Sprintf("https://127.0.0.1:%d", ports[2]),
		CAFile: filepath.Join(pki, "ca.crt"), CAKeyFile: filepath.Join(pki, "ca.key"), SAKeyFile: filepath.Join(pki, "sa.key"),
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
	}
	etcd, err := startProcess(dir, "etcd", filepath.Join(bin, "etcd"),
		"--name=testenv", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=testenv="+peerURL, "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, etcd)
	api, err := startProcess(dir, "kube-apiserver", append([]string{filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[2]),
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"), "--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--client-ca-file=" + c.CAFile, "--token-auth-file=" + tokens,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + Issuer,
		"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file=" + c.SAKeyFile,
		"--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
		"--allow-privileged=true", "--profiling=false", "--cert-dir=" + filepath.Join(dir, "apiserver-certs")}, opts.APIServerArgs...)...)
	if err != nil {
		c.Stop()
		return nil, err
	}
	c.procs = append(c.procs, api)

	kc := clientcmdapi.NewConfig()
	kc.Clusters["testenv"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthority: c.CAFile}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["testenv"] = &clientcmdapi.Context{Cluster: "testenv", AuthInfo: "admin"}
	kc.CurrentContext = "testenv"
	if err := clientcmd.WriteToFile(*kc, c.Kubeconfig); err != nil {
		c.Stop()
		return nil, err
	}
	c.Config = &rest.Config{Host: c.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: c.CAFile}, QPS: 200, Burst: 400}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.waitReady(3 * time.Minute); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		for _, p := range c.procs {
			if p.exited() {
				return fmt.Errorf("testenv: %s exited during start:\n%s", p.name, p.tail())
			}
		}
		var code int
		c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).StatusCode(&code)
		if code == http.StatusOK {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New("testenv: kube-apiserver not ready in time; see " + filepath.Join(c.Dir, "kube-apiserver.log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// StopProcess stops the environment's process of this name (etcd,
// kube-apiserver, kwok) until StartProcess, for tests of faults.
func (c *Cluster) StopProcess(name string) error {
	for _, p := range c.procs {
		if p.name == name {
			p.stop()
			return nil
		}
	}
	return fmt.Errorf("testenv: no process %s", name)
}

// StartProcess starts a stopped process again, with the same arguments
// and state, and for kube-apiserver waits until it is ready.
func (c *Cluster) StartProcess(name string) error {
	for i, p := range c.procs {
		if p.name != name {
			continue
		}
		if !p.exited() {
			return fmt.Errorf("testenv: %s runs", name)
		}
		np, err := startProcess(p.dir, p.name, p.args...)
		if err != nil {
			return err
		}
		c.procs[i] = np
		if name == "kube-apiserver" {
			return c.waitReady(3 * time.Minute)
		}
		return nil
	}
	return fmt.Errorf("testenv: no process %s", name)
}

// Pids returns the process IDs of the environment's processes by name
// (etcd, kube-apiserver, kwok, ...), for measurements.
func (c *Cluster) Pids() map[string]int {
	out := map[string]int{}
	for _, p := range c.procs {
		if !p.exited() {
			out[p.name] = p.cmd.Process.Pid
		}
	}
	return out
}

// Stop stops the processes, the API server first.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	c.procs = nil
}

// StartControllers starts kube-scheduler and kube-controller-manager (the
// controllers of DaemonSets, Deployments, ReplicaSets, ServiceAccounts,
// the kube-root-ca.crt ConfigMaps, namespaces, garbage collection and node
// lifecycle, which lifts the not-ready taint once the node is Ready),
// for tests that apply workloads as users do.
func (c *Cluster) StartControllers() error {
	bin := BinDir()
	for _, b := range []string{"kube-scheduler", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			if err := Build(); err != nil {
				return err
			}
			break
		}
	}
	sched, err := startProcess(c.Dir, "kube-scheduler", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, sched)
	kcm, err := startProcess(c.Dir, "kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig, "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=true",
		"--root-ca-file="+c.CAFile,
		"--controllers=daemonset-controller,deployment-controller,replicaset-controller,serviceaccount-controller,"+
			"root-ca-certificate-publisher-controller,namespace-controller,garbage-collector-controller,node-lifecycle-controller")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kcm)
	// Ready when the service-account controller made "default" in default.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		for _, p := range []*process{sched, kcm} {
			if p.exited() {
				return fmt.Errorf("testenv: %s exited:\n%s", p.name, p.tail())
			}
		}
		if _, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: kube-controller-manager did not create the default ServiceAccount:\n%s", kcm.tail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
