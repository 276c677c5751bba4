// Command signet-image writes the container images of signet-ca and
// signet-agent as image tarballs, from static binaries, without a
// container engine (make images). Load them with `docker load -i`,
// `ctr images import` or push them with any registry tool.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/signet-id/signet/internal/ociimage"
)

func main() {
	bin := flag.String("bin", "bin/static", "directory of the static binaries")
	out := flag.String("out", "bin/images", "directory for the tarballs")
	tag := flag.String("tag", "latest", "image tag")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "signet-image:", err)
		os.Exit(1)
	}
	for _, s := range []ociimage.Spec{
		// The CA runs as nonroot.
		{Ref: "signet-ca:" + *tag, Binary: filepath.Join(*bin, "signet-ca"), User: "65532:65532"},
		// The agent runs as root, with no capabilities, only to own its
		// socket in the host's root-owned directory (see deploy/base/agent.yaml).
		{Ref: "signet-agent:" + *tag, Binary: filepath.Join(*bin, "signet-agent"), User: "0:0"},
	} {
		file := filepath.Join(*out, filepath.Base(s.Binary)+".tar")
		if err := ociimage.Write(s, file); err != nil {
			fmt.Fprintln(os.Stderr, "signet-image:", err)
			os.Exit(1)
		}
		fmt.Println(file, s.Ref)
	}
}
