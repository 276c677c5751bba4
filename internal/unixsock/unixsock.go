// Package unixsock listens on Unix sockets the way Signet's servers need.
package unixsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// MaxPath is the longest path a Unix socket may have on Linux (sun_path
// holds 108 bytes, with the terminating NUL).
const MaxPath = 107

// Listen listens on path, creating its directory with dirMode and giving
// the socket mode. A socket left behind by a killed process is replaced;
// one that a live process serves, or any other file at path, is an error.
func Listen(path string, dirMode, mode os.FileMode) (net.Listener, error) {
	if len(path) > MaxPath {
		return nil, fmt.Errorf("socket path %s is %d bytes long, and a Unix socket's path may be at most %d: choose a shorter directory", path, len(path), MaxPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another process serves %s: stop it first, or choose another path", path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
