// Package attack attacks Signet through its real interfaces: the shipped
// manifests applied to a real kube-apiserver, signet-ca and signet-agent
// as processes on a real node (kubelet, containerd, runc), their sockets
// and files, and unprivileged processes of the host. Each test is one
// attack that worked against an earlier Signet; README.md maps each to
// the invariant of docs/security-invariants.md that it breaks. Only one
// node can run on a machine, so make test runs this package apart.
package attack

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/signet-id/signet/e2e/nodeenv"
	"github.com/signet-id/signet/e2e/testenv"
)

var env *nodeenv.Env

// attackerImage runs the attacker command in a pod.
const attackerImage = "localhost/signet-e2e/attacker:1"

func TestMain(m *testing.M) {
	os.Exit(nodeenv.Main(m, &env, func(e *nodeenv.Env) error {
		out, err := exec.Command("go", "build", "-o", e.Bin+"/", "github.com/signet-id/signet/e2e/attack/attacker").CombinedOutput()
		if err != nil {
			return fmt.Errorf("build the attacker: %v\n%s", err, out)
		}
		// And as an image, for attacks from inside a pod.
		static := filepath.Join(e.Dir, "attacker-static")
		if err := testenv.BuildStatic("github.com/signet-id/signet/e2e/attack/attacker", static); err != nil {
			return err
		}
		return e.Node.ImportImage(attackerImage, static)
	}))
}

// attacker is the attacker command, to run as uid 65534.
func attacker(args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(env.Bin, "attacker"), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd
}

// startAttacker starts the attacker as uid 65534 in a process group of
// its own, and returns the first line it prints (within timeout) and a
// function that kills the group (a connecting process may have become
// another program).
func startAttacker(t testing.TB, timeout time.Duration, args ...string) ([]byte, func()) {
	t.Helper()
	cmd := attacker(args...)
	cmd.SysProcAttr.Setpgid = true
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }
	lines := make(chan []byte, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
		close(lines)
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			stop()
			t.Fatalf("attacker %s printed nothing:\n%s", args[0], stderr.String())
		}
		return line, stop
	case <-time.After(timeout):
		stop()
		t.Fatalf("attacker %s did not answer in %s:\n%s", args[0], timeout, stderr.String())
	}
	return nil, stop
}

func eventually(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	testenv.Eventually(t, timeout, what, ok)
}

// namespace creates a namespace with labels, removed when the test ends.
func namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	_, err := env.Cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Cluster.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}) })
	if err := env.ServiceAccount(ctx, name, "default"); err != nil {
		t.Fatal(err)
	}
}
