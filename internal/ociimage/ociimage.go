// Package ociimage builds a minimal container image from one static
// binary, without a container engine: the binary at /<name> as the
// entrypoint, /etc/passwd and /etc/group with root and nonroot (65532),
// and /tmp. It writes an image tarball that `docker load`, `ctr images
// import` and registries' tools read.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Spec describes an image.
type Spec struct {
	// Ref names the image, e.g. "signet-ca:latest".
	Ref string
	// Binary is the static executable to run.
	Binary string
	// User runs the entrypoint: "65532:65532" or "0:0".
	User string
	// Args are the default arguments.
	Args []string
}

// Write builds the image and writes it as a tarball to out.
func Write(spec Spec, out string) error {
	ref, err := name.ParseReference(spec.Ref)
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	bin, err := os.ReadFile(spec.Binary)
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	base := filepath.Base(spec.Binary)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	add := func(h *tar.Header, data []byte) error {
		h.ModTime, h.Uname, h.Gname = epoch, "root", "root"
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	entries := []struct {
		h    tar.Header
		data []byte
	}{
		{tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, []byte("root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n")},
		{tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, []byte("root:x:0:\nnonroot:x:65532:\n")},
		{tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}, nil},
		{tar.Header{Typeflag: tar.TypeReg, Name: base, Mode: 0o755}, bin},
	}
	for _, e := range entries {
		h := e.h
		if err := add(&h, e.data); err != nil {
			return fmt.Errorf("ociimage: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: "amd64", OS: "linux", Created: v1.Time{Time: epoch},
		Config: v1.Config{Entrypoint: []string{"/" + base}, Cmd: spec.Args, User: spec.User, WorkingDir: "/", Env: []string{"PATH=/"},
			Labels: map[string]string{"org.opencontainers.image.source": "https://github.com/signet-id/signet"}},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return fmt.Errorf("ociimage: %w", err)
	}
	return tarball.WriteToFile(out, ref, img)
}
