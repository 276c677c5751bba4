// Package csi is the agent's CSI node plugin (csi.signet.dev): it puts the
// Workload API socket into pods through an ephemeral inline volume, which
// Pod Security's baseline and restricted levels allow where they forbid
// hostPath. The kubelet finds the plugin through its plugin registration
// directory (the protocol of node-driver-registrar, served here); on
// NodePublishVolume the plugin bind-mounts the socket's directory,
// read-only, at the volume's target path, so that the pod sees the socket
// and nothing else of the host. The directory stays while the agent
// restarts (only the socket in it is replaced), so pods keep their volume
// through a restart and find the new socket in it.
//
// The pod's identity does not come from here: the Workload API still
// attests each caller by its cgroup and the kubelet. The pod the kubelet
// names on publish (podInfoOnMount) only lets the agent fetch that pod's
// identities before its containers start.
package csi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/signet-id/signet/internal/clock"
	"github.com/signet-id/signet/internal/signetid"
	"github.com/signet-id/signet/internal/unixsock"
	"github.com/signet-id/signet/internal/version"
)

// DefaultDriverName is the plugin's name, and the CSIDriver object's.
const DefaultDriverName = signetid.CSIDriver

// Keys of the volume context that the kubelet adds for drivers with
// podInfoOnMount.
const (
	ctxPodName        = "csi.storage.k8s.io/pod.name"
	ctxPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	ctxPodUID         = "csi.storage.k8s.io/pod.uid"
	ctxServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	ctxEphemeral      = "csi.storage.k8s.io/ephemeral"
)

// Config configures the plugin.
type Config struct {
	// DriverName is the name pods' volumes give; if empty,
	// DefaultDriverName.
	DriverName string
	// NodeID is the node's name.
	NodeID string
	// Endpoint is the plugin's socket, which the kubelet calls. Required;
	// it must not be in SocketDir (pods would see it).
	Endpoint string
	// KubeletRootDir is the kubelet's --root-dir: the plugin registers in
	// its plugins_registry, and mounts only at volume paths under its
	// pods directory. Required.
	KubeletRootDir string
	// SocketDir is the Workload API socket's directory: what every volume
	// shows. Required.
	SocketDir string
	// Pods, if set, lists the pods the kubelet runs: the plugin removes
	// its mounts of pods that are gone (left behind when the kubelet
	// could not reach the plugin), at start and every SweepInterval, once
	// the kubelet has not listed their pod for SweepGrace.
	Pods PodLister
	// SweepInterval and SweepGrace, if zero, are DefaultSweepInterval and
	// DefaultSweepGrace.
	SweepInterval, SweepGrace time.Duration
	// Clock, if nil, is clock.Real.
	Clock clock.Clock
	// Published, if set, is told of every pod whose volume is published,
	// before the pod's containers start. It must not block.
	Published func(Pod)
	Log       hclog.Logger
}

// DefaultSweepInterval is how often the plugin looks for mounts of pods
// that are gone.
const DefaultSweepInterval = time.Minute

// DefaultSweepGrace is how long a pod must be missing from the kubelet's
// pods, in two listings at least, before the plugin removes its mount: a
// kubelet that has just restarted lists no pods for a moment, and a
// container that restarts later would find its volume empty.
const DefaultSweepGrace = 30 * time.Second

// PodLister lists the pods the kubelet runs (agent/kubelet.Client).
type PodLister interface {
	Pods(ctx context.Context) ([]corev1.Pod, error)
}

// Pod is the pod a volume is published for, as the kubelet names it.
type Pod struct {
	UID, Namespace, Name, ServiceAccount string
}

// Driver is the plugin: the CSI identity and node services, and the
// kubelet's registration service.
type Driver struct {
	cfg     Config
	podsDir string
	log     hclog.Logger

	// mu serialises mounts and unmounts, so that a publish and an
	// unpublish (or a sweep) of one path never interleave; it guards
	// absent.
	mu sync.Mutex
	// absent holds the mounts whose pod the kubelet did not list, and
	// since when.
	absent map[string]time.Time

	csi, reg       *grpc.Server
	csiLis, regLis net.Listener
	regPath        string

	statusMu   sync.Mutex
	registered bool
	regError   string
}

// New checks cfg and returns the plugin.
func New(cfg Config) (*Driver, error) {
	if cfg.DriverName == "" {
		cfg.DriverName = DefaultDriverName
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SweepGrace == 0 {
		cfg.SweepGrace = DefaultSweepGrace
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	for _, p := range []struct{ flag, v string }{
		{"csi-socket", cfg.Endpoint}, {"kubelet-root-dir", cfg.KubeletRootDir}, {"socket", cfg.SocketDir},
	} {
		if p.v == "" {
			return nil, fmt.Errorf("%s: required for the CSI plugin", p.flag)
		}
		if !filepath.IsAbs(p.v) {
			return nil, fmt.Errorf("%s: %s is not an absolute path", p.flag, p.v)
		}
	}
	switch {
	case cfg.NodeID == "":
		return nil, errors.New("node-name: required for the CSI plugin")
	case within(filepath.Clean(cfg.Endpoint), filepath.Clean(cfg.SocketDir)):
		return nil, fmt.Errorf("csi-socket: %s is in the Workload API socket's directory %s, which every pod sees; put it elsewhere", cfg.Endpoint, cfg.SocketDir)
	}
	root := filepath.Clean(cfg.KubeletRootDir)
	return &Driver{
		cfg: cfg, podsDir: filepath.Join(root, "pods"), log: cfg.Log, absent: map[string]time.Time{},
		regPath: filepath.Join(root, "plugins_registry", cfg.DriverName+"-reg.sock"),
	}, nil
}

func within(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// Listen binds the plugin's socket and its registration socket; the
// kubelet registers the plugin once Serve runs.
func (d *Driver) Listen() error {
	// Only the kubelet (root) calls these.
	lis, err := unixsock.Listen(d.cfg.Endpoint, 0o700, 0o600)
	if err != nil {
		return fmt.Errorf("CSI socket: %w", err)
	}
	reg, err := unixsock.Listen(d.regPath, 0o750, 0o600)
	if err != nil {
		lis.Close()
		return fmt.Errorf("CSI registration socket: %w", err)
	}
	d.csiLis, d.regLis = lis, reg
	d.csi = grpc.NewServer(grpc.MaxRecvMsgSize(1 << 20))
	csipb.RegisterIdentityServer(d.csi, identity{d: d})
	csipb.RegisterNodeServer(d.csi, node{d: d})
	d.reg = grpc.NewServer(grpc.MaxRecvMsgSize(64 << 10))
	registerRegistration(d.reg, d)
	return nil
}

// Serve serves both sockets and sweeps stale mounts until ctx ends or
// Stop is called.
func (d *Driver) Serve(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- d.csi.Serve(d.csiLis) }()
	go func() { errc <- d.reg.Serve(d.regLis) }()
	d.log.Info("CSI plugin listening", "driver", d.cfg.DriverName, "socket", d.cfg.Endpoint, "registration", d.regPath)
	for {
		next := d.cfg.SweepInterval
		if d.sweepAndLog(ctx) > 0 {
			// Look again once the grace has passed.
			next = min(next, d.cfg.SweepGrace)
		}
		after, stop := d.cfg.Clock.After(next)
		select {
		case <-ctx.Done():
			stop()
			return nil
		case err := <-errc:
			stop()
			if err == nil || errors.Is(err, grpc.ErrServerStopped) {
				return nil
			}
			return fmt.Errorf("CSI plugin: %w", err)
		case <-after:
		}
	}
}

// Stop removes the registration socket first, so that the kubelet stops
// sending volumes here, then stops both servers. The mounts stay: pods
// keep their sockets while the agent restarts.
func (d *Driver) Stop() {
	if d.reg == nil {
		return
	}
	os.Remove(d.regPath)
	d.reg.Stop()
	d.csi.GracefulStop()
	os.Remove(d.cfg.Endpoint)
}

// Close releases the sockets of a plugin that never served.
func (d *Driver) Close() {
	if d.regLis != nil {
		d.regLis.Close()
		d.csiLis.Close()
		os.Remove(d.regPath)
		os.Remove(d.cfg.Endpoint)
	}
}

// Registered reports whether the kubelet registered the plugin, and
// its error if it refused it.
func (d *Driver) Registered() (bool, string) {
	d.statusMu.Lock()
	defer d.statusMu.Unlock()
	return d.registered, d.regError
}

// sweepAndLog sweeps and returns how many mounts wait for their grace.
func (d *Driver) sweepAndLog(ctx context.Context) int {
	if d.cfg.Pods == nil {
		return 0
	}
	removed, pending, err := d.Sweep(ctx)
	if err != nil {
		d.log.Warn("looking for volumes of pods that are gone failed; trying again later", "error", err)
	}
	for _, p := range removed {
		d.log.Info("removed the socket volume of a pod that is gone", "target_path", p)
	}
	return pending
}

// identity is the CSI identity service.
type identity struct {
	csipb.UnimplementedIdentityServer
	d *Driver
}

func (i identity) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: i.d.cfg.DriverName, VendorVersion: version.Module()}, nil
}

// GetPluginCapabilities: no controller service; the volumes are the
// node's own.
func (identity) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

func (identity) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{}, nil
}

// node is the CSI node service.
type node struct {
	csipb.UnimplementedNodeServer
	d *Driver
}

func (n node) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: n.d.cfg.NodeID}, nil
}

// NodeGetCapabilities: no staging, no stats; publish and unpublish only.
func (node) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{}, nil
}

func (n node) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	d := n.d
	vc := req.GetVolumeContext()
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	case req.GetVolumeCapability().GetMount() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability: "+d.cfg.DriverName+" volumes are mounted filesystems (not block devices)")
	case vc[ctxEphemeral] != "true":
		return nil, status.Errorf(codes.InvalidArgument, "%s volumes are ephemeral inline volumes only (a pod's spec.volumes[].csi), not persistent volumes", d.cfg.DriverName)
	case !req.GetReadonly():
		return nil, status.Errorf(codes.InvalidArgument, "%s volumes are read-only: set readOnly: true on the pod's csi volume", d.cfg.DriverName)
	}
	uid, err := d.volumePodUID(req.GetTargetPath())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if v, ok := vc[ctxPodUID]; ok && v != uid {
		return nil, status.Errorf(codes.InvalidArgument, "target_path is a volume of pod %s, but the volume context names pod %s", uid, v)
	}
	if d.cfg.Published != nil {
		// First: the pod's identities are fetched while the mount is made.
		d.cfg.Published(Pod{UID: uid, Namespace: vc[ctxPodNamespace], Name: vc[ctxPodName], ServiceAccount: vc[ctxServiceAccount]})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.publish(req.GetTargetPath()); err != nil {
		d.log.Error("publishing the socket volume failed", "pod_uid", uid, "target_path", req.GetTargetPath(), "error", err)
		return nil, status.Error(codes.Internal, err.Error())
	}
	d.log.Debug("published the socket volume", "pod", vc[ctxPodNamespace]+"/"+vc[ctxPodName], "pod_uid", uid, "target_path", req.GetTargetPath())
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (n node) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	d := n.d
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	if _, err := d.volumePodUID(req.GetTargetPath()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.unpublish(req.GetTargetPath()); err != nil {
		d.log.Error("unpublishing the socket volume failed", "target_path", req.GetTargetPath(), "error", err)
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// volumePodUID checks that target is a CSI volume's path of a pod in the
// kubelet's pods directory,
// <root>/pods/<pod UID>/volumes/kubernetes.io~csi/<volume>/mount, and
// returns the pod's UID. The plugin mounts nowhere else.
func (d *Driver) volumePodUID(target string) (string, error) {
	if target == "" {
		return "", errors.New("target_path: required")
	}
	if target != filepath.Clean(target) || !strings.HasPrefix(target, d.podsDir+"/") {
		return "", fmt.Errorf("target_path %q is not a volume path in the kubelet's pods directory %s", target, d.podsDir)
	}
	parts := strings.Split(strings.TrimPrefix(target, d.podsDir+"/"), "/")
	if len(parts) != 5 || parts[1] != "volumes" || parts[2] != "kubernetes.io~csi" || parts[4] != "mount" || parts[0] == "" || parts[3] == "" {
		return "", fmt.Errorf("target_path %q is not of the form %s/<pod UID>/volumes/kubernetes.io~csi/<volume>/mount", target, d.podsDir)
	}
	return parts[0], nil
}
