// Package peercred gives gRPC servers on Unix sockets the kernel's
// credentials of the connecting process (SO_PEERCRED).
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Creds are a connecting process's credentials, as the kernel saw them when
// it connected.
type Creds struct {
	PID int32
	UID uint32
	GID uint32
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

// Read returns the peer credentials of a Unix socket connection.
func Read(conn net.Conn) (Creds, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return Creds{}, fmt.Errorf("peercred: %T is not a Unix socket connection", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Creds{}, fmt.Errorf("peercred: %w", err)
	}
	var cred *unix.Ucred
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		cred, sockErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Creds{}, fmt.Errorf("peercred: %w", err)
	}
	if sockErr != nil {
		return Creds{}, fmt.Errorf("peercred: SO_PEERCRED: %w", sockErr)
	}
	return Creds{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

// TransportCredentials returns server credentials that read SO_PEERCRED on
// every Unix socket connection. Connections of any other kind are refused.
func TransportCredentials() credentials.TransportCredentials { return tc{} }

type tc struct{}

func (tc) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: client handshake is not supported")
}

func (tc) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, err := Read(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, Creds: c}, nil
}

func (tc) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (t tc) Clone() credentials.TransportCredentials { return t }
func (tc) OverrideServerName(string) error           { return nil }
