// Command signet-agent is Signet's node agent: it attests to signet-ca, keeps
// SVIDs for the node's workloads, and serves them on the SPIFFE Workload API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/agent"
	"github.com/signet-id/signet/agent/caclient"
	"github.com/signet-id/signet/agent/csi"
	"github.com/signet-id/signet/agent/kubelet"
	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/config"
	_ "github.com/signet-id/signet/internal/grpcbuf" // buffers sized for batches of SVIDs
	"github.com/signet-id/signet/internal/logfile"
	"github.com/signet-id/signet/internal/systemlog"
	"github.com/signet-id/signet/internal/version"
)

// fileConfig holds every setting; its json tags are the config file keys
// and the flag names.
type fileConfig struct {
	TrustDomain      string `json:"trust-domain"`
	CAAddress        string `json:"ca-address"`
	JoinToken        string `json:"join-token"`
	JoinTokenFile    string `json:"join-token-file"`
	TrustBundle      string `json:"trust-bundle"`
	Socket           string `json:"socket"`
	DataDir          string `json:"data-dir"`
	HealthAddr       string `json:"health-addr"`
	MetricsAddr      string `json:"metrics-addr"`
	AuditLog         string `json:"audit-log"`
	KubeletURL       string `json:"kubelet-url"`
	KubeletTokenFile string `json:"kubelet-token-file"`
	KubeletCA        string `json:"kubelet-ca"`
	KubeletInsecure  bool   `json:"kubelet-insecure-skip-verify"`
	KubeletCgroup    string `json:"kubelet-cgroup-root"`
	NodeAttestor     string `json:"node-attestor"`
	TokenFile        string `json:"token-file"`
	NodeName         string `json:"node-name"`
	KubeletRootDir   string `json:"kubelet-root-dir"`
	CSISocket        string `json:"csi-socket"`
	CSIDriver        string `json:"csi-driver"`
	DenyListFile     string `json:"deny-list-file"`
	LogLevel         string `json:"log-level"`
	LogJSON          bool   `json:"log-json"`
}

func defaults() fileConfig {
	return fileConfig{
		CAAddress:  "127.0.0.1:8081",
		Socket:     agent.DefaultSocket,
		HealthAddr: "127.0.0.1:8083",
		// The automounted service-account token: meant for the API server,
		// which is what the kubelet accepts.
		KubeletTokenFile: "/var/run/secrets/kubernetes.io/serviceaccount/token",
		LogLevel:         "info",
		NodeAttestor:     "join_token",
		// From the downward API in the DaemonSet (spec.nodeName).
		NodeName:  os.Getenv("NODE_NAME"),
		CSISocket: agent.DefaultCSISocket,
		CSIDriver: csi.DefaultDriverName,
	}
}

func register(fs *flag.FlagSet, c *fileConfig) {
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "trust domain (default: the one the trust bundle's roots name)")
	fs.StringVar(&c.CAAddress, "ca-address", c.CAAddress, "host:port of signet-ca's agent API, or a comma-separated list of replicas' host:ports")
	fs.StringVar(&c.JoinToken, "join-token", c.JoinToken, "join token from 'signet token create' (needed at first start); visible in ps, prefer join-token-file")
	fs.StringVar(&c.JoinTokenFile, "join-token-file", c.JoinTokenFile, "file holding the join token; a new token written here re-attests an evicted agent")
	fs.StringVar(&c.TrustBundle, "trust-bundle", c.TrustBundle, "PEM file of the CA roots ('signet bundle show'), needed at first start")
	fs.StringVar(&c.Socket, "socket", c.Socket, "Workload API Unix socket")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for the agent SVID, its key and the trust bundle (required)")
	fs.StringVar(&c.HealthAddr, "health-addr", c.HealthAddr, "address of /healthz, /readyz and /metrics; empty to disable")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "address of /metrics (default: the health address)")
	fs.StringVar(&c.AuditLog, "audit-log", c.AuditLog, "Workload API audit log, - for stderr (default DATA-DIR/audit.log)")
	fs.StringVar(&c.KubeletURL, "kubelet-url", c.KubeletURL, "kubelet base URL (https://NODE_IP:10250); enables k8s: workload selectors")
	fs.StringVar(&c.KubeletTokenFile, "kubelet-token-file", c.KubeletTokenFile, "token the kubelet accepts")
	fs.StringVar(&c.KubeletCA, "kubelet-ca", c.KubeletCA, "PEM roots that verify the kubelet's serving certificate")
	fs.StringVar(&c.KubeletCgroup, "kubelet-cgroup-root", c.KubeletCgroup, "the kubelet's pod cgroup root on the host, e.g. /kubepods.slice (default /kubepods and /kubepods.slice); only processes in cgroups under it are attested as pods")
	fs.BoolVar(&c.KubeletInsecure, "kubelet-insecure-skip-verify", c.KubeletInsecure, "do not verify the kubelet's certificate (unsafe; for self-signed kubelet certificates only)")
	fs.StringVar(&c.NodeAttestor, "node-attestor", c.NodeAttestor, "join_token or k8s_psat")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "k8s_psat: projected service-account token with the CA's audience")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "k8s_psat: this node's name (default $NODE_NAME)")
	fs.StringVar(&c.KubeletRootDir, "kubelet-root-dir", c.KubeletRootDir, "the kubelet's --root-dir, e.g. /var/lib/kubelet; serves the CSI plugin that puts the socket into pods (registered in its plugins_registry)")
	fs.StringVar(&c.CSISocket, "csi-socket", c.CSISocket, "the CSI plugin's socket, which the kubelet calls (not in the Workload API socket's directory)")
	fs.StringVar(&c.CSIDriver, "csi-driver", c.CSIDriver, "the CSI driver's name, as pods' volumes and the CSIDriver object give it")
	fs.StringVar(&c.DenyListFile, "deny-list-file", c.DenyListFile, "keep this file holding the CA's signed deny list of revocations (a JWS), for peers without Signet's SDK")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "trace, debug, info, warn or error")
	fs.BoolVar(&c.LogJSON, "log-json", c.LogJSON, "log as JSON")
}

// testClockOffsetEnv moves the agent's clock by a duration, for tests of
// clock skew between the agent and the CA.
const testClockOffsetEnv = "SIGNET_TEST_CLOCK_OFFSET"

func parse(args []string, stderr io.Writer) (agent.Config, error) {
	c, err := config.ParseFlags("signet-agent", args, stderr, defaults, register)
	if err != nil {
		return agent.Config{}, err
	}
	var td spiffeid.TrustDomain
	if c.TrustDomain != "" {
		if td, err = spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
			return agent.Config{}, fmt.Errorf("trust-domain: %q: %v", c.TrustDomain, err)
		}
	}
	cfg := agent.Config{
		TrustDomain: td, CAAddress: c.CAAddress, DataDir: c.DataDir, JoinToken: c.JoinToken, JoinTokenFile: c.JoinTokenFile,
		SocketPath: c.Socket, HealthAddr: c.HealthAddr, MetricsAddr: c.MetricsAddr, AuditLog: c.AuditLog,
		DenyListFile: c.DenyListFile,
	}
	switch c.NodeAttestor {
	case "join_token":
		if c.TokenFile != "" {
			return agent.Config{}, errors.New("token-file: only with node-attestor k8s_psat (join tokens go in join-token-file)")
		}
	case "k8s_psat":
		if c.TokenFile == "" {
			return agent.Config{}, errors.New("token-file: required with node-attestor k8s_psat")
		}
		cfg.PSATTokenFile, cfg.NodeName = c.TokenFile, c.NodeName
		if c.KubeletURL == "" {
			ip := os.Getenv("NODE_IP")
			if ip == "" {
				return agent.Config{}, errors.New("kubelet-url: required with node-attestor k8s_psat (or set NODE_IP from the downward API)")
			}
			c.KubeletURL = "https://" + net.JoinHostPort(ip, "10250")
		}
	default:
		return agent.Config{}, fmt.Errorf("node-attestor: %q: want join_token or k8s_psat", c.NodeAttestor)
	}
	if c.KubeletURL != "" {
		cfg.Kubelet = &kubelet.Config{URL: c.KubeletURL, TokenFile: c.KubeletTokenFile, CAFile: c.KubeletCA, InsecureSkipVerify: c.KubeletInsecure}
		cfg.KubeletCgroupRoot = c.KubeletCgroup
	}
	if c.KubeletRootDir != "" {
		cfg.CSI = &agent.CSIConfig{KubeletRootDir: c.KubeletRootDir, Socket: c.CSISocket, Driver: c.CSIDriver}
		cfg.NodeName = c.NodeName
	}
	if c.TrustBundle != "" {
		if cfg.TrustBundle, err = caclient.LoadBundleFile(c.TrustBundle); err != nil {
			return agent.Config{}, fmt.Errorf("trust-bundle: %v", err)
		}
	}
	if cfg.Log, err = systemlog.New("signet-agent", c.LogLevel, c.LogJSON, os.Stderr); err != nil {
		return agent.Config{}, err
	}
	// Said first: it holds whatever else is wrong with the settings.
	if joinTokenOnCommandLine(args) {
		cfg.Log.Warn("--join-token shows in the process list to every user of this host until it is used; prefer --join-token-file (or join-token in the --config file)")
	}
	if err := cfg.Validate(); err != nil {
		return agent.Config{}, err
	}
	// For the tests of clock skew only: the wall clock cannot be moved for
	// one process, and fake-time libraries do not reach Go.
	if v := os.Getenv(testClockOffsetEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return agent.Config{}, fmt.Errorf("%s: %v", testClockOffsetEnv, err)
		}
		cfg.Clock = clock.Offset(d)
		cfg.Log.Warn("deciding by a clock moved for a test; never set this in production", "env", testClockOffsetEnv, "offset", d)
	}
	if c.KubeletInsecure {
		cfg.Log.Warn("kubelet-insecure-skip-verify is set: the kubelet's certificate is not verified, so anyone on the path can answer as the kubelet and choose workload selectors")
	}
	return cfg, nil
}

// joinTokenOnCommandLine reports whether args give the token itself.
func joinTokenOnCommandLine(args []string) bool {
	for _, a := range args {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "join-token" {
			return true
		}
	}
	return false
}

func main() {
	cfg, err := parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if errors.Is(err, config.ErrVersion) {
		fmt.Println(version.String("signet-agent"))
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "signet-agent:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.ReopenLogs = logfile.OnSIGHUP(ctx)
	if err := agent.Run(ctx, cfg); err != nil {
		cfg.Log.Error("exiting", "error", err)
		os.Exit(1)
	}
}
