// Command scale measures how signet-ca's cost grows with the cluster: a
// real kube-apiserver and etcd (e2e/testenv), kwok's fake nodes and pods on
// it, signet-ca replicas as real processes in Kubernetes mode, and one
// simulated agent per node (bench/agentsim: the agent's own client code,
// attesting with a PSAT bound to a fake agent pod on its node), plus one
// real signet-agent process. It grows the cluster in steps and measures,
// at each, the CA's memory, CPU and the requests it sends to the API
// server; at the last, the push of new pods to their agents, a rule change
// that re-issues every pod's SVIDs, and a failover of the leader with all
// agents connected. It prints a JSON report (and -json writes it).
//
//	go run ./bench/scale -steps 100,300,1000 -pods-per-node 30 -json scale.json
package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/signet-id/signet/bench/agentsim"
	"github.com/signet-id/signet/e2e/testenv"
	_ "github.com/signet-id/signet/internal/grpcbuf" // buffers sized for batches of SVIDs
)

const (
	trustDomain = "scale.test"
	agentNS     = "signet-system"
	agentSA     = "signet-agent"
	namespaces  = 10
)

type options struct {
	steps       []int
	podsPerNode int
	replicas    int
	push        int
	steady      time.Duration
	realAgent   bool
	jsonOut     string
	keep        bool
	baseline    bool
	simProfile  string
}

// Report is what one run measured.
type Report struct {
	Started     time.Time  `json:"started"`
	Machine     string     `json:"machine"`
	PodsPerNode int        `json:"podsPerNode"`
	Replicas    int        `json:"replicas"`
	Steps       []Step     `json:"steps"`
	Push        *Push      `json:"push,omitempty"`
	RuleChange  *Reissue   `json:"ruleChange,omitempty"`
	Failover    *Failover  `json:"failover,omitempty"`
	RealAgent   []RealStat `json:"realAgent,omitempty"`
}

// Step is the cluster at one size, settled.
type Step struct {
	Nodes int `json:"nodes"`
	Pods  int `json:"pods"`
	// AgentsReadySeconds: from starting this step's new agents until every
	// agent holds an SVID for each of its pods.
	AgentsReadySeconds float64 `json:"agentsReadySeconds"`
	// StartRequests are the requests the CA replicas sent to the API
	// server while this step's agents started (by verb/resource).
	StartRequests map[string]float64 `json:"startRequests"`
	// Per replica, settled.
	CARSSMiB  []float64 `json:"caRSSMiB"`
	CAHeapMiB []float64 `json:"caHeapMiB"`
	// CACPUCores is each replica's CPU use over the steady window.
	CACPUCores []float64 `json:"caCPUCores"`
	// SteadyRequestsPerSecond is what all replicas together sent to the
	// API server per second over the steady window, by verb/resource.
	SteadyRequestsPerSecond map[string]float64 `json:"steadyRequestsPerSecond"`
	SteadySeconds           float64            `json:"steadySeconds"`
	SyncStreams             []float64          `json:"syncStreams"`
}

// Push is pod created → its entry at its node's agent.
type Push struct {
	Pods        int     `json:"pods"`
	EntryP50ms  float64 `json:"entryP50ms"`
	EntryP99ms  float64 `json:"entryP99ms"`
	EntryMaxms  float64 `json:"entryMaxms"`
	SVIDP50ms   float64 `json:"svidP50ms"`
	SVIDP99ms   float64 `json:"svidP99ms"`
	Missing     int     `json:"missing"`
	RatePerSec  float64 `json:"createdPerSecond"`
	ClusterPods int     `json:"clusterPods"`
}

// Reissue is an IdentityRule change that gives every pod a new identity.
type Reissue struct {
	Pods        int     `json:"pods"`
	Seconds     float64 `json:"seconds"`
	SVIDsSigned float64 `json:"svidsSigned"`
	SVIDsPerSec float64 `json:"svidsPerSecond"`
	// BaselineSVIDsPerSec is the CA's single-process signing rate
	// measured in the same run (ca/server's BenchmarkMintX509SVIDs1000:
	// one client, batches of 1,000, nothing else running).
	BaselineSVIDsPerSec float64 `json:"baselineSVIDsPerSecond"`
	Ratio               float64 `json:"ratio"`
	Complete            bool    `json:"complete"`
	// CPUCores is what each process used over the re-issue, in cores
	// (CPU seconds / seconds): the CA replicas, this process (the
	// simulated agents: keys, CSRs, certificate parsing), kube-apiserver,
	// etcd and kwok.
	CPUCores map[string]float64 `json:"cpuCores"`
	// CAPeakRSSMiB is each replica's peak resident memory over the
	// re-issue.
	CAPeakRSSMiB []float64 `json:"caPeakRSSMiB"`
	// CACPUPerSVIDus is the CA replicas' CPU time per SVID signed, in µs.
	CACPUPerSVIDus float64 `json:"caCPUPerSVIDus"`
	// CACoreRatio is the rate per CA core against the benchmark's rate
	// per core (two): how close the CA's own cost per SVID comes to the
	// benchmark's when it shares the machine with the agents and the API
	// server.
	CACoreRatio float64 `json:"caCoreRatio"`
	// RequestsPerSecond: what the replicas sent to the API server per
	// second over the re-issue, by verb/resource.
	RequestsPerSecond map[string]float64 `json:"requestsPerSecond"`
	// ProfileTop is the head of `go tool pprof -top` of the leader's CPU
	// profile over the re-issue.
	ProfileTop []string `json:"profileTop,omitempty"`
}

// Failover is kill -9 of the leader with every agent connected.
type Failover struct {
	Agents int `json:"agents"`
	// AgentsOnLeader were connected to the killed replica.
	AgentsOnLeader int `json:"agentsOnLeader"`
	// ResyncSeconds: from the kill until every agent's Sync stream is
	// open on the surviving replicas and every agent is ready.
	ResyncSeconds float64 `json:"resyncSeconds"`
	// NewLeaderSeconds: from the kill until another replica holds the
	// Lease.
	NewLeaderSeconds float64 `json:"newLeaderSeconds"`
	// RequestsPerSecond: what the surviving replicas sent to the API
	// server per second from the kill until all re-synced, by verb/resource.
	RequestsPerSecond map[string]float64 `json:"requestsPerSecond"`
	Resynced          bool               `json:"resynced"`
}

// RealStat is the real signet-agent process at one cluster size.
type RealStat struct {
	ClusterPods int     `json:"clusterPods"`
	NodePods    int     `json:"nodePods"`
	RSSMiB      float64 `json:"rssMiB"`
	HeapMiB     float64 `json:"heapMiB"`
}

func main() {
	var o options
	steps := flag.String("steps", "100,300,1000", "cluster sizes (nodes) to grow through")
	flag.IntVar(&o.podsPerNode, "pods-per-node", 30, "application pods per node")
	flag.IntVar(&o.replicas, "replicas", 2, "signet-ca replicas")
	flag.IntVar(&o.push, "push", 300, "pods created one by one at the last step, to time the push (0: skip)")
	flag.DurationVar(&o.steady, "steady", 30*time.Second, "steady window at each step")
	flag.BoolVar(&o.realAgent, "real-agent", true, "run one real signet-agent process on its own node")
	flag.StringVar(&o.jsonOut, "json", "", "also write the report to this file")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory")
	flag.StringVar(&o.simProfile, "sim-cpuprofile", "", "write a CPU profile of this process (the simulated agents) over the rule change to this file")
	flag.BoolVar(&o.baseline, "baseline", true, "measure the CA's single-process signing rate first (ca/server's benchmark), for the rule change's ratio")
	flag.Parse()
	for _, s := range strings.Split(*steps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || (len(o.steps) > 0 && n <= o.steps[len(o.steps)-1]) {
			fmt.Fprintln(os.Stderr, "scale: -steps: growing positive node counts, e.g. 100,300,1000")
			os.Exit(2)
		}
		o.steps = append(o.steps, n)
	}
	rep, err := run(o)
	out, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Println(string(out))
	if o.jsonOut != "" {
		os.WriteFile(o.jsonOut, append(out, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s scale: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// run is one measurement run.
func run(o options) (*Report, error) {
	rep := &Report{Started: time.Now().UTC(), PodsPerNode: o.podsPerNode, Replicas: o.replicas,
		Machine: fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())}
	dir, err := os.MkdirTemp("", "signet-scale-")
	if err != nil {
		return rep, err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	} else {
		logf("working directory %s", dir)
	}
	root, err := repoRoot()
	if err != nil {
		return rep, err
	}
	bin := filepath.Join(dir, "bin")
	logf("building signet-ca, signet-agent and signet")
	if out, err := exec.Command("go", "-C", root, "build", "-o", bin+"/", "./cmd/signet-ca", "./cmd/signet-agent", "./cmd/signet").CombinedOutput(); err != nil {
		return rep, fmt.Errorf("build: %v\n%s", err, out)
	}
	baseline := 0.0
	if o.baseline {
		logf("measuring the CA's single-process signing rate (ca/server BenchmarkMintX509SVIDs1000)")
		if baseline, err = signingBaseline(root); err != nil {
			return rep, err
		}
		logf("baseline: %.0f SVIDs/s", baseline)
	}

	logf("starting etcd, kube-apiserver and kwok")
	cl, err := testenv.Start(filepath.Join(dir, "cluster"))
	if err != nil {
		return rep, err
	}
	defer cl.Stop()
	if err := cl.StartKwok(); err != nil {
		return rep, err
	}
	cfg := rest.CopyConfig(cl.Config)
	cfg.QPS, cfg.Burst = 1000, 2000
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return rep, err
	}
	h := &harness{o: o, dir: dir, bin: bin, cl: cl, kc: kc, created: map[string]time.Time{}, entrySeen: map[string]time.Time{}, svidSeen: map[string]time.Time{}}
	if err := h.setup(root); err != nil {
		return rep, err
	}
	defer h.stop()

	for _, n := range o.steps {
		st, err := h.grow(n)
		rep.Steps = append(rep.Steps, st)
		if err != nil {
			return rep, err
		}
		if h.real != nil {
			rs, err := h.real.stat(h.clusterPods())
			if err != nil {
				return rep, err
			}
			rep.RealAgent = append(rep.RealAgent, rs)
		}
	}
	if o.push > 0 {
		if rep.Push, err = h.pushLatency(o.push); err != nil {
			return rep, err
		}
	}
	if rep.RuleChange, err = h.ruleChange(baseline); err != nil {
		return rep, err
	}
	if o.replicas > 1 {
		if rep.Failover, err = h.failover(); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func repoRoot() (string, error) {
	_, src, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(src), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", errors.New("scale: run from the repository (go run ./bench/scale)")
	}
	return root, nil
}

// signingBaseline runs ca/server's mint benchmark and returns SVIDs/s.
func signingBaseline(root string) (float64, error) {
	out, err := exec.Command("go", "-C", root, "test", "-run", "^$", "-bench", "MintX509SVIDs1000/quiet$", "-benchtime", "5000x", "./ca/server/").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("baseline: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 4 && strings.HasPrefix(f[0], "BenchmarkMintX509SVIDs1000") && f[3] == "ns/op" {
			ns, err := strconv.ParseFloat(f[2], 64)
			if err == nil && ns > 0 {
				return 1e9 / ns, nil
			}
		}
	}
	return 0, fmt.Errorf("baseline: no result in\n%s", out)
}

// harness is the cluster, the CA replicas and the agents of one run.
type harness struct {
	o       options
	dir     string
	bin     string
	cl      *testenv.Cluster
	kc      kubernetes.Interface
	cas     []*caProc
	sim     *agentsim.Sim
	bundle  []*x509.Certificate
	real    *realAgent
	nodes   []string
	podsOn  map[string]int
	started map[string]bool

	mu        sync.Mutex
	created   map[string]time.Time // pod UID → created, for the push
	entrySeen map[string]time.Time // pod UID → its entry first at its agent
	svidSeen  map[string]time.Time // pod UID → an SVID first at its agent
}

func (h *harness) setup(root string) error {
	ctx := context.Background()
	for _, f := range []string{"identityrules", "accesspolicies", "revocations", "trafficprofiles", "federatedtrustdomains"} {
		if err := h.applyFile(ctx, filepath.Join(root, "deploy/base/crds", f+".signet.dev.yaml")); err != nil {
			return err
		}
	}
	// The rules: every pod's ns/sa identity, and a second identity for the
	// pods of tier web.
	rules := `apiVersion: signet.dev/v1alpha1
kind: IdentityRule
metadata: {name: default}
spec:
  spiffeIDTemplate: "spiffe://{{.TrustDomain}}/ns/{{.Namespace}}/sa/{{.ServiceAccount}}"
---
apiVersion: signet.dev/v1alpha1
kind: IdentityRule
metadata: {name: web}
spec:
  spiffeIDTemplate: "spiffe://{{.TrustDomain}}/web/ns/{{.Namespace}}/sa/{{.ServiceAccount}}"
  dnsNameTemplates: ["{{.ServiceAccount}}.{{.Namespace}}.svc"]
  podSelector: {matchLabels: {tier: web}}
`
	if err := h.applyRetry(ctx, rules); err != nil {
		return err
	}
	if err := h.cl.EnsureNamespace(ctx, agentNS); err != nil {
		return err
	}
	if err := h.cl.EnsureServiceAccount(ctx, agentNS, agentSA); err != nil {
		return err
	}
	for i := 0; i < namespaces; i++ {
		ns := fmt.Sprintf("app-%d", i)
		if err := h.cl.EnsureNamespace(ctx, ns); err != nil {
			return err
		}
		for s := 0; s < 3; s++ {
			if err := h.cl.EnsureServiceAccount(ctx, ns, fmt.Sprintf("svc-%d", s)); err != nil {
				return err
			}
		}
	}
	h.podsOn, h.started = map[string]int{}, map[string]bool{}
	var addrs []string
	for i := 0; i < h.o.replicas; i++ {
		ca, err := h.startCA(i)
		if err != nil {
			return err
		}
		h.cas = append(h.cas, ca)
		addrs = append(addrs, ca.listen)
	}
	// The leader's traffic detector reads the profiles once when it
	// starts to lead (on its next 10 s tick): wait for that, so that no
	// step's steady window holds it.
	if err := waitEvery(2*time.Minute, 200*time.Millisecond, func() error {
		c, err := h.caCounters()
		if err == nil && c["list trafficprofiles"] < 1 {
			err = errors.New("the leader's detector has not started")
		}
		return err
	}); err != nil {
		return err
	}
	pemOut, err := exec.Command(filepath.Join(h.bin, "signet"), "bundle", "show").Output()
	if err != nil {
		return fmt.Errorf("bundle show: %w", err)
	}
	// The admin socket is the first replica's (SIGNET_ADMIN_SOCKET).
	for rest := pemOut; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return err
		}
		h.bundle = append(h.bundle, c)
	}
	h.sim = agentsim.New(agentsim.Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString(trustDomain), CAAddress: strings.Join(addrs, ","),
		TrustBundle: h.bundle, Dir: filepath.Join(h.dir, "agents"),
		Log:     hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: os.Stderr}),
		Observe: h.observe,
	})
	if h.o.realAgent {
		if h.real, err = h.startRealAgent(strings.Join(addrs, ",")); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) applyFile(ctx context.Context, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return h.applyRetry(ctx, string(b))
}

// applyRetry applies YAML, retrying while the API server does not serve a
// new CRD's resource yet.
func (h *harness) applyRetry(ctx context.Context, y string) error {
	objs, err := testenv.ParseYAML([]byte(y))
	if err != nil {
		return err
	}
	return h.cl.ApplyWhenServed(ctx, objs, 60*time.Second)
}

func (h *harness) stop() {
	if h.sim != nil {
		h.sim.Stop()
	}
	if h.real != nil {
		h.real.proc.kill()
	}
	for _, c := range h.cas {
		c.kill()
	}
}

// proc is a process of the run, with its health address.
type proc struct {
	cmd    *exec.Cmd
	health string
	logs   string
	dead   bool
	exited chan struct{}
}

// start starts the process, its output to its log file.
func (p *proc) start() error {
	f, err := os.Create(p.logs)
	if err != nil {
		return err
	}
	defer f.Close()
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		return err
	}
	p.exited = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.exited) }()
	return nil
}

// alive fails, with the end of its log, once the process has exited.
func (p *proc) alive() error {
	select {
	case <-p.exited:
		b, _ := os.ReadFile(p.logs)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		return fmt.Errorf("%s exited: %s\n%s", filepath.Base(p.cmd.Path), p.cmd.ProcessState, b)
	default:
		return nil
	}
}

func (p *proc) kill() {
	if p.dead {
		return
	}
	p.dead = true
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// metrics sums the samples of each metric name (label sets joined as
// name{labels}) of the process's /metrics.
func (p *proc) metrics() (map[string]float64, error) {
	resp, err := http.Get("http://" + p.health + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// procStat is the process's resident memory (MiB) and CPU time (s).
func (p *proc) procStat() (rssMiB, cpu float64, err error) {
	pid := p.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	rssMiB = statusKB(b, "VmRSS:") / 1024
	cpu, err = cpuSeconds(pid)
	return rssMiB, cpu, err
}

// peakRSSMiB is the process's peak resident memory (VmHWM) in MiB.
func (p *proc) peakRSSMiB() float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	return statusKB(b, "VmHWM:") / 1024
}

// statusKB is the value in kB of field (with its colon) in the text of
// /proc/<pid>/status, or 0.
func statusKB(status []byte, field string) float64 {
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			if f := strings.Fields(v); len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb
			}
		}
	}
	return 0
}

// cpuSeconds is the CPU time process pid has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command's closing parenthesis: utime and stime
	// are the 12th and 13th, in clock ticks (100 per second on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	stt, _ := strconv.ParseFloat(f[12], 64)
	return (ut + stt) / 100, nil
}

type caProc struct {
	proc
	pprof  string
	id     string
	listen string
	dir    string
}

func (h *harness) startCA(i int) (*caProc, error) {
	c := &caProc{id: fmt.Sprintf("ca-%d", i), listen: testenv.FreeAddr(), dir: filepath.Join(h.dir, fmt.Sprintf("ca-%d", i))}
	c.health = testenv.FreeAddr()
	c.logs = filepath.Join(h.dir, c.id+".log")
	c.pprof = testenv.FreeAddr()
	c.cmd = exec.Command(filepath.Join(h.bin, "signet-ca"), "--pprof-addr", c.pprof, "--trust-domain", trustDomain, "--data-dir", c.dir,
		"--kubeconfig", h.cl.Kubeconfig, "--cluster-name", "scale", "--agent-service-account", agentNS+"/"+agentSA,
		"--namespace", agentNS, "--replica-id", c.id, "--listen", c.listen, "--health-addr", c.health, "--log-level", "warn")
	if err := c.start(); err != nil {
		return nil, err
	}
	if i == 0 {
		os.Setenv("SIGNET_ADMIN_SOCKET", filepath.Join(c.dir, "admin.sock"))
	}
	if err := waitUntil(3*time.Minute, func() error {
		if err := c.alive(); err != nil {
			return err
		}
		resp, err := http.Get("http://" + c.health + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz %d", resp.StatusCode)
		}
		return nil
	}); err != nil {
		b, _ := os.ReadFile(c.logs)
		return nil, fmt.Errorf("%s not ready: %v\n%s", c.id, err, b)
	}
	logf("%s ready (agent API %s)", c.id, c.listen)
	return c, nil
}

func waitUntil(d time.Duration, cond func() error) error {
	return waitEvery(d, 100*time.Millisecond, cond)
}

// waitEvery calls cond every interval until it returns nil or d passed.
func waitEvery(d, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

// observe is the simulated agents' callback.
func (h *harness) observe(o agentsim.Observation) {
	if o.PodUID == "" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.entrySeen
	if o.SVID {
		m = h.svidSeen
	}
	if _, ok := m[o.PodUID]; !ok {
		m[o.PodUID] = o.At
	}
}

func (h *harness) clusterPods() int {
	n := 0
	for _, c := range h.podsOn {
		n += c
	}
	return n
}

// forEach runs fn over items with workers goroutines, returning the
// first error.
func forEach[T any](items []T, workers int, fn func(T) error) error {
	ch := make(chan T)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ferr error
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range ch {
				if err := fn(it); err != nil {
					mu.Lock()
					if ferr == nil {
						ferr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		ch <- it
	}
	close(ch)
	wg.Wait()
	return ferr
}

// appPod is the i-th application pod of node: spread over the namespaces
// and three service accounts; every third is tier web.
func appPod(node string, i int) *corev1.Pod {
	tier := "api"
	if i%3 == 0 {
		tier = "web"
	}
	return testenv.KwokPod(fmt.Sprintf("app-%d", i%namespaces), fmt.Sprintf("%s-p%d", node, i), fmt.Sprintf("svc-%d", i%3), node, map[string]string{"tier": tier})
}

// grow adds nodes (each with an agent pod and its application pods) up to
// n, starts their agents, waits until every agent holds its pods' SVIDs,
// and measures the settled CA.
func (h *harness) grow(n int) (Step, error) {
	ctx := context.Background()
	var fresh []string
	for i := len(h.nodes); i < n; i++ {
		fresh = append(fresh, fmt.Sprintf("node-%04d", i))
	}
	logf("step %d nodes: creating %d nodes with %d pods each", n, len(fresh), h.o.podsPerNode+1)
	t0 := time.Now()
	if err := forEach(fresh, 16, func(node string) error {
		if err := h.cl.CreateKwokNode(ctx, node); err != nil {
			return err
		}
		_, err := h.kc.CoreV1().Pods(agentNS).Create(ctx, testenv.KwokPod(agentNS, "agent-"+node, agentSA, node, nil), metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		for i := 0; i < h.o.podsPerNode; i++ {
			if _, err := h.kc.CoreV1().Pods(appPod(node, i).Namespace).Create(ctx, appPod(node, i), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return err
			}
		}
		return nil
	}); err != nil {
		return Step{}, err
	}
	for _, node := range fresh {
		h.podsOn[node] = h.o.podsPerNode
	}
	h.nodes = append(h.nodes, fresh...)
	st := Step{Nodes: n, Pods: h.clusterPods()}
	logf("step %d nodes: %d pods created in %s; waiting for kwok to run the agent pods", n, st.Pods, time.Since(t0).Round(time.Second))
	lastRunning, lastProgress := -1, time.Now()
	// Every 2 s: a list of every agent pod is work for the API server
	// that would be counted against the CA's figures.
	if err := waitEvery(10*time.Minute, 2*time.Second, func() error {
		pods, err := h.kc.CoreV1().Pods(agentNS).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		running := 0
		var stuck []string
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning {
				running++
			} else {
				stuck = append(stuck, p.Name)
			}
		}
		want := len(h.nodes) + h.realNodes()
		if running < want {
			// kwok now and then fails to play a pod's stage and never
			// tries again (two IPs of one family): a pod-bound token works
			// for a pending pod too, so a few stragglers are let be.
			if running != lastRunning {
				lastRunning, lastProgress = running, time.Now()
			}
			if len(stuck) <= max(1, want/200) && time.Since(lastProgress) > 20*time.Second {
				logf("step %d nodes: %d agent pods kwok left pending (%v); going on", n, len(stuck), stuck)
				return nil
			}
			return fmt.Errorf("%d of %d agent pods running", running, want)
		}
		return nil
	}); err != nil {
		return st, err
	}

	before, err := h.caCounters()
	if err != nil {
		return st, err
	}
	t1 := time.Now()
	if err := forEach(fresh, 25, func(node string) error {
		tok, err := h.agentToken(ctx, node)
		if err != nil {
			return err
		}
		_, err = h.sim.Start(ctx, node, tok)
		return err
	}); err != nil {
		return st, err
	}
	for _, node := range fresh {
		h.started[node] = true
	}
	if err := h.waitAllHeld(15*time.Minute, "/ns/app-"); err != nil {
		return st, err
	}
	st.AgentsReadySeconds = time.Since(t1).Seconds()
	after, _ := h.caCounters()
	st.StartRequests = diff(before, after, 1)
	logf("step %d nodes: every agent holds its pods' SVIDs %.1fs after the agents started; settling", n, st.AgentsReadySeconds)

	// Steady window: nothing changes; what do the replicas cost?
	time.Sleep(5 * time.Second)
	c0, _ := h.caCounters()
	var cpu0 []float64
	for _, c := range h.cas {
		_, cpu, _ := c.procStat()
		cpu0 = append(cpu0, cpu)
	}
	s0 := time.Now()
	time.Sleep(h.o.steady)
	st.SteadySeconds = time.Since(s0).Seconds()
	c1, _ := h.caCounters()
	st.SteadyRequestsPerSecond = diff(c0, c1, st.SteadySeconds)
	for i, c := range h.cas {
		rss, cpu, err := c.procStat()
		if err != nil {
			return st, err
		}
		m, err := c.metrics()
		if err != nil {
			return st, err
		}
		st.CARSSMiB = append(st.CARSSMiB, round1(rss))
		st.CAHeapMiB = append(st.CAHeapMiB, round1(m["go_memstats_heap_inuse_bytes"]/(1<<20)))
		st.CACPUCores = append(st.CACPUCores, round3((cpu-cpu0[i])/st.SteadySeconds))
		st.SyncStreams = append(st.SyncStreams, m["signet_ca_sync_streams"])
	}
	logf("step %d nodes: CA RSS %v MiB, heap %v MiB, CPU %v cores, API requests/s %v", n, st.CARSSMiB, st.CAHeapMiB, st.CACPUCores, st.SteadyRequestsPerSecond)
	return st, nil
}

func (h *harness) realNodes() int {
	if h.real != nil {
		return 1
	}
	return 0
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// agentToken is a token of the agents' service account bound to the agent
// pod on node, with the CA's audience.
func (h *harness) agentToken(ctx context.Context, node string) (string, error) {
	p, err := h.kc.CoreV1().Pods(agentNS).Get(ctx, "agent-"+node, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return h.cl.BoundToken(ctx, p, []string{"signet-ca"}, 6*time.Hour)
}

// caCounters sums signet_ca_kube_requests_total of the live replicas by
// verb/resource, and the SVIDs they issued ("svids").
func (h *harness) caCounters() (map[string]float64, error) {
	out := map[string]float64{}
	for _, c := range h.cas {
		if c.dead {
			continue
		}
		m, err := c.metrics()
		if err != nil {
			return nil, err
		}
		for k, v := range m {
			switch {
			case strings.HasPrefix(k, "signet_ca_kube_requests_total{"):
				out[labelsKey(k)] += v
			case strings.HasPrefix(k, `signet_ca_svids_issued_total{type="x509"`):
				out["svids"] += v
			}
		}
	}
	return out, nil
}

// labelsKey turns signet_ca_kube_requests_total{resource="pods",verb="list"}
// into "list pods".
func labelsKey(k string) string {
	var verb, res string
	for _, kv := range strings.Split(strings.Trim(k[strings.IndexByte(k, '{'):], "{}"), ",") {
		name, val, _ := strings.Cut(kv, "=")
		val = strings.Trim(val, `"`)
		switch name {
		case "verb":
			verb = val
		case "resource":
			res = val
		}
	}
	return verb + " " + res
}

// diff is after-before per key, divided by per (1 for totals), without
// the keys that did not change.
func diff(before, after map[string]float64, per float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			out[k] = round3(d / per)
		}
	}
	return out
}

// waitAllHeld waits until every started agent holds an SVID for each of
// its application pods whose SPIFFE ID path starts with prefix.
func (h *harness) waitAllHeld(d time.Duration, prefix string) error {
	agents := h.sim.Agents()
	return waitUntil(d, func() error {
		behind := 0
		var example string
		for _, a := range agents {
			_, svids := a.Held()
			n := 0
			for id, c := range svids {
				if strings.HasPrefix(id.Path(), prefix) {
					n += c
				}
			}
			if n < h.podsOn[a.Node] {
				behind++
				if example == "" {
					example = fmt.Sprintf("%s holds %d of %d", a.Node, n, h.podsOn[a.Node])
				}
			}
		}
		if behind > 0 {
			return fmt.Errorf("%d agents behind (%s)", behind, example)
		}
		return nil
	})
}

// pushLatency creates pods one by one on random nodes and times each to
// its node's agent.
func (h *harness) pushLatency(n int) (*Push, error) {
	ctx := context.Background()
	logf("push: creating %d pods at 20/s", n)
	var uids []string
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	for i := 0; i < n; i++ {
		<-t.C
		node := h.nodes[(i*7919)%len(h.nodes)]
		idx := h.podsOn[node]
		p := appPod(node, idx)
		got, err := h.kc.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return nil, err
		}
		created := time.Now()
		h.mu.Lock()
		h.created[string(got.UID)] = created
		h.mu.Unlock()
		h.podsOn[node]++
		uids = append(uids, string(got.UID))
	}
	rate := float64(n) / time.Since(start).Seconds()
	err := waitUntil(60*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, u := range uids {
			if _, ok := h.svidSeen[u]; !ok {
				return errors.New("not all pushed")
			}
		}
		return nil
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	var entry, svid []float64
	missing := 0
	for _, u := range uids {
		c := h.created[u]
		if e, ok := h.entrySeen[u]; ok {
			entry = append(entry, float64(e.Sub(c).Microseconds())/1000)
		} else {
			missing++
		}
		if s, ok := h.svidSeen[u]; ok {
			svid = append(svid, float64(s.Sub(c).Microseconds())/1000)
		}
	}
	p := &Push{Pods: n, Missing: missing, RatePerSec: round1(rate), ClusterPods: h.clusterPods(),
		EntryP50ms: pct(entry, 50), EntryP99ms: pct(entry, 99), EntryMaxms: pct(entry, 100), SVIDP50ms: pct(svid, 50), SVIDP99ms: pct(svid, 99)}
	logf("push: entry p50 %.1f ms p99 %.1f ms; SVID p50 %.1f ms p99 %.1f ms; missing %d", p.EntryP50ms, p.EntryP99ms, p.SVIDP50ms, p.SVIDP99ms, missing)
	if err != nil {
		return p, fmt.Errorf("push: %w", err)
	}
	return p, nil
}

// pct is the p-th percentile of v (nearest rank).
func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return round1(s[max(0, min(i, len(s)-1))])
}

// ruleChange changes the default rule's template, so that every pod has
// a new identity, and times until every agent holds the new SVIDs.
func (h *harness) ruleChange(baseline float64) (*Reissue, error) {
	ctx := context.Background()
	before, err := h.caCounters()
	if err != nil {
		return nil, err
	}
	pods := h.clusterPods()
	logf("rule change: every one of %d pods gets a new identity", pods)
	cpu0 := h.cpuByProcess()
	// Peak memory over the re-issue: each replica's high-water mark,
	// reset first (clear_refs 5).
	for _, c := range h.cas {
		if !c.dead {
			os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", c.cmd.Process.Pid), []byte("5"), 0)
		}
	}
	leader, _, _ := h.leader(ctx)
	if leader == nil {
		leader = h.cas[0]
	}
	profile := make(chan []string, 1)
	go func() { profile <- h.profile(leader, 8*time.Second) }()
	if h.o.simProfile != "" {
		f, err := os.Create(h.o.simProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	start := time.Now()
	if err := h.applyRetry(ctx, `apiVersion: signet.dev/v1alpha1
kind: IdentityRule
metadata: {name: default}
spec:
  spiffeIDTemplate: "spiffe://{{.TrustDomain}}/v2/ns/{{.Namespace}}/sa/{{.ServiceAccount}}"
`); err != nil {
		return nil, err
	}
	r := &Reissue{Pods: pods, BaselineSVIDsPerSec: round1(baseline)}
	err = h.waitAllHeld(15*time.Minute, "/v2/ns/app-")
	r.Seconds = round3(time.Since(start).Seconds())
	for _, c := range h.cas {
		if !c.dead {
			r.CAPeakRSSMiB = append(r.CAPeakRSSMiB, round1(c.peakRSSMiB()))
		}
	}
	r.Complete = err == nil
	after, _ := h.caCounters()
	cpu1 := h.cpuByProcess()
	r.CPUCores = map[string]float64{}
	for k, v := range cpu1 {
		r.CPUCores[k] = round3((v - cpu0[k]) / r.Seconds)
	}
	r.SVIDsSigned = after["svids"] - before["svids"]
	r.SVIDsPerSec = round1(r.SVIDsSigned / r.Seconds)
	delete(after, "svids")
	delete(before, "svids")
	r.RequestsPerSecond = diff(before, after, r.Seconds)
	if r.SVIDsSigned > 0 {
		r.CACPUPerSVIDus = round1((cpu1["signet-ca"] - cpu0["signet-ca"]) / r.SVIDsSigned * 1e6)
	}
	r.ProfileTop = <-profile
	if baseline > 0 {
		r.Ratio = round3(r.SVIDsPerSec / baseline)
		if cores := r.CPUCores["signet-ca"]; cores > 0 {
			r.CACoreRatio = round3(r.SVIDsPerSec / cores / (baseline / float64(runtime.NumCPU())))
		}
	}
	logf("rule change: %d SVIDs signed, all held after %.1fs (%.0f/s, %.2f of the baseline, %.2f per CA core); CPU cores %v; CA %.0f µs of CPU per SVID, peak RSS %v MiB; API requests/s %v",
		int(r.SVIDsSigned), r.Seconds, r.SVIDsPerSec, r.Ratio, r.CACoreRatio, r.CPUCores, r.CACPUPerSVIDus, r.CAPeakRSSMiB, r.RequestsPerSecond)
	return r, err
}

// cpuByProcess is the CPU seconds used so far by the CA replicas
// (together), this process, and the cluster's processes.
func (h *harness) cpuByProcess() map[string]float64 {
	out := map[string]float64{}
	for _, c := range h.cas {
		if !c.dead {
			_, cpu, _ := c.procStat()
			out["signet-ca"] += cpu
		}
	}
	pids := h.cl.Pids()
	pids["agentsim (this process)"] = os.Getpid()
	for name, pid := range pids {
		if cpu, err := cpuSeconds(pid); err == nil {
			out[name] = cpu
		}
	}
	return out
}

// leader is the replica holding the Lease, or nil with the holder's name
// when none of the replicas does.
func (h *harness) leader(ctx context.Context) (*caProc, string, error) {
	l, err := h.kc.CoordinationV1().Leases(agentNS).Get(ctx, "signet-ca", metav1.GetOptions{})
	if err != nil {
		return nil, "", err
	}
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	for _, c := range h.cas {
		if c.id == holder {
			return c, holder, nil
		}
	}
	return nil, holder, nil
}

// profile takes a CPU profile of the replica over d and returns the head
// of pprof's -top.
func (h *harness) profile(c *caProc, d time.Duration) []string {
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", c.pprof, int(d.Seconds())))
	if err != nil {
		return []string{err.Error()}
	}
	defer resp.Body.Close()
	path := filepath.Join(h.dir, c.id+"-rulechange.pprof")
	f, err := os.Create(path)
	if err != nil {
		return []string{err.Error()}
	}
	if _, err := f.ReadFrom(resp.Body); err != nil {
		f.Close()
		return []string{err.Error()}
	}
	f.Close()
	out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", filepath.Join(h.bin, "signet-ca"), path).Output()
	if err != nil {
		return []string{err.Error()}
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// failover kills the leader with every agent connected and times the
// re-sync.
func (h *harness) failover() (*Failover, error) {
	ctx := context.Background()
	leader, holder, err := h.leader(ctx)
	if err != nil {
		return nil, err
	}
	if leader == nil {
		return nil, fmt.Errorf("failover: no replica holds the Lease (holder %q)", holder)
	}
	agents := len(h.sim.Agents()) + h.realNodes()
	f := &Failover{Agents: agents}
	if m, err := leader.metrics(); err == nil {
		f.AgentsOnLeader = int(m["signet_ca_sync_streams"])
	}
	logf("failover: kill -9 of %s, the leader, with %d of %d agents on it", leader.id, f.AgentsOnLeader, agents)
	leader.kill()
	killed := time.Now()
	before, _ := h.caCounters()
	newLeader := make(chan time.Duration, 1)
	go func() {
		for time.Since(killed) < 5*time.Minute {
			l, err := h.kc.CoordinationV1().Leases(agentNS).Get(ctx, "signet-ca", metav1.GetOptions{})
			if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != holder {
				newLeader <- time.Since(killed)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	err = waitUntil(5*time.Minute, func() error {
		streams := 0.0
		for _, c := range h.cas {
			if c.dead {
				continue
			}
			m, err := c.metrics()
			if err != nil {
				return err
			}
			streams += m["signet_ca_sync_streams"]
		}
		if int(streams) < agents {
			return fmt.Errorf("%v of %d streams", streams, agents)
		}
		for _, a := range h.sim.Agents() {
			if ok, why := a.Ready(); !ok {
				return fmt.Errorf("agent %s: %s", a.Node, why)
			}
		}
		return nil
	})
	f.ResyncSeconds = round3(time.Since(killed).Seconds())
	f.Resynced = err == nil
	after, _ := h.caCounters()
	f.RequestsPerSecond = diff(before, after, f.ResyncSeconds)
	select {
	case d := <-newLeader:
		f.NewLeaderSeconds = round3(d.Seconds())
	case <-time.After(2 * time.Minute):
	}
	logf("failover: all %d agents re-synced %.2fs after the kill (another replica led after %.1fs); API requests/s %v", agents, f.ResyncSeconds, f.NewLeaderSeconds, f.RequestsPerSecond)
	return f, err
}

// realAgent is one signet-agent process on a node of its own.
type realAgent struct {
	proc proc
	node string
	h    *harness
}

func (h *harness) startRealAgent(caAddr string) (*realAgent, error) {
	ctx := context.Background()
	node := "real-agent-node"
	if err := h.cl.CreateKwokNode(ctx, node); err != nil {
		return nil, err
	}
	if _, err := h.kc.CoreV1().Pods(agentNS).Create(ctx, testenv.KwokPod(agentNS, "agent-"+node, agentSA, node, nil), metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	for i := 0; i < h.o.podsPerNode; i++ {
		if _, err := h.kc.CoreV1().Pods(appPod(node, i).Namespace).Create(ctx, appPod(node, i), metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	h.podsOn[node] = h.o.podsPerNode
	tok, err := h.agentToken(ctx, node)
	if err != nil {
		return nil, err
	}
	d := filepath.Join(h.dir, "real-agent")
	os.MkdirAll(d, 0o700)
	os.WriteFile(filepath.Join(d, "token"), []byte(tok), 0o600)
	var bundle []byte
	for _, c := range h.bundle {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	os.WriteFile(filepath.Join(d, "bundle.pem"), bundle, 0o600)
	r := &realAgent{node: node, h: h, proc: proc{health: testenv.FreeAddr(), logs: filepath.Join(h.dir, "real-agent.log")}}
	r.proc.cmd = exec.Command(filepath.Join(h.bin, "signet-agent"), "--node-attestor", "k8s_psat", "--token-file", filepath.Join(d, "token"),
		"--node-name", node, "--ca-address", caAddr, "--trust-bundle", filepath.Join(d, "bundle.pem"), "--data-dir", filepath.Join(d, "data"),
		"--socket", filepath.Join(d, "agent.sock"), "--health-addr", r.proc.health, "--log-level", "warn",
		// No kubelet serves kwok's nodes, and no workload calls this
		// agent: it is here for its memory.
		"--kubelet-url", "https://127.0.0.1:9", "--kubelet-insecure-skip-verify")
	if err := r.proc.start(); err != nil {
		return nil, err
	}
	logf("real signet-agent on %s", node)
	return r, nil
}

// stat waits until the real agent holds SVIDs for its node's pods and
// reads its memory.
func (r *realAgent) stat(clusterPods int) (RealStat, error) {
	want := float64(r.h.podsOn[r.node])
	if err := waitUntil(5*time.Minute, func() error {
		if err := r.proc.alive(); err != nil {
			return err
		}
		m, err := r.proc.metrics()
		if err != nil {
			return err
		}
		if got, entries := m["signet_agent_x509_svids"], m["signet_agent_entries"]; entries < want || got < entries {
			return fmt.Errorf("real agent holds %v SVIDs for %v entries (its node has %v pods)", got, entries, want)
		}
		return nil
	}); err != nil {
		b, _ := os.ReadFile(r.proc.logs)
		return RealStat{}, fmt.Errorf("%w\n%s", err, b)
	}
	rss, _, err := r.proc.procStat()
	if err != nil {
		return RealStat{}, err
	}
	m, err := r.proc.metrics()
	if err != nil {
		return RealStat{}, err
	}
	return RealStat{ClusterPods: clusterPods, NodePods: int(want), RSSMiB: round1(rss), HeapMiB: round1(m["go_memstats_heap_inuse_bytes"] / (1 << 20))}, nil
}
