package testenv

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildImage writes a docker-archive image tarball to out whose only file
// besides /etc/passwd and /etc/group is binary, at /<basename>, its
// entrypoint. ref names the image (e.g. "localhost/workload:test").
func BuildImage(ref, binary, out string) error {
	bin, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	base := filepath.Base(binary)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	dir := func(name string, mode int64) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode})
	}
	file := func(name string, mode int64, data []byte) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))})
		tw.Write(data)
	}
	for _, d := range []string{"dev", "etc", "proc", "sys"} {
		dir(d, 0o755)
	}
	dir("tmp", 0o1777)
	file("etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/:/%s\nnobody:x:65534:65534:nobody:/:/%s\n", base, base))
	file("etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\n"))
	file(base, 0o755, bin)
	if err := tw.Close(); err != nil {
		return err
	}
	layerSum := sha256.Sum256(layer.Bytes())
	layerHex := hex.EncodeToString(layerSum[:])
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/" + base}, "Env": []string{"PATH=/"}, "WorkingDir": "/"},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerHex}},
	})
	if err != nil {
		return err
	}
	cfgSum := sha256.Sum256(config)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{ref}, "Layers": []string{layerHex + "/layer.tar"}}})
	if err != nil {
		return err
	}
	var img bytes.Buffer
	tw = tar.NewWriter(&img)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerHex + "/", Mode: 0o755})
	for _, f := range []struct {
		name string
		data []byte
	}{{layerHex + "/layer.tar", layer.Bytes()}, {cfgName, config}, {"manifest.json", manifest}} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, img.Bytes(), 0o644)
}

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
	if err := BuildImage(ref, binary, tarPath); err != nil {
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
