// Package logfile is an append-only file that can be reopened, so that
// audit logs work with rename-based log rotation (logrotate without
// copytruncate): after a rotation, send the process SIGHUP.
package logfile

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// File appends to a path; "-" or "" means stderr. It is safe for
// concurrent use.
type File struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// Open opens path for appending, creating it with mode 0600.
func Open(path string) (*File, error) {
	l := &File{path: path}
	if path == "" || path == "-" {
		l.f = os.Stderr
		return l, nil
	}
	f, err := openPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("logfile: %w", err)
	}
	l.f = f
	return l, nil
}

// Write appends p in one write call.
func (l *File) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Reopen opens the path again (a rotated file's new name), then closes the
// old file. On error the old file stays in use.
func (l *File) Reopen() error {
	if l.f == os.Stderr {
		return nil
	}
	f, err := openPrivate(l.path)
	if err != nil {
		return fmt.Errorf("logfile: reopen: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	return old.Close()
}

// Close closes the file (not stderr).
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == os.Stderr {
		return nil
	}
	return l.f.Close()
}

// OnSIGHUP returns a channel that receives when the process gets SIGHUP,
// until ctx is done: the conventional "reopen your logs" signal.
func OnSIGHUP(ctx context.Context) <-chan struct{} {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	out := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}

// openPrivate opens path for appending with mode 0600, tightening a file
// that exists with a wider mode: audit records name every workload and
// agent, and only the process (and root) should read them.
func openPrivate(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o077 != 0 {
		err = f.Chmod(0o600)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
