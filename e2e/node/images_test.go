package node

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestImagesRunOnTheNode builds the images as `make images` does, imports
// the tarballs into the node's containerd, and runs each binary's --help
// in a pod: the images are complete and runnable.
func TestImagesRunOnTheNode(t *testing.T) {
	static := filepath.Join(env.Dir, "static")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", static+"/", "github.com/signet-id/signet/cmd/signet-ca", "github.com/signet-id/signet/cmd/signet-agent")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	images := filepath.Join(env.Dir, "images")
	if out, err := exec.Command("go", "run", "github.com/signet-id/signet/cmd/signet-image", "-bin", static, "-out", images, "-tag", "e2e").CombinedOutput(); err != nil {
		t.Fatalf("signet-image: %v\n%s", err, out)
	}
	ctx := context.Background()
	for _, name := range []string{"signet-ca", "signet-agent"} {
		if err := env.Node.ImportTarball(filepath.Join(images, name+".tar")); err != nil {
			t.Fatal(err)
		}
		p := pod("demo", name+"-help", "greeter", name+":e2e", nil)
		p.Spec.RestartPolicy = corev1.RestartPolicyNever
		p.Spec.Containers[0].Args = []string{"--help"}
		if err := env.ServiceAccount(ctx, "demo", "greeter"); err != nil {
			t.Fatal(err)
		}
		created, err := env.Cluster.Client.CoreV1().Pods("demo").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer deletePod(t, created)
		deadline := time.Now().Add(60 * time.Second)
		for {
			got, err := env.Cluster.Client.CoreV1().Pods("demo").Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Phase == corev1.PodSucceeded {
				break
			}
			if got.Status.Phase == corev1.PodFailed || time.Now().After(deadline) {
				t.Fatalf("%s: pod %s: %+v", name, got.Status.Phase, got.Status.ContainerStatuses)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
