// Package attest holds the agent's workload attestors: given the kernel's
// credentials of a caller, they return the selectors that describe it.
package attest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/selector"
)

// Unix attests processes by what the kernel says of them: uid, gid, user and
// group names, the binary's path and, when asked for, its SHA-256.
type Unix struct {
	// ProcRoot is where /proc is mounted. If empty, "/proc".
	ProcRoot string
	// HashBinaries reports whether unix:sha256 selectors are wanted; hashing
	// is skipped when no entry uses them. If nil, binaries are hashed.
	HashBinaries func() bool

	mu     sync.Mutex
	hashes map[fileID]string
	names  map[string]nameCacheEntry
}

// fileID names one version of one file.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    int64
	ctime    int64
}

type nameCacheEntry struct {
	name string
	at   time.Time
}

const nameTTL = time.Minute

func (u *Unix) proc() string {
	if u.ProcRoot == "" {
		return "/proc"
	}
	return u.ProcRoot
}

// AttestEarly implements the Workload API's Attestor: the unix
// selectors need no wait, so it is Attest.
func (u *Unix) AttestEarly(ctx context.Context, c peercred.Creds) ([]selector.Selector, bool, error) {
	sels, err := u.Attest(ctx, c)
	return sels, false, err
}

// Attest returns the unix selectors of the caller.
func (u *Unix) Attest(ctx context.Context, c peercred.Creds) ([]selector.Selector, error) {
	sels := []selector.Selector{
		{Type: "unix", Value: "uid:" + strconv.FormatUint(uint64(c.UID), 10)},
		{Type: "unix", Value: "gid:" + strconv.FormatUint(uint64(c.GID), 10)},
	}
	if name := u.lookup("u", c.UID); name != "" {
		sels = append(sels, selector.Selector{Type: "unix", Value: "user:" + name})
	}
	if name := u.lookup("g", c.GID); name != "" {
		sels = append(sels, selector.Selector{Type: "unix", Value: "group:" + name})
	}
	exe := fmt.Sprintf("%s/%d/exe", u.proc(), c.PID)
	path, err := os.Readlink(exe)
	if errors.Is(err, fs.ErrPermission) {
		// Reading another process's binary takes ptrace rights: an agent
		// without CAP_SYS_PTRACE (the Kubernetes DaemonSet drops every
		// capability) cannot for processes that hold capabilities it
		// lacks. They get no path or sha256 selectors; the others stand.
		return sels, nil
	}
	if err != nil {
		return nil, fmt.Errorf("attest: process %d: binary path: %w", c.PID, err)
	}
	sels = append(sels, selector.Selector{Type: "unix", Value: "path:" + path})
	if u.HashBinaries == nil || u.HashBinaries() {
		sum, err := u.hash(exe)
		if err != nil {
			return nil, fmt.Errorf("attest: process %d: %w", c.PID, err)
		}
		sels = append(sels, selector.Selector{Type: "unix", Value: "sha256:" + sum})
	}
	return sels, nil
}

// hash returns the SHA-256 of the binary behind /proc/<pid>/exe, cached by
// the file's identity (device, inode, size, times), so a binary replaced in
// place is hashed again.
func (u *Unix) hash(exe string) (string, error) {
	f, err := os.Open(exe)
	if err != nil {
		return "", fmt.Errorf("open binary: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("stat binary: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("stat binary: no inode")
	}
	id := fileID{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
	u.mu.Lock()
	sum, ok := u.hashes[id]
	u.mu.Unlock()
	if ok {
		return sum, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash binary: %w", err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	u.mu.Lock()
	if u.hashes == nil || len(u.hashes) > 4096 {
		u.hashes = map[fileID]string{}
	}
	u.hashes[id] = sum
	u.mu.Unlock()
	return sum, nil
}

// lookup returns a user ("u") or group ("g") name, or "" if there is none.
func (u *Unix) lookup(kind string, id uint32) string {
	key := kind + strconv.FormatUint(uint64(id), 10)
	u.mu.Lock()
	if e, ok := u.names[key]; ok && time.Since(e.at) < nameTTL {
		u.mu.Unlock()
		return e.name
	}
	u.mu.Unlock()
	var name string
	if kind == "u" {
		if usr, err := user.LookupId(strconv.FormatUint(uint64(id), 10)); err == nil {
			name = usr.Username
		}
	} else if grp, err := user.LookupGroupId(strconv.FormatUint(uint64(id), 10)); err == nil {
		name = grp.Name
	}
	u.mu.Lock()
	if u.names == nil {
		u.names = map[string]nameCacheEntry{}
	}
	u.names[key] = nameCacheEntry{name: name, at: time.Now()}
	u.mu.Unlock()
	return name
}
