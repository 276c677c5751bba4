package csi

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/signet-id/signet/internal/clock"
)

// plugin is a Driver serving on real Unix sockets in a temporary kubelet
// root, with a Workload API socket directory that holds a live socket.
type plugin struct {
	d                   *Driver
	root, sockDir, sock string
	conn                *grpc.ClientConn
	published           chan Pod
	pods                *fakePods
	clock               *clock.Fake
}

type fakePods struct{ uids []string }

func (f *fakePods) Pods(context.Context) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, u := range f.uids {
		out = append(out, corev1.Pod{})
		out[len(out)-1].UID = types.UID(u)
	}
	return out, nil
}

func newPlugin(t testing.TB) *plugin {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the CSI plugin's tests mount filesystems: run them as root (make test does)")
	}
	// Short: a socket path in a pod's volume must fit in a sockaddr.
	base, err := os.MkdirTemp("", "csi")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(base) })
	p := &plugin{root: filepath.Join(base, "k"), sockDir: filepath.Join(base, "signet"), published: make(chan Pod, 10), pods: &fakePods{},
		clock: clock.NewFake(time.Unix(1_800_000_000, 0))}
	p.sock = filepath.Join(p.sockDir, "agent.sock")
	must(t, os.MkdirAll(p.sockDir, 0o755))
	var d *Driver
	l, err := net.Listen("unix", p.sock)
	must(t, err)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	d, err = New(Config{
		NodeID: "node-1", Endpoint: filepath.Join(base, "csi", "csi.sock"), KubeletRootDir: p.root, SocketDir: p.sockDir,
		Pods: p.pods, Published: func(pod Pod) { p.published <- pod }, Clock: p.clock, SweepGrace: 30 * time.Second,
		// The tests sweep themselves; Serve sweeps once, at start.
		SweepInterval: 24 * time.Hour,
	})
	must(t, err)
	must(t, d.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		d.Stop()
		<-done
		// Whatever a failed test left mounted.
		mounts, _ := ReadMounts()
		for _, m := range mounts {
			if strings.HasPrefix(m.MountPoint, base+"/") {
				unix.Unmount(m.MountPoint, unix.MNT_DETACH)
			}
		}
	})
	p.d = d
	p.conn, err = grpc.NewClient("unix://"+d.cfg.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	t.Cleanup(func() { p.conn.Close() })
	return p
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// target is the path the kubelet gives for a pod's CSI volume, with its
// parent made, as the kubelet makes it.
func (p *plugin) target(t testing.TB, uid string) string {
	t.Helper()
	parent := filepath.Join(p.root, "pods", uid, "volumes", "kubernetes.io~csi", "s")
	must(t, os.MkdirAll(parent, 0o750))
	must(t, os.WriteFile(filepath.Join(parent, "vol_data.json"), []byte(`{"driverName":"csi.signet.dev","specVolumeID":"signet-agent-socket"}`), 0o644))
	return filepath.Join(parent, "mount")
}

func publishRequest(uid, target string) *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId: "csi-" + uid, TargetPath: target, Readonly: true,
		VolumeCapability: &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}}},
		VolumeContext: map[string]string{
			ctxEphemeral: "true", ctxPodUID: uid, ctxPodName: "web", ctxPodNamespace: "shop", ctxServiceAccount: "web",
		},
	}
}

func (p *plugin) publish(uid, target string) error {
	_, err := csipb.NewNodeClient(p.conn).NodePublishVolume(context.Background(), publishRequest(uid, target))
	return err
}

func (p *plugin) unpublish(uid, target string) error {
	_, err := csipb.NewNodeClient(p.conn).NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uid, TargetPath: target})
	return err
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	ok, err := mountedAt(path)
	must(t, err)
	return ok
}

// TestPublish: the kubelet's NodePublishVolume, over the plugin's real
// socket, makes the socket appear at the target, read-only, with nothing
// else of the host; a second publish changes nothing; unpublish removes
// the mount and the target.
func TestPublish(t *testing.T) {
	p := newPlugin(t)
	uid := "2b5c3f0e-9d2a-4c1b-8f3e-0a1b2c3d4e5f"
	target := p.target(t, uid)
	must(t, p.publish(uid, target))
	if got := <-p.published; got != (Pod{UID: uid, Namespace: "shop", Name: "web", ServiceAccount: "web"}) {
		t.Errorf("Published got %+v", got)
	}
	if !isMounted(t, target) {
		t.Fatal("the target is not a mount point")
	}
	// The workload reaches the socket through the volume.
	c, err := net.Dial("unix", filepath.Join(target, "agent.sock"))
	must(t, err)
	buf := make([]byte, 5)
	if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("reading through the mounted socket: %q, %v", buf, err)
	}
	c.Close()
	// Only the socket, and nothing may be written, even by root.
	entries, err := os.ReadDir(target)
	must(t, err)
	if len(entries) != 1 || entries[0].Name() != "agent.sock" {
		t.Errorf("the volume shows %v, want the socket only", entries)
	}
	if err := os.WriteFile(filepath.Join(target, "fake.sock"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing into the volume: %v, want EROFS", err)
	}
	if err := os.Remove(filepath.Join(target, "agent.sock")); !errors.Is(err, unix.EROFS) {
		t.Errorf("removing the socket through the volume: %v, want EROFS", err)
	}
	// A new socket in the directory (the agent restarted) is seen at once.
	os.Remove(p.sock)
	l, err := net.Listen("unix", p.sock)
	must(t, err)
	l.Close()
	// Idempotent.
	must(t, p.publish(uid, target))
	mounts, err := ReadMounts()
	must(t, err)
	n := 0
	for _, m := range mounts {
		if m.MountPoint == target {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d mounts at the target after two publishes, want 1", n)
	}
	must(t, p.unpublish(uid, target))
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the target is left after unpublish: %v", err)
	}
	if _, err := os.Stat(p.sockDir); err != nil {
		t.Errorf("the socket directory went with the unpublish: %v", err)
	}
	// Unpublishing again is done.
	must(t, p.unpublish(uid, target))
}

// TestPublishRefuses: the plugin mounts only read-only, ephemeral
// volumes, at volume paths of the kubelet's pods directory.
func TestPublishRefuses(t *testing.T) {
	p := newPlugin(t)
	uid := "9f0e8d7c-6b5a-4948-8372-615049382716"
	target := p.target(t, uid)
	outside := filepath.Join(filepath.Dir(p.root), "elsewhere")
	for name, c := range map[string]struct {
		edit func(*csipb.NodePublishVolumeRequest)
		want string
	}{
		"writable":   {func(r *csipb.NodePublishVolumeRequest) { r.Readonly = false }, "read-only"},
		"persistent": {func(r *csipb.NodePublishVolumeRequest) { delete(r.VolumeContext, ctxEphemeral) }, "ephemeral inline volumes only"},
		"block": {func(r *csipb.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csipb.VolumeCapability_Block{}
		}, "block"},
		"no volume id": {func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" }, "volume_id"},
		"outside pods": {func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = outside }, "not a volume path"},
		"dot-dot": {func(r *csipb.NodePublishVolumeRequest) {
			r.TargetPath = p.root + "/pods/" + uid + "/../../x/volumes/kubernetes.io~csi/v/mount"
		}, "not a volume path"},
		"not a csi path": {func(r *csipb.NodePublishVolumeRequest) {
			r.TargetPath = p.root + "/pods/" + uid + "/volumes/kubernetes.io~empty-dir/v/mount"
		}, "of the form"},
		"other pod's uid": {func(r *csipb.NodePublishVolumeRequest) { r.VolumeContext[ctxPodUID] = "other" }, "names pod other"},
	} {
		t.Run(name, func(t *testing.T) {
			req := publishRequest(uid, target)
			c.edit(req)
			_, err := csipb.NewNodeClient(p.conn).NodePublishVolume(context.Background(), req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want InvalidArgument with %q", err, c.want)
			}
			if isMounted(t, target) || isMounted(t, outside) {
				t.Fatal("mounted anyway")
			}
		})
	}
}

// TestRegistration: the kubelet's side of node-driver-registrar's
// protocol, over the registration socket in plugins_registry.
func TestRegistration(t *testing.T) {
	p := newPlugin(t)
	reg := filepath.Join(p.root, "plugins_registry", "csi.signet.dev-reg.sock")
	conn, err := grpc.NewClient("unix://"+reg, grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	defer conn.Close()
	c := registerapi.NewRegistrationClient(conn)
	info, err := c.GetInfo(context.Background(), &registerapi.InfoRequest{})
	must(t, err)
	if info.Type != registerapi.CSIPlugin || info.Name != "csi.signet.dev" || info.Endpoint != p.d.cfg.Endpoint || !slices.Contains(info.SupportedVersions, "1.0.0") {
		t.Errorf("GetInfo: %+v", info)
	}
	if ok, _ := p.d.Registered(); ok {
		t.Fatal("registered before the kubelet said so")
	}
	_, err = c.NotifyRegistrationStatus(context.Background(), &registerapi.RegistrationStatus{PluginRegistered: true})
	must(t, err)
	if ok, _ := p.d.Registered(); !ok {
		t.Error("not registered after the kubelet said so")
	}
	// The identity service the kubelet then calls.
	pi, err := csipb.NewIdentityClient(p.conn).GetPluginInfo(context.Background(), &csipb.GetPluginInfoRequest{})
	must(t, err)
	ni, err := csipb.NewNodeClient(p.conn).NodeGetInfo(context.Background(), &csipb.NodeGetInfoRequest{})
	must(t, err)
	if pi.Name != "csi.signet.dev" || ni.NodeId != "node-1" {
		t.Errorf("plugin %q on node %q", pi.Name, ni.NodeId)
	}
	// Stopping unregisters (the socket goes) and leaves the mounts.
	uid := "0d1e2f3a-4b5c-4d6e-8f90-a1b2c3d4e5f6"
	target := p.target(t, uid)
	must(t, p.publish(uid, target))
	p.d.Stop()
	if _, err := os.Stat(reg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the registration socket outlived Stop: %v", err)
	}
	if !isMounted(t, target) {
		t.Error("Stop took a pod's volume away")
	}
}

// TestSweep: mounts of pods that the kubelet no longer runs are removed
// once the kubelet has not listed them for the grace, in two listings;
// those of its pods stay, and so do pods it lists again in time (a kubelet
// that has just restarted lists no pods for a moment).
func TestSweep(t *testing.T) {
	p := newPlugin(t)
	live, gone := "11111111-2222-4333-8444-555555555555", "66666666-7777-4888-9999-aaaaaaaaaaaa"
	tl, tg := p.target(t, live), p.target(t, gone)
	must(t, p.publish(live, tl))
	must(t, p.publish(gone, tg))
	sweep := func(wantRemoved []string, wantPending int) {
		t.Helper()
		removed, pending, err := p.d.Sweep(context.Background())
		must(t, err)
		if !slices.Equal(removed, wantRemoved) || pending != wantPending {
			t.Fatalf("swept %v with %d pending, want %v with %d", removed, pending, wantRemoved, wantPending)
		}
	}
	// A restarted kubelet that lists nothing yet: nothing goes.
	p.pods.uids = nil
	sweep(nil, 2)
	p.clock.Add(10 * time.Second)
	p.pods.uids = []string{live}
	sweep(nil, 1)
	// The grace has not passed since the first listing without it.
	p.clock.Add(10 * time.Second)
	sweep(nil, 1)
	p.clock.Add(15 * time.Second)
	sweep([]string{tg}, 0)
	if !isMounted(t, tl) || isMounted(t, tg) {
		t.Errorf("after the sweep: live mounted %v, gone mounted %v", isMounted(t, tl), isMounted(t, tg))
	}
	// Another driver's volume, even of a pod that is gone, is not ours.
	other := filepath.Join(p.root, "pods", gone, "volumes", "kubernetes.io~csi", "theirs")
	must(t, os.MkdirAll(filepath.Join(other, "mount"), 0o750))
	must(t, os.WriteFile(filepath.Join(other, "vol_data.json"), []byte(`{"driverName":"other.csi.example.com"}`), 0o644))
	must(t, unix.Mount(p.sockDir, filepath.Join(other, "mount"), "", unix.MS_BIND, ""))
	sweep(nil, 0)
	p.clock.Add(time.Minute)
	sweep(nil, 0)
	if !isMounted(t, filepath.Join(other, "mount")) {
		t.Error("swept another driver's volume")
	}
	unix.Unmount(filepath.Join(other, "mount"), 0)
}

func TestNewRefuses(t *testing.T) {
	ok := Config{NodeID: "n", Endpoint: "/run/signet-csi/csi.sock", KubeletRootDir: "/var/lib/kubelet", SocketDir: "/run/signet"}
	for name, c := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"endpoint in socket dir": {func(c *Config) { c.Endpoint = "/run/signet/csi.sock" }, "every pod sees"},
		"relative root":          {func(c *Config) { c.KubeletRootDir = "var/lib/kubelet" }, "not an absolute path"},
		"no node":                {func(c *Config) { c.NodeID = "" }, "node-name"},
		"no endpoint":            {func(c *Config) { c.Endpoint = "" }, "csi-socket: required"},
	} {
		cfg := ok
		c.edit(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	if _, err := New(ok); err != nil {
		t.Error(err)
	}
}

// BenchmarkPublish: the kubelet's NodePublishVolume and
// NodeUnpublishVolume over the plugin's socket, each on a connection of
// its own as the kubelet makes them, beside the floor of such a call (a
// new connection and the identity service's Probe).
//
//	go test -run '^$' -bench Publish ./agent/csi/
func BenchmarkPublish(b *testing.B) {
	p := newPlugin(b)
	uid := "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"
	target := p.target(b, uid)
	dial := func() *grpc.ClientConn {
		conn, err := grpc.NewClient("unix://"+p.d.cfg.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
		must(b, err)
		return conn
	}
	go func() {
		for range p.published {
		}
	}()
	b.Run("probe", func(b *testing.B) {
		for b.Loop() {
			conn := dial()
			_, err := csipb.NewIdentityClient(conn).Probe(context.Background(), &csipb.ProbeRequest{})
			must(b, err)
			conn.Close()
		}
	})
	b.Run("publish+unpublish", func(b *testing.B) {
		for b.Loop() {
			conn := dial()
			_, err := csipb.NewNodeClient(conn).NodePublishVolume(context.Background(), publishRequest(uid, target))
			must(b, err)
			conn.Close()
			conn = dial()
			_, err = csipb.NewNodeClient(conn).NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-" + uid, TargetPath: target})
			must(b, err)
			conn.Close()
		}
	})
}
