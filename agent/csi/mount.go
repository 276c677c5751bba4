package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// publish bind-mounts the socket directory at target, read-only, without
// devices, set-uid or exec. Publishing a published path again changes
// nothing.
func (d *Driver) publish(target string) error {
	// The kubelet made the parent; the target is the plugin's to make.
	if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(target)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", target)
	}
	mounted, err := mountedAt(target)
	if err != nil {
		return err
	}
	if mounted {
		if sameFile(target, d.cfg.SocketDir) {
			return nil
		}
		return fmt.Errorf("%s is already a mount point of something else", target)
	}
	if err := unix.Mount(d.cfg.SocketDir, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s at %s: %w", d.cfg.SocketDir, target, err)
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if err := unix.Mount("", target, "", flags, ""); err != nil {
		unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("making the mount at %s read-only: %w", target, err)
	}
	return nil
}

// unpublish unmounts target and removes it. A path that is not mounted,
// or gone, is done.
func (d *Driver) unpublish(target string) error {
	for range 8 { // mounts may be stacked
		mounted, err := mountedAt(target)
		if err != nil {
			return err
		}
		if !mounted {
			break
		}
		if err := unix.Unmount(target, 0); err != nil {
			if !errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("unmounting %s: %w", target, err)
			}
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmounting %s: %w", target, err)
			}
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", target, err)
	}
	return nil
}

// Sweep removes the plugin's mounts of pods that the kubelet no longer
// runs, and returns their paths, and how many more mounts wait for their
// grace. The kubelet unpublishes every volume of a deleted pod; one it
// could not reach the plugin for (the agent was restarting) it retries
// with a back-off of up to two minutes, and a sweep takes that wait away.
// A mount goes once its pod has been missing from the kubelet's list for
// SweepGrace, seen in two listings at least.
func (d *Driver) Sweep(ctx context.Context) (removed []string, pending int, err error) {
	// The mounts first, then the pods: a mount made after the pod list was
	// read would otherwise look like one of a pod that is gone.
	mounts, err := ReadMounts()
	if err != nil {
		return nil, 0, err
	}
	byPod := map[string][]string{}
	for _, m := range mounts {
		uid, err := d.volumePodUID(m.MountPoint)
		if err != nil || !d.ours(m.MountPoint) {
			continue
		}
		byPod[uid] = append(byPod[uid], m.MountPoint)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(byPod) == 0 {
		clear(d.absent)
		return nil, 0, nil
	}
	pods, err := d.cfg.Pods.Pods(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("listing the kubelet's pods: %w", err)
	}
	live := map[string]bool{}
	for _, p := range pods {
		live[string(p.UID)] = true
	}
	now := d.cfg.Clock.Now()
	seen := map[string]bool{}
	var errs []error
	for uid, targets := range byPod {
		for _, t := range targets {
			seen[t] = true
			if live[uid] {
				delete(d.absent, t)
				continue
			}
			since, ok := d.absent[t]
			if !ok {
				d.absent[t] = now
				since = now
			}
			if !ok || now.Sub(since) < d.cfg.SweepGrace {
				pending++
				continue
			}
			if err := d.unpublish(t); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(d.absent, t)
			removed = append(removed, t)
		}
	}
	for t := range d.absent {
		if !seen[t] {
			delete(d.absent, t)
		}
	}
	return removed, pending, errors.Join(errs...)
}

// ours reports whether the volume mounted at target is this driver's:
// the kubelet's record of the volume (vol_data.json beside it) names the
// driver, or, without a record, the mount shows the socket directory.
func (d *Driver) ours(target string) bool {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(target), "vol_data.json"))
	if err != nil {
		return sameFile(target, d.cfg.SocketDir)
	}
	var rec struct {
		DriverName string `json:"driverName"`
	}
	return json.Unmarshal(b, &rec) == nil && rec.DriverName == d.cfg.DriverName
}

// mountedAt reports whether path is a mount point.
func mountedAt(path string) (bool, error) {
	mounts, err := ReadMounts()
	if err != nil {
		return false, err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	for _, m := range mounts {
		if m.MountPoint == path || m.MountPoint == real {
			return true, nil
		}
	}
	return false, nil
}

// sameFile reports whether a and b are the same directory.
func sameFile(a, b string) bool {
	var sa, sb syscall.Stat_t
	if syscall.Stat(a, &sa) != nil || syscall.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
