package attack

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/signet-id/signet/e2e/nodeenv"
)

// TestCSIVolumeIsReadOnly: a root container (the capabilities a runtime
// gives by default, no privilege) with the agent's CSI volume tries every
// way to put a socket of its own where the node's pods look for the
// agent's, or to take the agent's away: the kubelet's real CSI path
// mounts the volume, and every change fails. A volume asked for writable
// is never mounted.
func TestCSIVolumeIsReadOnly(t *testing.T) {
	ctx := context.Background()
	c := env.Cluster.Client
	namespace(t, "attack-csi", nil)
	if err := env.ServiceAccount(ctx, "attack-csi", "default"); err != nil {
		t.Fatal(err)
	}
	zero, no := int64(0), false
	p := nodeenv.CSIPod("attack-csi", "writer", "default", attackerImage, nodeenv.CSIDriver)
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &zero}
	p.Spec.Containers[0].SecurityContext = nil
	p.Spec.Containers[0].Args = []string{"socketdir", "/run/signet"}
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	// The container's mount says read-only too: the attack is on what is
	// underneath.
	p.Spec.Containers[0].VolumeMounts[0].ReadOnly = false
	p, err := c.CoreV1().Pods("attack-csi").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer env.DeletePod(t, p)
	var r attackResult
	got := false
	deadline := time.Now().Add(90 * time.Second)
	for !got {
		if time.Now().After(deadline) {
			st, _ := c.CoreV1().Pods("attack-csi").Get(ctx, p.Name, metav1.GetOptions{})
			t.Fatalf("the attacker in the pod printed nothing; pod status %+v", st.Status)
		}
		log, _ := env.Node.PodLog("attack-csi", p.Name, string(p.UID), "main")
		sc := bufio.NewScanner(strings.NewReader(log))
		for sc.Scan() {
			if f := strings.SplitN(sc.Text(), " ", 4); len(f) == 4 && f[1] == "stdout" && json.Unmarshal([]byte(f[3]), &r) == nil {
				got = true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(r.Changed) > 0 {
		t.Errorf("from inside a pod, the socket's directory could be changed: %v", r.Changed)
	}
	if strings.Join(r.Entries, ",") != "agent.sock" {
		t.Errorf("the pod's volume holds %v, want the agent's socket only", r.Entries)
	}
	// The volume itself, where the kubelet has it: a process that reaches
	// the kubelet's pods directory (a hostPath of it, root on the host)
	// cannot write through it either. The container's mount is read-only
	// by the kubelet; this one only by the plugin.
	target := filepath.Join(env.Node.RootDir(), "pods", string(p.UID), "volumes", "kubernetes.io~csi", "signet", "mount")
	if err := os.WriteFile(filepath.Join(target, "fake.sock"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("root on the host writing into the pod's volume at %s: %v, want EROFS", target, err)
	}
	// On the host, the directory is as the agent left it.
	entries, err := os.ReadDir(env.Signet.SocketDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "agent.sock" {
		t.Errorf("the host's socket directory holds %v after the attack", entries)
	}

	// A volume asked for writable: the plugin refuses it, the kubelet
	// says why, and the pod never starts.
	w := nodeenv.CSIPod("attack-csi", "writable", "default", attackerImage, nodeenv.CSIDriver)
	w.Spec.Volumes[0].CSI.ReadOnly = &no
	w, err = c.CoreV1().Pods("attack-csi").Create(ctx, w, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer env.DeletePod(t, w)
	var msg string
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(msg, "read-only"); {
		if time.Now().After(deadline) {
			t.Fatalf("no FailedMount event saying the volume must be read-only; last %q", msg)
		}
		events, _ := c.CoreV1().Events("attack-csi").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=writable"})
		for _, e := range events.Items {
			if e.Reason == "FailedMount" {
				msg = e.Message
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, err := c.CoreV1().Pods("attack-csi").Get(ctx, w.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status.Phase == corev1.PodRunning {
		t.Error("the pod with a writable socket volume runs")
	}
}

// TestCSISocketsAreRootOnly: an unprivileged local user cannot reach the
// agent's CSI plugin socket (it would mount the socket directory, or
// unmount pods' volumes) nor its kubelet registration socket.
func TestCSISocketsAreRootOnly(t *testing.T) {
	reg := filepath.Join(env.Node.RootDir(), "plugins_registry", nodeenv.CSIDriver+"-reg.sock")
	for _, s := range []string{env.Signet.CSISocket, reg} {
		if _, err := os.Stat(s); err != nil {
			t.Fatalf("the socket under attack is not there: %v", err)
		}
	}
	got := runAttacker(t, false, nil, "dial", env.Signet.CSISocket, reg)
	if len(got.Changed) > 0 {
		t.Errorf("an unprivileged user reached %v", got.Changed)
	}
	// As root the same command reaches both: the test can fail.
	if got := runAttacker(t, true, nil, "dial", env.Signet.CSISocket, reg); len(got.Changed) != 2 {
		t.Fatalf("root reached %v, want both sockets", got.Changed)
	}
}
