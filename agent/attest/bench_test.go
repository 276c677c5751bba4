package attest

import (
	"context"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/signet-id/signet/agent/kubelet"
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
	payload, err := os.ReadFile("../kubelet/testdata/pods-recorded-kubelet-1.37.json")
	if err != nil {
		b.Fatal(err)
	}
	cg, err := os.ReadFile("../cgroup/testdata/v1-cgroupfs-containerd-burstable-recorded.txt")
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(payload) }))
	defer srv.Close()
	dir := b.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte("t"), 0o600)
	kc, err := kubelet.New(kubelet.Config{URL: srv.URL, TokenFile: tokFile, CAFile: caFile})
	if err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(dir, "proc")
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
