package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/signet-id/signet/internal/ociimage"
)

// BuildStatic builds a Go package into a static binary at out.
func BuildStatic(pkg, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// ImportImage builds an image of binary named ref and imports it into the
// node's containerd; pods use it with imagePullPolicy: Never.
func (n *Node) ImportImage(ref, binary string) error {
	tarPath := filepath.Join(n.dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if err := ociimage.Write(ociimage.Spec{Ref: ref, Binary: binary}, tarPath); err != nil {
		return err
	}
	return n.ctr("images", "import", "--snapshotter", "overlayfs", tarPath)
}

func (n *Node) ctr(args ...string) error {
	cmd := exec.Command("ctr", append([]string{"--address", n.sock, "-n", "k8s.io"}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: ctr %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// ImportTarball imports an image tarball (docker or OCI) into the node's
// containerd.
func (n *Node) ImportTarball(path string) error {
	return n.ctr("images", "import", "--snapshotter", "overlayfs", path)
}

// ContainerPID returns the host PID of a running container's first
// process; id is the container's ID, as a pod's status gives it
// ("containerd://<id>") or bare.
func (n *Node) ContainerPID(id string) (int, error) {
	id = strings.TrimPrefix(id, "containerd://")
	out, err := exec.Command("ctr", "--address", n.sock, "-n", "k8s.io", "tasks", "ls").Output()
	if err != nil {
		return 0, fmt.Errorf("testenv: ctr tasks ls: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			var pid int
			if _, err := fmt.Sscanf(f[1], "%d", &pid); err == nil {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("testenv: container %s is not running", id)
}
