package attest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/signet-id/signet/agent/cgroup"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
)

// PodLister lists this node's pods (the kubelet client).
type PodLister interface {
	Pods(ctx context.Context) ([]corev1.Pod, error)
}

// K8s attests processes in pods: the process's cgroup names its pod UID and
// container ID, and the kubelet's view of that pod gives the selectors.
type K8s struct {
	Pods PodLister
	// ProcRoot is where /proc is mounted. If empty, "/proc".
	ProcRoot string
	// Cgroups is where the kubelet puts pods (cgroup.DetectLayout); a
	// process counts as a pod's only if its cgroup lies there.
	Cgroups cgroup.Layout
	// MaxAge is how long a pod list is reused. If zero, one second. A pod
	// or container the list does not know yet makes a fresh list at once.
	MaxAge time.Duration
	// Patience is how long a container that the kubelet does not report
	// yet (it just started) is waited for, asking again after 5 ms, then
	// backing off to every 50 ms. If zero, three seconds.
	Patience time.Duration

	mu     sync.Mutex
	pods   map[string]*corev1.Pod
	listAt time.Time
}

// Attest returns the k8s selectors of a process in a pod, and none for a
// process in no pod. A container the kubelet does not report yet (it just
// started) is waited for, within Patience.
func (k *K8s) Attest(ctx context.Context, c peercred.Creds) ([]selector.Selector, error) {
	sels, _, err := k.attest(ctx, c, false)
	return sels, err
}

// AttestEarly is Attest without the wait: for a container the kubelet
// does not report yet, it answers after one fresh list with the pod's
// selectors only (no container-name or container-image), and podOnly
// true. The pod comes from the process's own cgroup, so the pod-level
// selectors are as sure as in a full answer; a caller whose entries need
// container selectors is attested again with Attest.
func (k *K8s) AttestEarly(ctx context.Context, c peercred.Creds) (sels []selector.Selector, podOnly bool, err error) {
	return k.attest(ctx, c, true)
}

func (k *K8s) attest(ctx context.Context, c peercred.Creds, early bool) ([]selector.Selector, bool, error) {
	ctr, err := cgroup.Read(k.ProcRoot, c.PID, k.Cgroups)
	if errors.Is(err, cgroup.ErrNotInPod) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("attest: process %d: %w", c.PID, err)
	}
	pod, status, err := k.find(ctx, ctr, early)
	if err != nil {
		return nil, false, fmt.Errorf("attest: process %d: %w", c.PID, err)
	}
	// Cross-checks with the kubelet's view: the container must be running,
	// and the caller must be in a PID namespace of its own unless the pod
	// shares the host's (a host process in a container's cgroup is not in
	// that container).
	if status != nil && status.State.Running == nil {
		return nil, false, fmt.Errorf("attest: process %d: container %s of pod %s/%s is not running", c.PID, status.Name, pod.Namespace, pod.Name)
	}
	if levels, err := pidNamespaceLevels(k.ProcRoot, c.PID); err != nil {
		return nil, false, fmt.Errorf("attest: process %d: %w", c.PID, err)
	} else if levels > 0 && (levels == 1) != pod.Spec.HostPID {
		return nil, false, fmt.Errorf("attest: process %d is in %d PID namespace levels below this agent's, which pod %s/%s (hostPID %t) does not run in",
			c.PID, levels-1, pod.Namespace, pod.Name, pod.Spec.HostPID)
	}
	return podSelectors(pod, status), status == nil && ctr.ContainerID != "", nil
}

// find returns the pod and container status of ctr; with early, a
// container that a fresh list does not show yet gets no status rather
// than a wait.
func (k *K8s) find(ctx context.Context, ctr cgroup.Container, early bool) (*corev1.Pod, *corev1.ContainerStatus, error) {
	maxAge := k.MaxAge
	if maxAge == 0 {
		maxAge = time.Second
	}
	patience := k.Patience
	if patience == 0 {
		patience = 3 * time.Second
	}
	giveUp := time.Now().Add(patience)
	for attempt := 0; ; attempt++ {
		fresh := attempt > 0
		k.mu.Lock()
		stale := k.pods == nil || time.Since(k.listAt) > maxAge
		k.mu.Unlock()
		if attempt > 1 {
			// Not known yet (the container started a moment ago): ask
			// again shortly rather than fail the caller, every 5 ms at
			// first, backing off to 50 ms.
			select {
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			case <-time.After(min(5*time.Millisecond<<(attempt-2), 50*time.Millisecond)):
			}
		}
		listed := fresh || stale
		if listed {
			if err := k.refresh(ctx); err != nil {
				return nil, nil, err
			}
		}
		k.mu.Lock()
		pod := k.pods[ctr.PodUID]
		k.mu.Unlock()
		if pod != nil {
			if ctr.ContainerID == "" {
				return pod, nil, nil
			}
			if st := containerStatus(pod, ctr.ContainerID); st != nil {
				return pod, st, nil
			}
			if listed && early {
				return pod, nil, nil
			}
		}
		if fresh && !time.Now().Before(giveUp) {
			if pod == nil {
				return nil, nil, fmt.Errorf("pod %s is not on this node's kubelet", ctr.PodUID)
			}
			return nil, nil, fmt.Errorf("container %.12s is not (yet) in pod %s/%s's status", ctr.ContainerID, pod.Namespace, pod.Name)
		}
	}
}

func (k *K8s) refresh(ctx context.Context) error {
	pods, err := k.Pods.Pods(ctx)
	if err != nil {
		return err
	}
	m := make(map[string]*corev1.Pod, len(pods))
	for i := range pods {
		m[string(pods[i].UID)] = &pods[i]
	}
	k.mu.Lock()
	k.pods, k.listAt = m, time.Now()
	k.mu.Unlock()
	return nil
}

// pidNamespaceLevels returns how many PID namespaces, from this agent's
// down, the process has a PID in (the NSpid line of its status, readable
// by anyone); 0 when the kernel does not say (before Linux 4.1).
func pidNamespaceLevels(procRoot string, pid int32) (int, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	raw, err := os.ReadFile(procRoot + "/" + strconv.Itoa(int(pid)) + "/status")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("process %d is gone", pid)
	}
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return len(strings.Fields(v)), nil
		}
	}
	return 0, nil
}

func containerStatus(pod *corev1.Pod, id string) *corev1.ContainerStatus {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.ContainerStatuses, pod.Status.InitContainerStatuses, pod.Status.EphemeralContainerStatuses} {
		for i := range list {
			// "containerd://<id>", "cri-o://<id>", "docker://<id>".
			if _, cid, ok := strings.Cut(list[i].ContainerID, "://"); ok && cid == id {
				return &list[i]
			}
		}
	}
	return nil
}

func podSelectors(pod *corev1.Pod, st *corev1.ContainerStatus) []selector.Selector {
	k := func(key, v string) selector.Selector { return selector.Selector{Type: "k8s", Value: key + ":" + v} }
	sels := []selector.Selector{
		k("ns", pod.Namespace), k("sa", pod.Spec.ServiceAccountName), k("pod-name", pod.Name),
		selector.PodUID(string(pod.UID)), k("node-name", pod.Spec.NodeName),
	}
	labels := make([]string, 0, len(pod.Labels))
	for l := range pod.Labels {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	for _, l := range labels {
		sels = append(sels, k("pod-label", l+":"+pod.Labels[l]))
	}
	if st != nil {
		sels = append(sels, k("container-name", st.Name), k("container-image", st.Image))
		if st.ImageID != "" && st.ImageID != st.Image {
			sels = append(sels, k("container-image", st.ImageID))
		}
	}
	return sels
}

// Multi runs several attestors and joins their selectors.
type Multi []interface {
	Attest(ctx context.Context, c peercred.Creds) ([]selector.Selector, error)
}

// AttestEarly implements the Workload API's Attestor: the attestors that
// can answer early (K8s) do; podOnly if any answered for the pod only.
func (m Multi) AttestEarly(ctx context.Context, c peercred.Creds) ([]selector.Selector, bool, error) {
	var all []selector.Selector
	podOnly := false
	for _, a := range m {
		var sels []selector.Selector
		var err error
		if e, ok := a.(interface {
			AttestEarly(context.Context, peercred.Creds) ([]selector.Selector, bool, error)
		}); ok {
			var p bool
			sels, p, err = e.AttestEarly(ctx, c)
			podOnly = podOnly || p
		} else {
			sels, err = a.Attest(ctx, c)
		}
		if err != nil {
			return nil, false, err
		}
		all = append(all, sels...)
	}
	return all, podOnly, nil
}

// Attest implements the Workload API's Attestor.
func (m Multi) Attest(ctx context.Context, c peercred.Creds) ([]selector.Selector, error) {
	var all []selector.Selector
	for _, a := range m {
		sels, err := a.Attest(ctx, c)
		if err != nil {
			return nil, err
		}
		all = append(all, sels...)
	}
	return all, nil
}
