// Package node runs Signet on a real node: a real kubelet with containerd
// and runc (e2e/testenv), signet-ca and signet-agent as processes, and a
// workload container whose real process is attested through the kubelet's
// /pods and its /proc/<pid>/cgroup. Only one node can run on a machine, so
// make test runs this package on its own.
package node

import (
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/signet-id/signet/e2e/nodeenv"
)

var env *nodeenv.Env

func TestMain(m *testing.M) {
	os.Exit(nodeenv.Main(m, &env, nil))
}

// Shorthands of this package's tests.
var (
	runWorkload = func(t testing.TB, ns, name, sa string) (*corev1.Pod, nodeenv.WorkloadResult, time.Time) {
		return env.RunWorkload(t, ns, name, sa)
	}
	deletePod = func(t testing.TB, p *corev1.Pod) { env.DeletePod(t, p) }
	findAudit = func(t testing.TB, match func(map[string]any) bool) map[string]any { return env.FindAudit(t, match) }
	strs      = nodeenv.Strs
	pod       = nodeenv.Pod
)
