// Package agent assembles signet-agent: the manager that talks to the CA,
// the SPIFFE Workload API on a Unix socket, health and metrics.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"

	"github.com/signet-id/signet/agent/attest"
	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/agent/caclient"
	"github.com/signet-id/signet/agent/cgroup"
	"github.com/signet-id/signet/agent/csi"
	"github.com/signet-id/signet/agent/kubelet"
	"github.com/signet-id/signet/agent/rotation"
	"github.com/signet-id/signet/agent/workloadapi"
	"github.com/signet-id/signet/internal/datadir"
	"github.com/signet-id/signet/internal/health"
	"github.com/signet-id/signet/internal/logfile"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/tasks"
	"github.com/signet-id/signet/internal/unixsock"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
)

// Run runs the agent until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	return tasks.Run(ctx, func(ctx context.Context, g *tasks.Group) (func(), error) { return build(ctx, g, cfg) })
}

// build attests the node (if the data directory holds no valid agent
// SVID), then makes the Workload API server and binds its socket, so that
// the socket only appears once the agent can serve; it adds the tasks
// that run them to g, and returns what to call once they run.
func build(ctx context.Context, g *tasks.Group, cfg Config) (ready func(), err error) {
	log := cfg.Log
	changed, err := datadir.Prepare(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if len(changed) > 0 {
		log.Warn("the data directory holds the agent's private key: tightened what group or others could reach", "paths", changed)
	}
	unlock, err := datadir.Lock(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	g.OnClose(unlock)
	// What the node's SDK workloads acknowledge holding of the bundle goes
	// to the CA with the agent's own acknowledgement.
	acks := workloadapi.NewAcks()
	ca, err := caclient.New(caclient.Config{
		TrustDomain: cfg.TrustDomain, CAAddress: cfg.CAAddress, DataDir: cfg.DataDir,
		JoinToken: cfg.JoinToken, JoinTokenFile: cfg.JoinTokenFile, PSATTokenFile: cfg.PSATTokenFile, NodeName: cfg.NodeName,
		TrustBundle: cfg.TrustBundle, Log: log.Named("caclient"), WorkloadAcks: acks, Clock: cfg.Clock,
	})
	if err != nil {
		return nil, err
	}
	g.OnClose(ca.Close)
	rot := rotation.New(rotation.Config{CA: ca, Cache: ca.Cache(), Log: log.Named("rotation"), Clock: cfg.Clock})

	// Health and metrics serve from the start, so that a probe tells an
	// agent that is still attesting (not ready, and why) from a dead one.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Set once the CSI plugin serves; readiness waits for the kubelet to
	// register it.
	var csiDriver atomic.Pointer[csi.Driver]
	registerMetrics(reg, ca, rot)
	web, err := health.Listen(health.Config{
		HealthAddr: cfg.HealthAddr, MetricsAddr: cfg.MetricsAddr, Registry: reg,
		Ready: func(*http.Request) error {
			if ok, reason := ca.Status(); !ok {
				return errors.New(reason)
			}
			if d := csiDriver.Load(); d != nil {
				switch ok, refused := d.Registered(); {
				case refused != "":
					return fmt.Errorf("the kubelet refused to register the CSI plugin %s: %s", cfg.CSI.Driver, refused)
				case !ok:
					return fmt.Errorf("the kubelet has not registered the CSI plugin %s yet (is %s its --root-dir?)", cfg.CSI.Driver, cfg.CSI.KubeletRootDir)
				}
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	g.OnClose(web.Close)
	g.Start("http", func(context.Context) error { return web.Serve() }, web.Shutdown)
	for _, a := range web.Addrs() {
		log.Info("health/metrics listening", "addr", a)
	}

	var kc *kubelet.Client
	if cfg.Kubelet != nil {
		if kc, err = kubelet.New(*cfg.Kubelet); err != nil {
			return nil, err
		}
	}
	// The CSI plugin serves from the start too: the kubelet mounts the
	// socket's directory into pods whether or not the socket is up yet.
	if cfg.CSI != nil {
		d, err := startCSI(g, cfg, ca, kc, reg)
		if err != nil {
			return nil, err
		}
		csiDriver.Store(d)
	}

	if err := ca.Attest(ctx); err != nil {
		return nil, err
	}
	g.Add("CA client", func(ctx context.Context) error { ca.Run(ctx); return nil }, nil)
	g.Add("rotation", func(ctx context.Context) error { rot.Run(ctx); return nil }, nil)

	auditOut, err := logfile.Open(cfg.AuditLog)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	auditor := workloadapi.NewAuditor(auditOut, 8192)
	g.OnClose(func() { auditOut.Close() })
	g.OnClose(auditor.Close)
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_agent_audit_dropped_total",
		Help: "Audit records dropped because the buffer was full."}, func() float64 { return float64(auditor.Dropped()) }))
	g.Add("log reopen", func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-cfg.ReopenLogs:
				if err := auditOut.Reopen(); err != nil {
					log.Error("reopening the audit log failed; still writing the old file", "error", err)
				}
			}
		}
	}, nil)

	unix := &attest.Unix{}
	c := ca.Cache()
	unix.HashBinaries = func() bool {
		snap, _ := c.Snapshot()
		return snap.UsesKey("unix", "sha256")
	}
	var attestor workloadapi.Attestor = unix
	var pods workloadapi.PodPuller
	var podLayout *cgroup.Layout
	if kc != nil {
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
			pods = ca
		}
	}
	wm := workloadapi.NewMetrics(reg)
	h := workloadapi.New(workloadapi.Config{Cache: c, Attestor: attestor, JWT: rot, Audit: auditor, Log: log.Named("workloadapi"),
		Metrics: wm, Pods: pods})
	srv := grpc.NewServer(append(cfg.WorkloadLimits.ServerOptions(),
		grpc.Creds(peercred.TransportCredentials(true)), workloadapi.ServerOption(), workloadapi.BindStreams(),
		// Stop returns once every handler has: none writes to the audit
		// log after it is closed.
		grpc.WaitForHandlers(true))...)
	workload.RegisterSpiffeWorkloadAPIServer(srv, h)
	workloadv1.RegisterPolicyServer(srv, workloadapi.NewPolicyServer(h))
	workloadv1.RegisterRevocationsServer(srv, workloadapi.NewRevocationServer(h))
	workloadv1.RegisterBundlesServer(srv, workloadapi.NewBundleServer(h, acks))
	workloadv1.RegisterDecisionsServer(srv, workloadapi.NewDecisionServer(h, ca))
	workloadv1.RegisterKeysServer(srv, workloadapi.NewKeyServer(h, ca))
	// Any local process may ask; the answer depends on who it is.
	lis, err := unixsock.Listen(cfg.SocketPath, 0o755, 0o777)
	if err != nil {
		return nil, fmt.Errorf("workload API socket: %w", err)
	}
	g.OnClose(func() { os.Remove(cfg.SocketPath) })
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
	g.OnClose(func() { lis.Close() })
	// Workload API streams are endless: stop without waiting for them.
	g.Add("workload API", func(context.Context) error { return srv.Serve(lis) }, srv.Stop)
	log.Info("Workload API listening", "socket", cfg.SocketPath, "spiffe_id", ca.ID())

	if cfg.DenyListFile != "" {
		g.Add("deny list file", func(ctx context.Context) error { writeDenyList(ctx, c, cfg.DenyListFile, log); return nil }, nil)
	}
	g.Add("shutdown", func(ctx context.Context) error {
		<-ctx.Done()
		log.Info("shutting down")
		return nil
	}, nil)
	return func() {
		if cfg.Ready != nil {
			cfg.Ready(ca.ID())
		}
	}, nil
}

// writeDenyList keeps path holding the CA's signed deny list, replaced
// whole (a reader never sees half of one), until ctx ends.
func writeDenyList(ctx context.Context, c *cache.Cache, path string, log hclog.Logger) {
	written := ""
	for {
		snap, changed := c.Snapshot()
		if snap.DenyList != "" && snap.DenyList != written {
			tmp := path + ".tmp"
			err := os.MkdirAll(filepath.Dir(path), 0o755)
			if err == nil {
				err = os.WriteFile(tmp, []byte(snap.DenyList+"\n"), 0o644)
			}
			if err == nil {
				err = os.Rename(tmp, path)
			}
			if err != nil {
				log.Error("writing the deny list failed", "path", path, "error", err)
			} else {
				written = snap.DenyList
				log.Debug("deny list written", "path", path, "revocations", len(snap.Revocations))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// startCSI binds the CSI plugin's sockets and starts serving them. When
// the kubelet publishes a pod's volume, before the pod's containers
// start, the agent asks the CA for that pod's identities unless they were
// pushed already (prefetcher).
func startCSI(g *tasks.Group, cfg Config, ca *caclient.Client, kc *kubelet.Client, reg prometheus.Registerer) (*csi.Driver, error) {
	log := cfg.Log.Named("csi")
	var published func(csi.Pod)
	// Pod identities are pushed to (and fetched by) Kubernetes-attested
	// agents only.
	if cfg.PSATTokenFile != "" {
		published = newPrefetcher(ca.Cache(), ca, log, reg).Published
	}
	var lister csi.PodLister
	if kc != nil {
		lister = kc
	}
	drv, err := csi.New(csi.Config{
		DriverName: cfg.CSI.Driver, NodeID: cfg.NodeName, Endpoint: cfg.CSI.Socket, KubeletRootDir: cfg.CSI.KubeletRootDir,
		SocketDir: filepath.Dir(cfg.SocketPath), Pods: lister, Published: published, Log: log,
	})
	if err != nil {
		return nil, err
	}
	if err := drv.Listen(); err != nil {
		return nil, err
	}
	g.OnClose(drv.Close)
	g.Start("CSI plugin", drv.Serve, drv.Stop)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_csi_registered",
		Help: "1 once the kubelet has registered the agent's CSI plugin."}, func() float64 {
		if ok, _ := drv.Registered(); ok {
			return 1
		}
		return 0
	}))
	return drv, nil
}

func registerMetrics(reg prometheus.Registerer, ca *caclient.Client, rot *rotation.Rotator) {
	c := ca.Cache()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_entries", Help: "Entries the agent holds."}, func() float64 {
			snap, _ := c.Snapshot()
			return float64(len(snap.Items))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_revocations", Help: "Revocations in force the agent holds (and serves to workloads)."}, func() float64 {
			snap, _ := c.Snapshot()
			return float64(len(snap.Revocations))
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_reissue_pending",
			Help: "Workload X509-SVIDs a revocation covers that the agent has not re-minted yet (at its last bundle acknowledgement)."}, func() float64 {
			return float64(ca.PendingReissue())
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
			n, _ := rot.Counts()
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_agent_mint_errors_total", Help: "Failed mint calls to the CA."}, func() float64 {
			_, n := rot.Counts()
			return float64(n)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_ready",
			Help: "1 when the agent is attested, synced, not evicted, and its Sync stream to the CA serves (or has been down under 5 s)."}, func() float64 {
			if ok, _ := ca.Status(); ok {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_agent_ca_stream_up", Help: "1 while the Sync stream to the CA delivers."}, func() float64 {
			if ca.StreamUp() {
				return 1
			}
			return 0
		}),
	)
}
