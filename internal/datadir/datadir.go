// Package datadir keeps Signet's data directories private: the CA's and
// the agent's hold private keys (in key files, in the SQLite database and
// in its WAL), so the directory is 0700 and every file in it 0600, whatever
// umask and existing directory the process finds.
package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Prepare makes dir (and its parents) with mode 0700 if it is missing. An
// existing directory that group or others may enter is tightened to 0700,
// and its files that group or others may read to 0600; the changes are
// returned so that the caller can say so. A directory that another user
// owns is refused: its owner could read what is written there.
func Prepare(dir string) (changed []string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("data directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("data directory %s belongs to uid %d, not to this process's uid %d: give it to this user, or name a directory inside it that does not exist yet (it is then made for this user, mode 0700)",
			dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory %s is mode %04o and cannot be tightened to 0700: %w", dir, fi.Mode().Perm(), err)
		}
		changed = append(changed, fmt.Sprintf("%s (was %04o)", dir, fi.Mode().Perm()))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		was, err := Tighten(p)
		if err != nil {
			return nil, err
		}
		if was != 0 {
			changed = append(changed, fmt.Sprintf("%s (was %04o)", p, was))
		}
	}
	return changed, nil
}

// Tighten sets mode 0600 on the file at path if group or others may access
// it, and returns the mode it had then (0 if it was private already or is
// missing).
func Tighten(path string) (fs.FileMode, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("data directory: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o077 == 0 {
		return 0, nil
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return 0, fmt.Errorf("data directory: tighten %s: %w", path, err)
	}
	return fi.Mode().Perm(), nil
}

// CreatePrivate creates the file at path with mode 0600 if it is missing
// (so that programs that copy its mode, as SQLite does for its WAL and
// shared-memory files, create theirs private too) and tightens it if it
// exists.
func CreatePrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	f.Close()
	_, err = Tighten(path)
	return err
}
