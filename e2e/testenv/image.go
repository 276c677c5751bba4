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
