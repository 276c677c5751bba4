package attack

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/signet-id/signet/e2e/nodeenv"
)

// delegate makes a cgroup directory in every hierarchy mounted on this
// host and hands it to uid, as systemd does for a user session or a
// Delegate=yes service. It returns the directories, and an open cgroup2
// directory (or nil) to start a process in, since cgroup v2 lets a
// process move only within a subtree its user owns.
func delegate(t *testing.T, uid int) (dirs []string, v2 *os.File) {
	t.Helper()
	name := fmt.Sprintf("signet-attack-%d", time.Now().UnixNano())
	for _, m := range cgroupMounts(t) {
		dir := filepath.Join(m.dir, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { removeTree(dir) })
		if strings.HasSuffix(m.dir, "/cpuset") {
			// New cpuset cgroups start with no CPUs; children copy these.
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, _ := os.ReadFile(filepath.Join(m.dir, file))
				os.WriteFile(filepath.Join(dir, file), v, 0)
			}
			os.WriteFile(filepath.Join(dir, "cgroup.clone_children"), []byte("1"), 0)
		}
		for _, file := range []string{"", "cgroup.procs", "tasks", "cgroup.threads", "cgroup.subtree_control"} {
			if err := os.Chown(filepath.Join(dir, file), uid, uid); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
		}
		dirs = append(dirs, dir)
		if m.v2 {
			var err error
			if v2, err = os.Open(dir); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { v2.Close() })
		}
	}
	return dirs, v2
}

type cgroupMount struct {
	dir string
	v2  bool
}

// cgroupMounts are the cgroup hierarchies mounted on this host.
func cgroupMounts(t *testing.T) []cgroupMount {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "... mount-point options - fstype source super-options"
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, fs := strings.Fields(pre), strings.Fields(post)
		if ok && len(fields) >= 5 && len(fs) >= 1 && (fs[0] == "cgroup" || fs[0] == "cgroup2") {
			out = append(out, cgroupMount{dir: fields[4], v2: fs[0] == "cgroup2"})
		}
	}
	if len(out) == 0 {
		t.Fatal("no cgroup hierarchy is mounted")
	}
	return out
}

// removeTree removes a cgroup directory and the ones below it, leaves
// first (cgroupfs has only directories to remove).
func removeTree(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			removeTree(filepath.Join(dir, e.Name()))
		}
	}
	for i := 0; i < 100 && os.Remove(dir) != nil; i++ {
		time.Sleep(10 * time.Millisecond) // the attacker's exit is seen a moment later
	}
}

type attackResult struct {
	SPIFFEID string   `json:"spiffe_id"`
	Error    string   `json:"error"`
	Changed  []string `json:"changed"`
	Entries  []string `json:"entries"`
}

// runAttacker runs the attacker binary as uid 65534 (or root) and reads
// its result.
func runAttacker(t *testing.T, root bool, cgroupDir *os.File, args ...string) attackResult {
	t.Helper()
	cmd := attacker(args...)
	if root {
		cmd.SysProcAttr.Credential = nil
	}
	if cgroupDir != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroupDir.Fd())
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("attacker: %v\n%s", err, stderr.String())
	}
	t.Logf("attacker stderr:\n%s", stderr.String())
	var r attackResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("attacker output %q: %v", out, err)
	}
	return r
}

// TestForgedPodCgroup: an unprivileged host user with a delegated cgroup
// subtree makes pod<victim-uid>/<victim-container-id> in it (both IDs are
// readable in /proc by anyone), moves into it, and asks the agent for an
// SVID. The agent must not take it for the victim's container; the
// victim's real container gets its identity.
func TestForgedPodCgroup(t *testing.T) {
	p, containerID := victim(t, "victim")
	dirs, v2 := delegate(t, 65534)
	got := runAttacker(t, false, v2, append([]string{"cgroup", filepath.Join(env.Signet.SocketDir, "agent.sock"), string(p.UID), containerID}, dirs...)...)
	if got.SPIFFEID != "" {
		t.Fatalf("a host process in a forged cgroup got %s", got.SPIFFEID)
	}
	if !strings.Contains(got.Error, "PermissionDenied") {
		t.Fatalf("the attacker was not refused as unknown: %s", got.Error)
	}
	// It was attested as what it is: a host process of uid 65534.
	env.FindAudit(t, func(rec map[string]any) bool {
		if rec["result"] != "refused" {
			return false
		}
		sels := strings.Join(nodeenv.Strs(rec["selectors"]), " ")
		return strings.Contains(sels, "unix:uid:65534") && !strings.Contains(sels, "k8s:")
	})
}

// victim runs a workload pod, checks that its real container gets its
// identity, and returns the pod and its container's ID.
func victim(t *testing.T, name string) (*corev1.Pod, string) {
	t.Helper()
	p, r, _ := env.RunWorkload(t, "attack-cgroup", name, name)
	t.Cleanup(func() { env.DeletePod(t, p) })
	if want := "spiffe://example.org/ns/attack-cgroup/sa/" + name; r.SPIFFEID != want {
		t.Fatalf("the victim's real container got %q (%v), want %s", r.SPIFFEID, r.Errors, want)
	}
	var containerID string
	eventually(t, 30*time.Second, "the victim's container ID", func() bool {
		got, err := env.Cluster.Client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{})
		if err == nil && len(got.Status.ContainerStatuses) == 1 && got.Status.ContainerStatuses[0].State.Running != nil {
			_, containerID, _ = strings.Cut(got.Status.ContainerStatuses[0].ContainerID, "://")
		}
		return containerID != ""
	})
	return p, containerID
}

// TestHostProcessInContainerCgroup: a host process placed in a running
// container's own cgroups, under the kubelet's root (only root can put it
// there), is still not that container: it is in the host's PID
// namespace, and the pod has its own. The agent refuses it.
func TestHostProcessInContainerCgroup(t *testing.T) {
	p, containerID := victim(t, "victim-2")
	var dirs []string
	for _, m := range cgroupMounts(t) {
		filepath.WalkDir(m.dir, func(path string, d fs.DirEntry, err error) error {
			switch {
			case err != nil || !d.IsDir():
				return nil
			case strings.Contains(d.Name(), containerID) && strings.Contains(strings.ReplaceAll(path, "_", "-"), string(p.UID)):
				dirs = append(dirs, path)
				return fs.SkipDir
			case path != m.dir && !strings.Contains(path, "kubepods"):
				return fs.SkipDir // only the kubelet's part of the tree
			}
			return nil
		})
	}
	if len(dirs) == 0 {
		t.Fatalf("no cgroup of container %.12s found", containerID)
	}
	got := runAttacker(t, true, nil, append([]string{"join", filepath.Join(env.Signet.SocketDir, "agent.sock")}, dirs...)...)
	if got.SPIFFEID != "" || !strings.Contains(got.Error, "PermissionDenied") {
		t.Fatalf("a host process in the container's cgroups: %+v", got)
	}
	env.FindAudit(t, func(rec map[string]any) bool {
		return rec["result"] == "refused" && strings.Contains(fmt.Sprint(rec["reason"]), "PID namespace")
	})
}
