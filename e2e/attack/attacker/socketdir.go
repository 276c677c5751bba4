package main

import (
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// changeSocketDir tries to change what the pods of the node find in the
// socket's directory, from inside a pod that has it as a volume.
func changeSocketDir(dir string) result {
	var r result
	sock := filepath.Join(dir, "agent.sock")
	try := func(what string, err error) {
		if err == nil {
			r.Changed = append(r.Changed, what)
		}
	}
	try("create a file", os.WriteFile(filepath.Join(dir, "fake"), []byte("x"), 0o644))
	if l, err := net.Listen("unix", filepath.Join(dir, "fake.sock")); err == nil {
		l.Close()
		r.Changed = append(r.Changed, "listen on a socket of its own")
	}
	try("chmod the socket", os.Chmod(sock, 0o600))
	try("chown the socket", os.Chown(sock, 1234, 1234))
	try("make a directory", os.Mkdir(filepath.Join(dir, "d"), 0o755))
	try("make a link", os.Symlink("/tmp", filepath.Join(dir, "link")))
	try("rename the socket", os.Rename(sock, filepath.Join(dir, "moved.sock")))
	try("remove the socket", os.Remove(sock))
	try("remount the volume writable", unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND, ""))
	try("mount over the volume", unix.Mount("tmpfs", dir, "tmpfs", 0, ""))
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		r.Entries = append(r.Entries, e.Name())
	}
	return r
}
