package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the file in a data directory that its owner holds locked.
const lockFile = "lock"

// ErrInUse is returned by Lock for a data directory that another process
// (or another part of this one) holds.
var ErrInUse = errors.New("data directory in use")

// Lock takes dir for this process: an exclusive lock (flock) on dir/lock,
// which then holds this process's PID. Two processes on one directory
// would overwrite each other's state and remove each other's sockets, so a
// second is refused, with the PID of the first. The kernel releases the
// lock when the process ends, however it ends; unlock releases it sooner.
func Lock(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			owner := "another process"
			if raw, err := os.ReadFile(path); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && pid > 0 {
					owner = fmt.Sprintf("process %d", pid)
				}
			}
			return nil, fmt.Errorf("%w: %s holds %s (lock file %s); stop it first, or give this one a data directory of its own", ErrInUse, owner, dir, path)
		}
		return nil, fmt.Errorf("data directory: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}
