// Package peercred gives gRPC servers on Unix sockets the kernel's
// credentials of the connecting process (SO_PEERCRED) and a handle on that
// very process (a pidfd), so that an answer computed from /proc/<pid> can be
// checked to still concern the process that connected.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// soPeerPIDFD is SO_PEERPIDFD (Linux 6.5+): a pidfd for the process that
// connected, taken by the kernel at connect time, so PID reuse cannot fool it.
const soPeerPIDFD = 77

// Creds are a connecting process's credentials, as the kernel saw them when
// it connected.
type Creds struct {
	PID int32
	UID uint32
	GID uint32

	// pidfd refers to the connecting process; -1 if none could be had.
	pidfd int
	// startTime is the process start time (clock ticks since boot) read when
	// the connection was accepted; the fallback check when there is no
	// SO_PEERPIDFD.
	startTime uint64
	// exact is true when pidfd came from SO_PEERPIDFD.
	exact bool
	// exe is the program the process ran when the connection was
	// accepted; a process that executes another one since is no longer
	// the caller that connected.
	exe exeID
}

// exeID names an executable file by device and inode (the target of
// /proc/<pid>/exe, which stays the same file even if its path is replaced).
type exeID struct {
	dev, ino uint64
	known    bool
}

// exeOf returns the program pid runs; known is false if /proc/<pid>/exe
// cannot be read (another user's process, without CAP_SYS_PTRACE).
func exeOf(pid int32) exeID {
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(int(pid))+"/exe", &st); err != nil {
		return exeID{}
	}
	return exeID{dev: st.Dev, ino: st.Ino, known: true}
}

// ErrExecuted means the process that connected has since executed another
// program: what it connected as is not what it now is.
var ErrExecuted = errors.New("peercred: the calling process executed another program since it connected")

// ErrProcessGone means the process that connected has exited, or its PID now
// names another process.
var ErrProcessGone = errors.New("peercred: the calling process is gone (exited or PID reused)")

// Check reports whether the process that connected is still the one that
// /proc/<PID> describes. Call it after reading /proc/<PID> and before
// answering: if it returns nil, what was read belongs to the caller.
//
// It also fails (ErrExecuted) when the process has executed another
// program since the connection was accepted: a process may connect, hand
// the connection to another (fork, SCM_RIGHTS), and exec a binary that
// entries allow; the answer would reach the other process.
func (c Creds) Check() error {
	if err := c.alive(); err != nil {
		return err
	}
	if c.exe.known && exeOf(c.PID) != c.exe {
		// Read after the liveness check: if the PID still names the
		// caller, a changed program is an exec, not a reuse.
		if c.alive() != nil {
			return ErrProcessGone
		}
		return ErrExecuted
	}
	return nil
}

func (c Creds) alive() error {
	if c.pidfd >= 0 {
		// A pidfd names one process; signal 0 fails with ESRCH once it has
		// exited, even if its PID was reused since.
		if err := unix.PidfdSendSignal(c.pidfd, 0, nil, 0); err != nil {
			return ErrProcessGone
		}
		if c.exact {
			return nil
		}
	}
	st, err := StartTime(c.PID)
	if err != nil || st != c.startTime {
		return ErrProcessGone
	}
	return nil
}

// Clone returns Creds with a pidfd of its own, for use after the
// connection (which closes its pidfd) may have closed; release closes it.
func (c Creds) Clone() (Creds, func()) {
	if c.pidfd < 0 {
		return c, func() {}
	}
	fd, err := unix.FcntlInt(uintptr(c.pidfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		// Without a handle the start time still tells a reused PID.
		c.pidfd, c.exact = -1, false
		if st, err := StartTime(c.PID); err == nil && c.startTime == 0 {
			c.startTime = st
		}
		return c, func() {}
	}
	c.pidfd = fd
	return c, func() { unix.Close(fd) }
}

// execCheckInterval is how often Watch looks for an exec, which no file
// descriptor signals.
const execCheckInterval = 500 * time.Millisecond

// Watch blocks until the process that connected exits or executes another
// program (and returns why), or until ctx ends (and returns nil). Streams
// that must not outlive their caller end when it returns an error.
func (c Creds) Watch(ctx context.Context) error {
	c, release := c.Clone()
	defer release()
	exited := make(chan struct{})
	if c.pidfd >= 0 {
		// A pidfd becomes readable when its process exits; the runtime's
		// poller waits for that without a thread of its own.
		if fd, err := unix.FcntlInt(uintptr(c.pidfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
			unix.SetNonblock(fd, true)
			f := os.NewFile(uintptr(fd), "pidfd")
			defer f.Close()
			if rc, err := f.SyscallConn(); err == nil {
				go func() {
					rc.Read(func(fd uintptr) bool {
						p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
						n, err := unix.Poll(p, 0)
						return err != nil || n > 0
					})
					close(exited)
				}()
			}
		}
	}
	t := time.NewTicker(execCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-exited:
			return ErrProcessGone
		case <-t.C:
			if err := c.Check(); err != nil {
				return err
			}
		}
	}
}

// StartTime returns the start time of pid in clock ticks since boot (field
// 22 of /proc/<pid>/stat).
func StartTime(pid int32) (uint64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStartTime(string(raw))
}

// parseStartTime reads field 22 of a /proc/<pid>/stat line. The command name
// (field 2) is in parentheses and may itself hold spaces and parentheses, so
// fields are counted from the last ')'.
func parseStartTime(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("peercred: malformed stat line")
	}
	fields := strings.Fields(stat[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("peercred: stat line has %d fields after the command; want at least 20", len(fields))
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("peercred: start time %q: %v", fields[19], err)
	}
	return v, nil
}

// AuthInfo carries Creds through gRPC's peer information.
type AuthInfo struct {
	credentials.CommonAuthInfo
	Creds Creds
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return "peercred" }

// FromContext returns the credentials of the caller of a gRPC handler.
func FromContext(ctx context.Context) (Creds, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Creds{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok {
		return Creds{}, false
	}
	return ai.Creds, true
}

// Read returns the peer credentials of a Unix socket connection, without a
// process handle.
func Read(conn net.Conn) (Creds, error) {
	c, err := read(conn, false)
	return c, err
}

// unixConn is a Unix socket connection, or a wrapper that keeps its
// SyscallConn (a limiting listener's).
type unixConn interface {
	net.Conn
	SyscallConn() (syscall.RawConn, error)
}

func read(conn net.Conn, bind bool) (Creds, error) {
	uc, ok := conn.(unixConn)
	if !ok || conn.LocalAddr().Network() != "unix" {
		return Creds{}, fmt.Errorf("peercred: %T is not a Unix socket connection", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Creds{}, fmt.Errorf("peercred: %w", err)
	}
	var cred *unix.Ucred
	var sockErr error
	pidfd := -1
	if err := raw.Control(func(fd uintptr) {
		cred, sockErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if sockErr == nil && bind {
			if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPIDFD); err == nil {
				pidfd = v
			}
		}
	}); err != nil {
		return Creds{}, fmt.Errorf("peercred: %w", err)
	}
	if sockErr != nil {
		return Creds{}, fmt.Errorf("peercred: SO_PEERCRED: %w", sockErr)
	}
	c := Creds{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, pidfd: -1}
	if !bind {
		return c, nil
	}
	c.exe = exeOf(c.PID)
	if pidfd >= 0 {
		c.pidfd, c.exact = pidfd, true
		return c, nil
	}
	// Older kernels: open a pidfd now and remember the start time, so that a
	// PID reused after this point is noticed.
	if st, err := StartTime(c.PID); err == nil {
		c.startTime = st
	} else {
		return Creds{}, fmt.Errorf("peercred: process %d: %w", c.PID, err)
	}
	if fd, err := unix.PidfdOpen(int(c.PID), 0); err == nil {
		c.pidfd = fd
	}
	return c, nil
}

// TransportCredentials returns server credentials that read SO_PEERCRED on
// every Unix socket connection. With bind set they also keep a pidfd of the
// caller (closed with the connection) so Creds.Check works. Connections of
// any other kind are refused.
func TransportCredentials(bind bool) credentials.TransportCredentials { return tc{bind: bind} }

type tc struct{ bind bool }

func (tc) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: client handshake is not supported")
}

func (t tc) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := read(conn, t.bind)
	if err != nil {
		return nil, nil, err
	}
	info := AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Creds: c}
	if c.pidfd >= 0 {
		return &pidfdConn{Conn: conn, pidfd: c.pidfd}, info, nil
	}
	return conn, info, nil
}

func (tc) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (t tc) Clone() credentials.TransportCredentials { return t }
func (tc) OverrideServerName(string) error           { return nil }

// pidfdConn closes the caller's pidfd with the connection.
type pidfdConn struct {
	net.Conn
	once  sync.Once
	pidfd int
}

func (c *pidfdConn) Close() error {
	c.once.Do(func() { unix.Close(c.pidfd) })
	return c.Conn.Close()
}
