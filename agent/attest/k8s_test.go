package attest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/signet-id/signet/agent/kubelet"
	"github.com/signet-id/signet/agent/kubelet/kubelettest"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
)

const (
	podUID = "8dbc5577-d0b9-4d32-8f5f-8c3d3fb0b5a1"
	ctrID  = "2d9be2b3cbd8c35c1e4ac2b0ebd9a01b8a3d3b4d5e6f708192a3b4c5d6e7f809"
)

type fakePods struct {
	calls int
	lists [][]corev1.Pod
	err   error
}

func (f *fakePods) Pods(context.Context) ([]corev1.Pod, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	i := min(f.calls-1, len(f.lists)-1)
	return f.lists[i], nil
}

func testPod(withStatus bool) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "payments", UID: podUID, Labels: map[string]string{"app": "api", "tier": "web"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "api", NodeName: "node1"},
	}
	if withStatus {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", Image: "registry.local/api:1", ImageID: "registry.local/api@sha256:00", ContainerID: "containerd://" + ctrID,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}
	}
	return p
}

func procWithCgroup(t *testing.T, pid int, content string) string {
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(pid))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "cgroup"), []byte(content), 0o644)
	// In a container's PID namespace, as its processes are.
	os.WriteFile(filepath.Join(dir, "status"), []byte("Name:\tapi\nNSpid:\t"+strconv.Itoa(pid)+"\t7\n"), 0o644)
	return root
}

// TestK8sCrossChecks: the cgroup is not enough. A process in the host's
// PID namespace is not in a container of a pod that has its own, and a
// container the kubelet reports stopped attests nothing.
func TestK8sCrossChecks(t *testing.T) {
	cg := "0::/kubepods/besteffort/pod" + podUID + "/" + ctrID + "\n"
	root := procWithCgroup(t, 50, cg)
	os.WriteFile(filepath.Join(root, "50", "status"), []byte("Name:\tsh\nNSpid:\t50\n"), 0o644)
	k := &K8s{Pods: &fakePods{lists: [][]corev1.Pod{{testPod(true)}}}, ProcRoot: root}
	if _, err := k.Attest(context.Background(), peercred.Creds{PID: 50}); err == nil || !strings.Contains(err.Error(), "PID namespace") {
		t.Fatalf("a host-namespace process in the container's cgroup: %v", err)
	}
	// The same for a hostPID pod is its own process.
	hostPID := testPod(true)
	hostPID.Spec.HostPID = true
	k = &K8s{Pods: &fakePods{lists: [][]corev1.Pod{{hostPID}}}, ProcRoot: root}
	if _, err := k.Attest(context.Background(), peercred.Creds{PID: 50}); err != nil {
		t.Fatalf("a hostPID pod's process: %v", err)
	}
	stopped := testPod(true)
	stopped.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}
	k = &K8s{Pods: &fakePods{lists: [][]corev1.Pod{{stopped}}}, ProcRoot: procWithCgroup(t, 51, cg), Patience: 100 * time.Millisecond}
	if _, err := k.Attest(context.Background(), peercred.Creds{PID: 51}); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("a stopped container: %v", err)
	}
}

func TestK8sAttestsAContainer(t *testing.T) {
	root := procWithCgroup(t, 42, "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"+strings.ReplaceAll(podUID, "-", "_")+".slice/cri-containerd-"+ctrID+".scope\n")
	// The first list predates the container: the attestor lists again.
	pods := &fakePods{lists: [][]corev1.Pod{{testPod(false)}, {testPod(true)}}}
	k := &K8s{Pods: pods, ProcRoot: root}
	sels, err := k.Attest(context.Background(), peercred.Creds{PID: 42})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"k8s:ns:payments", "k8s:sa:api", "k8s:pod-name:api-1", "k8s:pod-uid:" + podUID, "k8s:node-name:node1",
		"k8s:pod-label:app:api", "k8s:pod-label:tier:web", "k8s:container-name:main", "k8s:container-image:registry.local/api:1",
		"k8s:container-image:registry.local/api@sha256:00"}
	var got []string
	for _, s := range sels {
		got = append(got, s.String())
		if err := s.Validate(); err != nil {
			t.Errorf("invalid selector: %v", err)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("selectors:\n got %v\nwant %v", got, want)
	}
	if pods.calls != 2 {
		t.Errorf("kubelet listed %d times; want 2 (a miss lists again)", pods.calls)
	}
	// Cached now: no new list.
	if _, err := k.Attest(context.Background(), peercred.Creds{PID: 42}); err != nil || pods.calls != 2 {
		t.Errorf("second attest: %v, %d lists", err, pods.calls)
	}
}

// TestK8sWaitsForANewContainer: a container the kubelet reports only on
// its fourth list (it just started) is attested, not refused.
func TestK8sWaitsForANewContainer(t *testing.T) {
	root := procWithCgroup(t, 43, "4:memory:/kubepods/besteffort/pod"+podUID+"/"+ctrID+"\n")
	pods := &fakePods{lists: [][]corev1.Pod{{}, {testPod(false)}, {testPod(false)}, {testPod(true)}}}
	k := &K8s{Pods: pods, ProcRoot: root}
	sels, err := k.Attest(context.Background(), peercred.Creds{PID: 43})
	if err != nil {
		t.Fatal(err)
	}
	if pods.calls != 4 || sels[len(sels)-2].String() != "k8s:container-image:registry.local/api:1" {
		t.Fatalf("%d lists, selectors %v", pods.calls, sels)
	}
}

func TestK8sRefusals(t *testing.T) {
	inPod := "0::/kubepods/burstable/pod" + podUID + "/" + ctrID + "\n"
	for name, tt := range map[string]struct {
		cgroup  string
		pods    *fakePods
		wantErr string
		wantNil bool
	}{
		"host process":     {cgroup: "0::/system.slice/sshd.service\n", pods: &fakePods{lists: [][]corev1.Pod{{}}}, wantNil: true},
		"pod not on node":  {cgroup: inPod, pods: &fakePods{lists: [][]corev1.Pod{{}}}, wantErr: "not on this node"},
		"container not up": {cgroup: inPod, pods: &fakePods{lists: [][]corev1.Pod{{testPod(false)}}}, wantErr: "not (yet)"},
		"kubelet down":     {cgroup: inPod, pods: &fakePods{err: errors.New("connection refused")}, wantErr: "connection refused"},
		"bad cgroup":       {cgroup: "nonsense\n", pods: &fakePods{lists: [][]corev1.Pod{{}}}, wantErr: "want hierarchy"},
	} {
		t.Run(name, func(t *testing.T) {
			k := &K8s{Pods: tt.pods, ProcRoot: procWithCgroup(t, 7, tt.cgroup), Patience: 200 * time.Millisecond}
			sels, err := k.Attest(context.Background(), peercred.Creds{PID: 7})
			if tt.wantNil {
				if err != nil || sels != nil {
					t.Fatalf("Attest = %v, %v; want no selectors", sels, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Attest = %v, %v; want error %q", sels, err, tt.wantErr)
			}
		})
	}
}

func TestMultiJoins(t *testing.T) {
	root := procWithCgroup(t, 9, "0::/kubepods/pod"+podUID+"/"+ctrID+"\n")
	m := Multi{&K8s{Pods: &fakePods{lists: [][]corev1.Pod{{testPod(true)}}}, ProcRoot: root}, fixed{{Type: "unix", Value: "uid:0"}}}
	sels, err := m.Attest(context.Background(), peercred.Creds{PID: 9})
	if err != nil || len(sels) != 11 || sels[10].String() != "unix:uid:0" {
		t.Fatalf("Multi = %v, %v", sels, err)
	}
}

type fixed []selector.Selector

func (f fixed) Attest(context.Context, peercred.Creds) ([]selector.Selector, error) { return f, nil }

// TestK8sRecorded attests a process with the cgroup file and the kubelet
// answer recorded on a real node, through the real kubelet client over TLS.
func TestK8sRecorded(t *testing.T) {
	cg, err := os.ReadFile("../cgroup/testdata/v1-cgroupfs-containerd-burstable-recorded.txt")
	if err != nil {
		t.Fatal(err)
	}
	srv := kubelettest.StartRecorded(t)
	kc, err := kubelet.New(kubelet.Config{URL: srv.URL, TokenFile: srv.TokenFile, CAFile: srv.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	k := &K8s{Pods: kc, ProcRoot: procWithCgroup(t, 29835, string(cg))}
	sels, err := k.Attest(context.Background(), peercred.Creds{PID: 29835})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sels {
		got = append(got, s.String())
	}
	for _, want := range []string{"k8s:ns:demo", "k8s:sa:web", "k8s:pod-name:web-1", "k8s:pod-uid:749b9371-8820-4411-b435-9ca8cfb3fa48",
		"k8s:node-name:signet-node", "k8s:pod-label:app:web", "k8s:container-name:main"} {
		if !slices.Contains(got, want) {
			t.Errorf("selector %s missing from %v", want, got)
		}
	}
}

// TestK8sPartial: asked to answer early, the attestor answers for a container the
// kubelet does not report yet with its pod's selectors after one list,
// and says so; without that it waits for the container.
func TestK8sPartial(t *testing.T) {
	root := procWithCgroup(t, 44, "0::/kubepods/besteffort/pod"+podUID+"/"+ctrID+"\n")
	pods := &fakePods{lists: [][]corev1.Pod{{testPod(false)}, {testPod(false)}, {testPod(true)}}}
	k := &K8s{Pods: pods, ProcRoot: root}
	sels, partial, err := k.AttestEarly(context.Background(), peercred.Creds{PID: 44})
	if err != nil || !partial || pods.calls != 1 {
		t.Fatalf("partial attest: %v, partial %v, %d lists", err, partial, pods.calls)
	}
	for _, s := range sels {
		if strings.HasPrefix(s.Value, "container-") {
			t.Fatalf("partial answer has container selectors: %v", sels)
		}
	}
	if !slices.ContainsFunc(sels, func(s selector.Selector) bool { return s.Value == "pod-uid:"+podUID }) {
		t.Fatalf("no pod UID: %v", sels)
	}
	sels, err = k.Attest(context.Background(), peercred.Creds{PID: 44})
	if err != nil || sels[len(sels)-3].String() != "k8s:container-name:main" {
		t.Fatalf("full attest: %v %v", sels, err)
	}
}
