// Package agent assembles signet-agent: the manager that talks to the CA,
// the SPIFFE Workload API on a Unix socket, health and metrics.
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/signet-id/signet/agent/attest"
	"github.com/signet-id/signet/agent/cgroup"
	"github.com/signet-id/signet/agent/kubelet"
	"github.com/signet-id/signet/agent/manager"
	"github.com/signet-id/signet/agent/workloadapi"
	"github.com/signet-id/signet/internal/health"
	"github.com/signet-id/signet/internal/logfile"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/unixsock"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
)

// DefaultSocket is the Workload API socket unless configured.
const DefaultSocket = "/run/signet/agent.sock"

// Config is everything signet-agent needs.
type Config struct {
	TrustDomain   spiffeid.TrustDomain
	CAAddress     string
	DataDir       string
	JoinToken     string
	JoinTokenFile string
	// PSATTokenFile, when set, attests the node with the projected
	// service-account token in this file (node attestor k8s_psat) as node
	// NodeName.
	PSATTokenFile string
	NodeName      string
	// TrustBundle holds the CA roots to trust at first start.
	TrustBundle []*x509.Certificate
	// SocketPath is the Workload API socket. If empty, DefaultSocket.
	SocketPath string
	// HealthAddr serves /healthz, /readyz (and /metrics unless MetricsAddr
	// is set); empty disables them.
	HealthAddr  string
	MetricsAddr string
	// AuditLog is the file for Workload API audit records; "-" is stderr.
	// If empty, DataDir/audit.log.
	AuditLog string
	Log      hclog.Logger
	// Kubelet, if set, adds the Kubernetes workload attestor: processes in
	// pods also get k8s: selectors from the kubelet's view of their pod.
	Kubelet *kubelet.Config
	// KubeletCgroupRoot is the kubelet's pod cgroup root on the host (its
	// --cgroup-root with the driver's naming, e.g. /kubepods.slice); if
	// empty, /kubepods and /kubepods.slice. Processes whose cgroups lie
	// elsewhere are not attested as pods.
	KubeletCgroupRoot string
	// WorkloadLimits bound the Workload API's connections per caller and
	// in all; zero values take the defaults.
	WorkloadLimits workloadapi.Limits
	// ReopenLogs, when it receives, reopens the audit log (after a
	// rotation; signet-agent sends on SIGHUP).
	ReopenLogs <-chan struct{}
	// Ready, if set, is called once the Workload API socket is up.
	Ready func(agentID spiffeid.ID)
}

// Run runs the agent until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocket
	}
	if cfg.AuditLog == "" {
		cfg.AuditLog = filepath.Join(cfg.DataDir, "audit.log")
	}
	log := cfg.Log
	mgr, err := manager.New(manager.Config{
		TrustDomain: cfg.TrustDomain, CAAddress: cfg.CAAddress, DataDir: cfg.DataDir,
		JoinToken: cfg.JoinToken, JoinTokenFile: cfg.JoinTokenFile, PSATTokenFile: cfg.PSATTokenFile, NodeName: cfg.NodeName,
		TrustBundle: cfg.TrustBundle, Log: log.Named("manager"),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Attest (if needed) before opening the socket, so that the socket
	// only appears once the agent can serve.
	mgrErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		mgrErr <- mgr.Run(ctx)
	}()
	for mgr.ID().IsZero() {
		select {
		case err := <-mgrErr:
			if err == nil {
				err = ctx.Err()
			}
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}

	auditOut, err := logfile.Open(cfg.AuditLog)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	auditor := workloadapi.NewAuditor(auditOut, 8192)
	defer func() {
		auditor.Close()
		auditOut.Close()
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-cfg.ReopenLogs:
				if err := auditOut.Reopen(); err != nil {
					log.Error("reopening the audit log failed; still writing the old file", "error", err)
				}
			}
		}
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerMetrics(reg, mgr, auditor)
	unix := &attest.Unix{}
	c := mgr.Cache()
	unix.HashBinaries = func() bool {
		snap, _ := c.Snapshot()
		return snap.UsesKey("unix", "sha256")
	}
	var attestor workloadapi.Attestor = unix
	var pods workloadapi.PodPuller
	var podLayout *cgroup.Layout
	if cfg.Kubelet != nil {
		kc, err := kubelet.New(*cfg.Kubelet)
		if err != nil {
			return err
		}
		var roots []string
		if cfg.KubeletCgroupRoot != "" {
			roots = []string{cfg.KubeletCgroupRoot}
		}
		layout, err := cgroup.DetectLayout("", roots)
		if err != nil {
			// Paths relative to a cgroup namespace are then refused, never
			// guessed.
			log.Warn("cannot tell whether this agent runs in its own cgroup namespace; pods are attested only if their cgroup paths are absolute", "error", err)
		}
		log.Info("attesting pods by their cgroups", "kubelet_cgroup_roots", layout.Roots, "cgroup_namespace_depth", layout.NSDepth)
		attestor = attest.Multi{unix, &attest.K8s{Pods: kc, Cgroups: layout}}
		podLayout = &layout
		if cfg.PSATTokenFile != "" {
			pods = mgr
		}
	}
	wm := workloadapi.NewMetrics(reg)
	h := workloadapi.New(workloadapi.Config{Cache: c, Attestor: attestor, JWT: mgr, Audit: auditor, Log: log.Named("workloadapi"),
		Metrics: wm, Pods: pods})
	srv := grpc.NewServer(append(cfg.WorkloadLimits.ServerOptions(),
		grpc.Creds(peercred.TransportCredentials(true)), workloadapi.ServerOption(), workloadapi.BindStreams())...)
	workload.RegisterSpiffeWorkloadAPIServer(srv, h)
	workloadv1.RegisterPolicyServer(srv, workloadapi.NewPolicyServer(h))
	workloadv1.RegisterDecisionsServer(srv, workloadapi.NewDecisionServer(h, mgr))
	workloadv1.RegisterKeysServer(srv, workloadapi.NewKeyServer(h, mgr))
	// Any local process may ask; the answer depends on who it is.
	lis, err := unixsock.Listen(cfg.SocketPath, 0o755, 0o777)
	if err != nil {
		return fmt.Errorf("workload API socket: %w", err)
	}
	// Limits per caller: a uid, or in Kubernetes mode the pod of the
	// process (many pods share a uid); root's host processes only count
	// toward the total.
	callerKey := func(conn net.Conn) (string, error) {
		cr, err := peercred.Read(conn)
		if err != nil {
			return "", err
		}
		if podLayout != nil {
			if ctr, err := cgroup.Read("", cr.PID, *podLayout); err == nil {
				return "pod:" + ctr.PodUID, nil
			}
		}
		if cr.UID == 0 {
			return "", nil // root on the host: the total limit only
		}
		return fmt.Sprintf("uid:%d", cr.UID), nil
	}
	lis = workloadapi.LimitListener(lis, cfg.WorkloadLimits, callerKey, wm.ConnectionRefused)
	log.Info("Workload API listening", "socket", cfg.SocketPath, "spiffe_id", mgr.ID())

	web, err := health.Listen(health.Config{
		HealthAddr: cfg.HealthAddr, MetricsAddr: cfg.MetricsAddr, Registry: reg,
		Ready: func(*http.Request) error {
			if ok, reason := mgr.Status(); !ok {
				return errors.New(reason)
			}
			return nil
		},
	})
	if err != nil {
		lis.Close()
		return err
	}
	errc := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := web.Serve(); err != nil {
			errc <- err
			cancel()
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(lis); err != nil {
			errc <- err
			cancel()
		}
	}()
	if cfg.Ready != nil {
		cfg.Ready(mgr.ID())
	}
	<-ctx.Done()
	log.Info("shutting down")
	srv.Stop() // Workload API streams are endless; do not wait for them.
	web.Shutdown()
	wg.Wait()
	os.Remove(cfg.SocketPath)
	select {
	case err := <-errc:
		return err
	case err := <-mgrErr:
		return err
	default:
		return nil
	}
}

func registerMetrics(reg prometheus.Registerer, mgr *manager.Manager, auditor *workloadapi.Auditor) {
	c := mgr.Cache()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_entries", Help: "Entries the agent holds."}, func() float64 {
			snap, _ := c.Snapshot()
			return float64(len(snap.Items))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_x509_svids", Help: "X509-SVIDs the agent holds."}, func() float64 {
			snap, _ := c.Snapshot()
			n := 0
			for _, it := range snap.Items {
				if it.SVID != nil {
					n++
				}
			}
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_agent_svids_minted_total", Help: "X509-SVIDs minted."}, func() float64 {
			n, _, _ := mgr.Counts()
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_agent_mint_errors_total", Help: "Failed mint calls to the CA."}, func() float64 {
			_, n, _ := mgr.Counts()
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_ready", Help: "1 when the agent is attested, synced and not evicted."}, func() float64 {
			if ok, _ := mgr.Status(); ok {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_agent_audit_dropped_total", Help: "Audit records dropped because the buffer was full."}, func() float64 {
			return float64(auditor.Dropped())
		}),
	)
}
