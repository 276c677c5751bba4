package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeName is the name the test node registers under.
const NodeName = "signet-node"

// KubeletURL is where the test node's kubelet serves its API.
const KubeletURL = "https://127.0.0.1:10250"

// SandboxImage is the pod sandbox image the node imports at start.
const SandboxImage = "localhost/signet-testenv/pause:1"

// PodSubnet is the pod network of the test node: a Linux bridge of its
// own (PodBridge), with addresses from host-local IPAM, through Debian's
// containernetworking-plugins. Pods reach each other on it; it has no
// gateway, so nothing of the host's network changes (no forwarding, no
// NAT).
const (
	PodSubnet = "10.254.213.0/24"
	PodBridge = "signet-pods0"
)

// CNIBinDir is where Debian's containernetworking-plugins puts the
// plugins.
const CNIBinDir = "/usr/lib/cni"

// Node is a real kubelet with containerd and runc, registered with a
// Cluster. Pods run on a pod network (PodSubnet) or on the host's; the kubelet
// serves on 127.0.0.1:10250 with a certificate from the cluster's CA, and
// authenticates and authorizes callers through the API server
// (TokenReview and SubjectAccessReview), as in a real cluster. Only one node
// can run on a machine at a time: the kubelet owns the host's /kubepods
// cgroups and port 10250.
//
// Two settings matter on machines like the CI's: containerd's CRI plugin
// clamps oom_score_adj (restrict_oom_score_adj), because processes may lack
// CAP_SYS_RESOURCE to lower it; and the kubelet runs in its own mount
// namespace where the kernel tunables it insists on setting are files of
// our own, so the host's sysctls are not changed.
type Node struct {
	dir   string
	sock  string
	procs []*process
	// netns are the network namespaces that existed before the node
	// started: the others in /run/netns are its pods'.
	netns map[string]bool
}

// RootDir is the kubelet's --root-dir: its pods' volumes are under
// RootDir/pods, its plugin registration directory RootDir/plugins_registry.
func (n *Node) RootDir() string { return filepath.Join(n.dir, "kubelet") }

// StartNode starts containerd and the kubelet with state in dir (keep the
// path short: containerd's socket path must fit in 104 bytes). It needs
// root and the containerd, runc and ctr commands.
func StartNode(c *Cluster, dir string) (*Node, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("testenv: the node needs root")
	}
	for _, cmd := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "mount", "ip"} {
		if _, err := exec.LookPath(cmd); err != nil {
			return nil, fmt.Errorf("testenv: %s is not installed (make deps installs it)", cmd)
		}
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir, plugin)); err != nil {
			return nil, fmt.Errorf("testenv: the CNI plugin %s is not in %s (make deps installs containernetworking-plugins)", plugin, CNIBinDir)
		}
	}
	bin := BinDir()
	if _, err := os.Stat(filepath.Join(bin, "kubelet")); err != nil {
		if err := Build(); err != nil {
			return nil, err
		}
	}
	for _, port := range []string{"10250", "10248"} {
		if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
			conn.Close()
			return nil, fmt.Errorf("testenv: 127.0.0.1:%s is in use: is another node running?", port)
		}
	}
	n := &Node{dir: dir, sock: filepath.Join(dir, "containerd", "containerd.sock"), netns: map[string]bool{}}
	if names, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range names {
			n.netns[e.Name()] = true
		}
	}
	if len(n.sock)+len(".ttrpc") >= 104 {
		return nil, fmt.Errorf("testenv: node dir %s is too long for a unix socket path", dir)
	}
	for _, d := range []string{"pki", "containerd", "cni", "kubelet", "pod-logs", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := n.start(c); err != nil {
		n.Stop()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(c *Cluster) error {
	pki := filepath.Join(n.dir, "pki")
	ca, err := loadAuthority(filepath.Dir(c.CAFile))
	if err != nil {
		return err
	}
	if err := ca.issue(pki, "kubelet-client", leaf{cn: "system:node:" + NodeName, orgs: []string{"system:nodes"}}); err != nil {
		return err
	}
	if err := ca.issue(pki, "kubelet-serving", leaf{cn: NodeName, server: true, dns: []string{"localhost", NodeName}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		return err
	}
	// Shims put their sockets here whatever the configuration says.
	if err := os.MkdirAll("/run/containerd/s", 0o700); err != nil {
		return err
	}
	cd := filepath.Join(n.dir, "containerd")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %[5]q
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %[6]q
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = %[7]q
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %[9]q
      conf_dir = %[8]q
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), n.sock, n.sock+".ttrpc", filepath.Join(cd, "opt"),
		SandboxImage, filepath.Join(cd, "runc"), filepath.Join(n.dir, "cni"), CNIBinDir)
	if err := os.WriteFile(filepath.Join(cd, "config.toml"), []byte(config), 0o600); err != nil {
		return err
	}
	// The pod network: one bridge, no gateway (isGateway would turn on the
	// host's IP forwarding), no masquerading.
	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "signet-testenv",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": false, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "dataDir": %q}
  }]
}
`, PodBridge, PodSubnet, filepath.Join(n.dir, "cni", "ipam"))
	if err := os.WriteFile(filepath.Join(n.dir, "cni", "10-signet-testenv.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	containerd, err := startProcess(n.dir, "containerd", "containerd", "--config", filepath.Join(cd, "config.toml"))
	if err != nil {
		return err
	}
	n.procs = append(n.procs, containerd)
	deadline := time.Now().Add(30 * time.Second)
	for n.ctr("version") != nil {
		if containerd.exited() || time.Now().After(deadline) {
			return fmt.Errorf("testenv: containerd did not come up:\n%s", containerd.tail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	pause := filepath.Join(BinDir(), "signet-testenv-pause")
	if _, err := os.Stat(pause); err != nil {
		_, src, _, _ := runtime.Caller(0)
		if err := BuildStatic(filepath.Join(filepath.Dir(src), "pause"), pause); err != nil {
			return err
		}
	}
	if err := n.ImportImage(SandboxImage, pause); err != nil {
		return err
	}

	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster: {server: %q, certificate-authority: %q}
users:
- name: node
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: node
  context: {cluster: testenv, user: node}
current-context: node
`, c.URL, c.CAFile, filepath.Join(pki, "kubelet-client.crt"), filepath.Join(pki, "kubelet-client.key"))
	if err := os.WriteFile(filepath.Join(n.dir, "kubelet.kubeconfig"), []byte(kubeconfig), 0o600); err != nil {
		return err
	}
	// Webhook authentication and authorization: the kubelet asks the API
	// server about every caller's token, as in a real cluster. Results are
	// cached 10 s (denials 1 s).
	kcfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %[1]q
tlsPrivateKeyFile: %[2]q
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true, cacheTTL: 10s}
  x509: {clientCAFile: %[3]q}
authorization:
  mode: Webhook
  webhook: {cacheAuthorizedTTL: 10s, cacheUnauthorizedTTL: 1s}
containerRuntimeEndpoint: unix://%[4]s
imageServiceEndpoint: unix://%[4]s
cgroupDriver: cgroupfs
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
protectKernelDefaults: false
podLogsDir: %[5]q
resolvConf: /etc/resolv.conf
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "50Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
shutdownGracePeriod: 0s
`, filepath.Join(pki, "kubelet-serving.crt"), filepath.Join(pki, "kubelet-serving.key"), c.CAFile, n.sock, filepath.Join(n.dir, "pod-logs"))
	if err := os.WriteFile(filepath.Join(n.dir, "kubelet.yaml"), []byte(kcfg), 0o600); err != nil {
		return err
	}
	// The kubelet's root dir is an rshared mount so that the volumes it
	// mounts (projected tokens) propagate to containerd.
	root := filepath.Join(n.dir, "kubelet")
	if err := run("mount", "--bind", root, root); err != nil {
		return err
	}
	if err := run("mount", "--make-rshared", root); err != nil {
		return err
	}
	for _, d := range []string{"/var/lib/kubelet", "/var/log/containers"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var script strings.Builder
	script.WriteString("set -e\nmount --make-rprivate /proc\n")
	for _, kv := range []string{"vm/overcommit_memory=1", "vm/panic_on_oom=0", "kernel/panic=10", "kernel/panic_on_oops=1",
		"kernel/keys/root_maxkeys=1000000", "kernel/keys/root_maxbytes=25000000"} {
		k, v, _ := strings.Cut(kv, "=")
		f := filepath.Join(n.dir, "sysctl", strings.ReplaceAll(k, "/", "."))
		if err := os.WriteFile(f, []byte(v+"\n"), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&script, "mount --bind %q /proc/sys/%s\n", f, k)
	}
	script.WriteString("mount -t tmpfs -o mode=0755,size=64m signet-testenv /var/lib/kubelet\n")
	script.WriteString("mount -t tmpfs -o mode=0755,size=64m signet-testenv /var/log/containers\n")
	script.WriteString(`exec "$@"` + "\n")
	wrapper := filepath.Join(n.dir, "kubelet-ns.sh")
	if err := os.WriteFile(wrapper, []byte(script.String()), 0o755); err != nil {
		return err
	}
	kubelet, err := startProcess(n.dir, "kubelet", "unshare", "--mount", "--propagation", "unchanged", "--", "bash", wrapper,
		filepath.Join(BinDir(), "kubelet"), "--config="+filepath.Join(n.dir, "kubelet.yaml"),
		"--kubeconfig="+filepath.Join(n.dir, "kubelet.kubeconfig"), "--hostname-override="+NodeName,
		"--root-dir="+root, "--v=2")
	if err != nil {
		return err
	}
	n.procs = append(n.procs, kubelet)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	for {
		if kubelet.exited() {
			return fmt.Errorf("testenv: kubelet exited:\n%s", kubelet.tail())
		}
		resp, err := http.Get("http://127.0.0.1:10248/healthz")
		if err == nil {
			resp.Body.Close()
			if _, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{}); err == nil && resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: kubelet not healthy or node not registered in time:\n%s", kubelet.tail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func run(name string, args ...string) error {
	if b, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: %s %s: %v: %s", name, strings.Join(args, " "), err, b)
	}
	return nil
}

// Stop stops the kubelet, kills every container, stops containerd and its
// shims, unmounts what the node mounted and removes its pod cgroups.
func (n *Node) Stop() {
	for i := len(n.procs) - 1; i >= 0; i-- {
		p := n.procs[i]
		if p.name == "containerd" && !p.exited() {
			n.killContainers()
		}
		p.stop()
	}
	n.procs = nil
	n.killShims()
	n.unmount()
	n.removePodNetwork()
	for _, h := range []string{"/sys/fs/cgroup/*/kubepods", "/sys/fs/cgroup/kubepods", "/sys/fs/cgroup/unified/kubepods"} {
		dirs, _ := filepath.Glob(h)
		for _, d := range dirs {
			removeCgroupTree(d)
		}
	}
}

func (n *Node) killContainers() {
	out, _ := exec.Command("ctr", "--address", n.sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
	tasks := strings.Fields(string(out))
	for _, t := range tasks {
		n.ctr("tasks", "kill", "-s", "SIGKILL", t)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ctr", "--address", n.sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
		if len(strings.Fields(string(out))) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, t := range tasks {
		n.ctr("tasks", "delete", "-f", t)
	}
}

// killShims stops shims of this node's containerd that outlived it.
func (n *Node) killShims() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "containerd-shim") && strings.Contains(cmd, n.sock) {
			var pid int
			fmt.Sscanf(filepath.Base(filepath.Dir(f)), "%d", &pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmount unmounts everything under the node's directory, deepest first.
func (n *Node) unmount() {
	for range 3 {
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return
		}
		var mounts []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 5 {
				continue
			}
			t := strings.ReplaceAll(fields[4], `\040`, " ")
			if t == n.dir || strings.HasPrefix(t, n.dir+"/") {
				mounts = append(mounts, t)
			}
		}
		f.Close()
		if len(mounts) == 0 {
			return
		}
		sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
		for _, m := range mounts {
			if syscall.Unmount(m, 0) != nil {
				syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
	}
}

// netnsDir is where containerd pins its pods' network namespaces.
const netnsDir = "/run/netns"

// removePodNetwork unpins the network namespaces of the node's pods (their
// veth pairs go with them) and removes the bridge. Containerd, stopped
// with its pods, never tore them down.
func (n *Node) removePodNetwork() {
	names, _ := os.ReadDir(netnsDir)
	for _, e := range names {
		if n.netns[e.Name()] || !strings.HasPrefix(e.Name(), "cni-") {
			continue
		}
		p := filepath.Join(netnsDir, e.Name())
		syscall.Unmount(p, syscall.MNT_DETACH)
		os.Remove(p)
	}
	exec.Command("ip", "link", "delete", PodBridge).Run()
}

func removeCgroupTree(root string) {
	var dirs []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

// PodLog returns what a container of a pod wrote, in all its runs the
// kubelet keeps (it writes run N to N.log), as the kubelet's CRI log
// lines: "<RFC 3339 time> <stream> <F|P> <text>".
func (n *Node) PodLog(namespace, name, uid, container string) (string, error) {
	dir := filepath.Join(n.dir, "pod-logs", namespace+"_"+name+"_"+uid, container)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var runs []int
	for _, e := range entries {
		var run int
		if _, err := fmt.Sscanf(e.Name(), "%d.log", &run); err == nil && e.Name() == fmt.Sprintf("%d.log", run) {
			runs = append(runs, run)
		}
	}
	sort.Ints(runs)
	var out []byte
	for _, run := range runs {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%d.log", run)))
		if err != nil {
			return string(out), err
		}
		out = append(out, b...)
	}
	return string(out), nil
}
