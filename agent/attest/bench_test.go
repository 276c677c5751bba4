package attest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/signet-id/signet/agent/kubelet"
	"github.com/signet-id/signet/agent/kubelet/kubelettest"
	"github.com/signet-id/signet/internal/peercred"
)

// BenchmarkK8sAttest is the cost of attesting one process in a pod:
// "cached" reads its cgroup and finds the pod in the kubelet list the
// attestor holds; "kubelet" also lists the pods again over TLS (the
// recorded payload of a real kubelet, from a local server), as for a
// container that just started.
//
//	go test -run '^$' -bench K8sAttest ./agent/attest/
func BenchmarkK8sAttest(b *testing.B) {
	cg, err := os.ReadFile("../cgroup/testdata/v1-cgroupfs-containerd-burstable-recorded.txt")
	if err != nil {
		b.Fatal(err)
	}
	srv := kubelettest.StartRecorded(b)
	kc, err := kubelet.New(kubelet.Config{URL: srv.URL, TokenFile: srv.TokenFile, CAFile: srv.CAFile})
	if err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(b.TempDir(), "proc")
	os.MkdirAll(filepath.Join(root, "29835"), 0o755)
	os.WriteFile(filepath.Join(root, "29835", "cgroup"), cg, 0o644)
	for name, maxAge := range map[string]time.Duration{"cached": time.Hour, "kubelet": time.Nanosecond} {
		b.Run(name, func(b *testing.B) {
			k := &K8s{Pods: kc, ProcRoot: root, MaxAge: maxAge}
			ctx := context.Background()
			for b.Loop() {
				if _, err := k.Attest(ctx, peercred.Creds{PID: 29835}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
