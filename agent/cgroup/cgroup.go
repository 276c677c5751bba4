// Package cgroup finds the Kubernetes pod and container of a process from
// its /proc/<pid>/cgroup file, for cgroup v1 and v2, with the systemd and
// cgroupfs drivers of the kubelet and the containerd, CRI-O and Docker
// runtimes.
//
// Only cgroups that the kubelet made count: a path must lie under the
// kubelet's cgroup root for pods (Layout.Roots), with the pod's cgroup
// right below the root or below its QoS class, and the container's right
// below the pod's. Anyone with a delegated cgroup subtree (a systemd user
// session, a Delegate=yes service, rootless containers) can make cgroups
// named pod<uid>/<container-id> elsewhere and move into them; only root
// can make them under the kubelet's root.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Container is where a process runs.
type Container struct {
	// PodUID is the pod's UID as the API server spells it (dashes).
	PodUID string
	// ContainerID is the runtime's 64-hex-digit container ID; empty for a
	// process of the pod's cgroup that is in no container.
	ContainerID string
}

// ErrNotInPod means the process is not in a Kubernetes pod's cgroup.
var ErrNotInPod = errors.New("cgroup: process is not in a pod")

// DefaultRoots are the kubelet's pod cgroup roots with its default
// --cgroup-root: /kubepods with the cgroupfs driver, /kubepods.slice with
// the systemd driver.
var DefaultRoots = []string{"/kubepods", "/kubepods.slice"}

// Layout is where the kubelet puts pods, seen from the reading process.
type Layout struct {
	// Roots are host paths of the kubelet's pod cgroup roots. If empty,
	// DefaultRoots.
	Roots []string
	// NSDepth is, per hierarchy ID (the first field of a line), how deep
	// the reader's cgroup namespace root lies in the host's tree: 0 when
	// the reader is in the host's cgroup namespace. The kernel writes the
	// paths of processes outside the reader's namespace relative to it,
	// starting with "/..". A reader in its own namespace (an agent in a
	// container) must be in a pod itself: its namespace root is then taken
	// to lie under a kubelet root. See DetectLayout.
	NSDepth map[string]int
}

// DetectLayout reads how deep this process's cgroup namespace root lies,
// from the view of PID 1 (the host's init, with the host's PID namespace),
// whose path starts with one "/.." per level.
func DetectLayout(procRoot string, roots []string) (Layout, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	l := Layout{Roots: roots, NSDepth: map[string]int{}}
	raw, err := os.ReadFile(procRoot + "/1/cgroup")
	if err != nil {
		return l, fmt.Errorf("cgroup: %w", err)
	}
	for _, line := range strings.Split(strings.TrimRight(string(raw), "\n"), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		if up := upLevels(strings.Split(parts[2][1:], "/")); up > 0 {
			l.NSDepth[parts[0]] = up
		}
	}
	return l, nil
}

// Read parses /proc/<pid>/cgroup under procRoot ("/proc" if empty).
func Read(procRoot string, pid int32, l Layout) (Container, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	raw, err := os.ReadFile(procRoot + "/" + strconv.Itoa(int(pid)) + "/cgroup")
	if err != nil {
		return Container{}, fmt.Errorf("cgroup: %w", err)
	}
	return Parse(string(raw), l)
}

// Parse reads the contents of a /proc/<pid>/cgroup file. Every line is
// "hierarchy-ID:controllers:path". A line whose path is "/" (a hierarchy
// the kubelet does not use) is skipped; every other line must name the
// same pod (and container) under a kubelet root, or the process is not in
// a pod (ErrNotInPod).
func Parse(content string, l Layout) (Container, error) {
	roots := l.Roots
	if len(roots) == 0 {
		roots = DefaultRoots
	}
	var found Container
	seen := false
	for n, line := range strings.Split(strings.TrimRight(content, "\n"), "\n") {
		if line == "" {
			continue
		}
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			return Container{}, fmt.Errorf("cgroup: line %d: want hierarchy:controllers:/path, got %q", n+1, truncate(line))
		}
		if parts[2] == "/" {
			continue
		}
		c, err := fromPath(parts[2], l.NSDepth[parts[0]], roots)
		if err != nil {
			return Container{}, fmt.Errorf("cgroup: line %d: %w", n+1, err)
		}
		if seen && c != found {
			return Container{}, fmt.Errorf("cgroup: lines disagree: pod %s container %q, then pod %s container %q",
				found.PodUID, found.ContainerID, c.PodUID, c.ContainerID)
		}
		found, seen = c, true
	}
	if !seen {
		return Container{}, ErrNotInPod
	}
	return found, nil
}

// fromPath finds the pod and container of a cgroup path whose first
// segments (nsDepth of them, minus its "/.." segments) are the reader's
// own ancestors.
func fromPath(p string, nsDepth int, roots []string) (Container, error) {
	segs := strings.Split(p[1:], "/")
	up := upLevels(segs)
	if up > nsDepth {
		return Container{}, fmt.Errorf("path %q leaves the host's cgroup root", truncate(p))
	}
	rest := segs[up:]
	for _, s := range rest {
		if s == "" || s == "." || s == ".." {
			return Container{}, fmt.Errorf("path %q is not clean", truncate(p))
		}
	}
	// unknown: how many leading segments of the host path are the
	// reader's own ancestors, which the kernel leaves out.
	unknown := nsDepth - up
	for _, root := range roots {
		r := strings.Split(strings.Trim(root, "/"), "/")
		if unknown < len(r) {
			if len(rest) < len(r)-unknown || strings.Join(rest[:len(r)-unknown], "/") != strings.Join(r[unknown:], "/") {
				continue
			}
		}
		// below is what follows the root, as far as the path shows it.
		below := rest[max(0, len(r)-unknown):]
		known := max(0, unknown-len(r)) // segments below the root that are the reader's own
		switch known {
		case 0:
			if len(below) > 0 && qosClass(below[0]) {
				below = below[1:]
			}
		case 1:
			// The reader's own QoS class (below[0] is then a pod) or its
			// own pod (below[0] is then a container, which is no pod).
		default:
			// Inside the reader's own pod.
			continue
		}
		if len(below) == 0 {
			continue
		}
		uid, ok := podUID(below[0])
		if !ok {
			continue
		}
		c := Container{PodUID: uid}
		if len(below) > 1 {
			id, err := containerID(below[1])
			if err != nil {
				return Container{}, err
			}
			c.ContainerID = id
		}
		return c, nil
	}
	return Container{}, fmt.Errorf("%w: %s is not a pod's cgroup under the kubelet's root (%s)", ErrNotInPod, truncate(p), strings.Join(roots, ", "))
}

// upLevels counts the leading ".." segments of a path relative to the
// reader's cgroup namespace: how far above it the path climbs.
func upLevels(segs []string) int {
	up := 0
	for up < len(segs) && segs[up] == ".." {
		up++
	}
	return up
}

// qosClass recognises the kubelet's QoS class cgroups: "besteffort" and
// "burstable" (cgroupfs), "<root>-besteffort.slice" and
// "<root>-burstable.slice" (systemd).
func qosClass(seg string) bool {
	switch {
	case seg == "besteffort" || seg == "burstable":
		return true
	case strings.HasSuffix(seg, "-besteffort.slice") || strings.HasSuffix(seg, "-burstable.slice"):
		return !strings.Contains(seg, "-pod")
	}
	return false
}

// podUID recognises "pod<uid>" (cgroupfs driver) and
// "[...-]kubepods[-<qos>]-pod<uid with underscores>.slice" (systemd driver).
func podUID(seg string) (string, bool) {
	var raw string
	switch {
	case strings.Contains(seg, "kubepods") && strings.HasSuffix(seg, ".slice"):
		// Also "kubelet-kubepods-...", as kubelets inside a node container
		// (kind) name them.
		i := strings.LastIndex(seg, "-pod")
		if i < 0 {
			return "", false
		}
		raw = strings.ReplaceAll(strings.TrimSuffix(seg[i+len("-pod"):], ".slice"), "_", "-")
	case strings.HasPrefix(seg, "pod"):
		raw = seg[len("pod"):]
	default:
		return "", false
	}
	// API server UIDs are 36 characters with dashes; static pods' are 32 hex
	// digits (a hash of the manifest).
	if len(raw) != 36 && len(raw) != 32 {
		return "", false
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return "", false
		}
	}
	return raw, true
}

// containerID reads the segment after the pod's: "<id>" (cgroupfs),
// "cri-containerd-<id>.scope", "crio-<id>.scope" or "docker-<id>.scope"
// (systemd). CRI-O's "crio-conmon-<id>.scope" is the monitor, not the
// container, and gives "".
func containerID(seg string) (string, error) {
	if strings.HasPrefix(seg, "crio-conmon-") {
		return "", nil
	}
	id := strings.TrimSuffix(seg, ".scope")
	for _, p := range []string{"cri-containerd-", "crio-", "docker-", "containerd-"} {
		id = strings.TrimPrefix(id, p)
	}
	if len(id) != 64 {
		return "", fmt.Errorf("container segment %q holds no 64-digit container ID", truncate(seg))
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("container segment %q holds no 64-digit container ID", truncate(seg))
		}
	}
	return id, nil
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
