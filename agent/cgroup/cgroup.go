// Package cgroup finds the Kubernetes pod and container of a process from
// its /proc/<pid>/cgroup file, for cgroup v1 and v2, with the systemd and
// cgroupfs drivers of the kubelet and the containerd, CRI-O and Docker
// runtimes.
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

// Read parses /proc/<pid>/cgroup under procRoot ("/proc" if empty).
func Read(procRoot string, pid int32) (Container, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	raw, err := os.ReadFile(procRoot + "/" + strconv.Itoa(int(pid)) + "/cgroup")
	if err != nil {
		return Container{}, fmt.Errorf("cgroup: %w", err)
	}
	return Parse(string(raw))
}

// Parse reads the contents of a /proc/<pid>/cgroup file. Every line is
// "hierarchy-ID:controllers:path". All lines that name a pod must name the
// same one; a file that names none gives ErrNotInPod.
func Parse(content string) (Container, error) {
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
		c, ok, err := fromPath(parts[2])
		if err != nil {
			return Container{}, fmt.Errorf("cgroup: line %d: %w", n+1, err)
		}
		if !ok {
			continue
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

// fromPath finds a pod segment ("pod<uid>" or "kubepods-...-pod<uid>.slice")
// in a cgroup path and the container segment after it, if any.
func fromPath(path string) (Container, bool, error) {
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		uid, ok := podUID(seg)
		if !ok {
			continue
		}
		c := Container{PodUID: uid}
		if i+1 < len(segs) {
			id, err := containerID(segs[i+1])
			if err != nil {
				return Container{}, false, err
			}
			c.ContainerID = id
		}
		return c, true, nil
	}
	return Container{}, false, nil
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
