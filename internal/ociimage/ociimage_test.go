package ociimage

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "svc")
	os.WriteFile(bin, []byte("\x7fELF-not-really"), 0o755)
	out := filepath.Join(dir, "svc.tar")
	if err := Write(Spec{Ref: "svc:test", Binary: bin, User: "65532:65532", Args: []string{"--x"}}, out); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/svc" || cf.Config.Cmd[0] != "--x" || cf.OS != "linux" {
		t.Fatalf("config %+v", cf.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 || len(cf.RootFS.DiffIDs) != 1 {
		t.Fatalf("%d layers, %d diff IDs, %v", len(layers), len(cf.RootFS.DiffIDs), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h.Mode
	}
	if files["svc"] != 0o755 || files["etc/passwd"] == 0 || files["tmp/"] != 0o1777 {
		t.Fatalf("layer files %v", files)
	}
	// Reproducible: the same input gives the same image.
	out2 := filepath.Join(dir, "svc2.tar")
	Write(Spec{Ref: "svc:test", Binary: bin, User: "65532:65532", Args: []string{"--x"}}, out2)
	img2, _ := tarball.ImageFromPath(out2, nil)
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Fatalf("digests differ: %s %s", d1, d2)
	}
}
