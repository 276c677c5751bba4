package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// handoff is the connecting process: it connects, starts the reader with
// the connection (fd 3) and a pipe (fd 4), waits for the reader's word,
// then execs program or exits.
func handoff(mode, socket, program string) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		fail(err)
	}
	f, err := conn.(*net.UnixConn).File()
	if err != nil {
		fail(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		fail(err)
	}
	child := exec.Command(os.Args[0], "reader", mode, strconv.Itoa(os.Getpid()))
	child.ExtraFiles = []*os.File{f, pw}
	child.Stdout, child.Stderr = os.Stdout, os.Stderr
	if err := child.Start(); err != nil {
		fail(err)
	}
	pw.Close()
	buf := make([]byte, 1)
	if _, err := pr.Read(buf); err != nil {
		fail(fmt.Errorf("the reader did not signal: %w", err))
	}
	if mode == "exec" {
		fail(syscall.Exec(program, []string{program, "60"}, os.Environ()))
	}
	os.Exit(0)
}

// reader speaks gRPC over the handed-over connection.
func reader(mode, pid string) result {
	conn, err := net.FileConn(os.NewFile(3, "conn"))
	if err != nil {
		fail(err)
	}
	signal := os.NewFile(4, "signal")
	used := false
	cc, err := grpc.NewClient("passthrough:///workload", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, fmt.Errorf("the handed-over connection is gone")
			}
			used = true
			return conn, nil
		}))
	if err != nil {
		fail(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Connected and greeted by the agent: its side of the handshake, where
	// it notes who connected, is done.
	cc.Connect()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			fail(fmt.Errorf("connection not ready: %v", s))
		}
	}
	client := workload.NewSpiffeWorkloadAPIClient(cc)
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	before, _ := os.Readlink("/proc/" + pid + "/exe")
	var stream workload.SpiffeWorkloadAPI_FetchX509SVIDClient
	var r result
	if mode == "exit" {
		// Attested while the connecting process is alive.
		if stream, err = client.FetchX509SVID(ctx, &workload.X509SVIDRequest{}); err != nil {
			return result{Error: err.Error()}
		}
		first, err := stream.Recv()
		if err != nil {
			return result{Error: err.Error()}
		}
		r.SPIFFEID = first.GetSvids()[0].GetSpiffeId()
	}
	signal.Write([]byte("x"))
	// Wait until the connecting process has become the other program, or
	// is gone.
	for {
		now, err := os.Readlink("/proc/" + pid + "/exe")
		if err != nil || now != before {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if mode == "exec" {
		if stream, err = client.FetchX509SVID(ctx, &workload.X509SVIDRequest{}); err != nil {
			return result{Error: err.Error()}
		}
		msg, err := stream.Recv()
		if err != nil {
			return result{Error: err.Error()}
		}
		return result{SPIFFEID: msg.GetSvids()[0].GetSpiffeId()}
	}
	// The stream must end now, long before the SVID's rotation.
	wait, cancelWait := context.WithTimeout(ctx, 10*time.Second)
	defer cancelWait()
	got := make(chan error, 1)
	go func() {
		_, err := stream.Recv()
		got <- err
	}()
	select {
	case err := <-got:
		r.Error = fmt.Sprint(err)
	case <-wait.Done():
		r.Error = "stream still open 10 s after its process exited"
	}
	return r
}
