package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/signet-id/signet/agent"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/internal/systemlog"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
)

// devNode is the node name of the agent `signet dev` runs.
const devNode = "dev"

// dev runs a CA and an agent in the foreground until Ctrl-C.
func (c *cli) dev(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("signet dev", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: signet dev [--data-dir .signet] [--socket DATA-DIR/agent.sock] [--trust-domain example.org]\n\n"+
			"run a CA and an agent in the foreground, until Ctrl-C\n\nflags:\n")
		fs.PrintDefaults()
	}
	dataDir := fs.String("data-dir", ".signet", "directory for the CA's and the agent's state")
	socket := fs.String("socket", "", "Workload API socket (default DATA-DIR/agent.sock)")
	tdName := fs.String("trust-domain", "example.org", "trust domain")
	logLevel := fs.String("log-level", "warn", "log level of the CA and agent")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(c.stdout)
			fs.Usage()
			return 0
		}
		return 2
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		fmt.Fprintf(c.stderr, "signet dev: --trust-domain: %v\n", err)
		return 2
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		fmt.Fprintln(c.stderr, "signet dev:", err)
		return 1
	}
	if *socket == "" {
		*socket = filepath.Join(dir, "agent.sock")
	}
	if *socket, err = filepath.Abs(*socket); err != nil {
		fmt.Fprintln(c.stderr, "signet dev:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log, err := systemlog.New("signet-dev", *logLevel, false, c.stderr)
	if err != nil {
		fmt.Fprintln(c.stderr, "signet dev:", err)
		return 2
	}
	if err := runDev(ctx, c, log, td, dir, *socket); err != nil {
		fmt.Fprintln(c.stderr, "signet dev:", err)
		return 1
	}
	return 0
}

func runDev(ctx context.Context, c *cli, log hclog.Logger, td spiffeid.TrustDomain, dir, socket string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	adminSock := filepath.Join(dir, "admin.sock")
	caReady := make(chan string, 1)
	caDone := make(chan error, 1)
	go func() {
		caDone <- server.Run(ctx, server.Config{
			TrustDomain: td, DataDir: dir, ListenAddr: "127.0.0.1:0", AdminSocket: adminSock,
			Log: log.Named("ca"), Ready: func(addr string) { caReady <- addr },
		})
	}()
	var caAddr string
	select {
	case caAddr = <-caReady:
	case err := <-caDone:
		return fmt.Errorf("CA: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	admin := adminv1.NewAdminClient(conn)
	// A fresh token each start; an agent whose stored SVID is still valid
	// does not use it, and it expires unused.
	tok, err := admin.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{NodeName: devNode, TtlSeconds: 60})
	if err != nil {
		return fmt.Errorf("join token: %w", err)
	}
	b, err := admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	roots, err := parseRoots(b.GetBundle().GetX509Authorities())
	if err != nil {
		return err
	}
	agentReady := make(chan spiffeid.ID, 1)
	agentDone := make(chan error, 1)
	go func() {
		agentDone <- agent.Run(ctx, agent.Config{
			TrustDomain: td, CAAddress: caAddr, DataDir: filepath.Join(dir, "agent"), JoinToken: tok.GetToken(),
			TrustBundle: roots, SocketPath: socket, Log: log.Named("agent"), Ready: func(id spiffeid.ID) { agentReady <- id },
		})
	}()
	var agentID spiffeid.ID
	select {
	case agentID = <-agentReady:
	case err := <-agentDone:
		cancel()
		<-caDone
		return fmt.Errorf("agent: %w", err)
	case <-time.After(time.Minute):
		return fmt.Errorf("agent did not start within a minute")
	}
	fmt.Fprintf(c.stdout, `Signet is running: a CA and an agent, trust domain %s.

Point workloads at the agent:
  export SPIFFE_ENDPOINT_SOCKET=unix://%s

The agent's SPIFFE ID, the parent of the entries it serves:
  %s

Register a workload by the path of its binary and your user, so that
only that program gets the identity (unix:uid alone would give it to
every process you run, and unix:uid:0 to every root process):
  export SIGNET_ADMIN_SOCKET=%s
  signet entry create --parent-id %s --spiffe-id spiffe://%s/my/service \
    --selector unix:uid:%d --selector unix:path:/absolute/path/to/your/binary

Press Ctrl-C to stop.
`, td.Name(), socket, agentID, adminSock, agentID, td.Name(), os.Getuid())
	var first error
	select {
	case <-ctx.Done():
	case first = <-caDone:
		caDone = nil
	case first = <-agentDone:
		agentDone = nil
	}
	cancel()
	if agentDone != nil {
		if err := <-agentDone; first == nil {
			first = err
		}
	}
	if caDone != nil {
		if err := <-caDone; first == nil {
			first = err
		}
	}
	fmt.Fprintln(c.stdout, "stopped.")
	return first
}
