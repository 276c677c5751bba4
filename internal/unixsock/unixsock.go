// Package unixsock listens on Unix sockets the way Signet's servers need.
package unixsock

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Listen listens on path, creating its directory with dirMode and giving
// the socket mode. A socket left behind by a killed process is replaced;
// any other file at path is an error.
func Listen(path string, dirMode, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
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
