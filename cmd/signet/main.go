// Command signet is Signet's command-line interface. It talks to the admin
// socket of signet-ca (--admin-socket, or SIGNET_ADMIN_SOCKET).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
)

const usage = `usage: signet [--admin-socket PATH] COMMAND [flags]

commands:
  dev [--data-dir .signet] [--socket DATA-DIR/agent.sock] [--trust-domain example.org]
                                     run a CA and an agent in the foreground
  entry create --spiffe-id ID --parent-id ID --selector TYPE:KEY:VALUE [--selector ...] [--x509-ttl 1h] [--jwt-ttl 5m] [--dns NAME] [--workload-key]
  entry create --file entries.json
  entry list [--spiffe-id ID] [--parent-id ID] [--selector S]
  entry delete --id ID
  token create --node NAME [--ttl 10m]
  agent list
  agent evict --id SPIFFE-ID
  bundle show [--format pem|jwks|spiffe]
  policy create --file policy.json   (an AccessPolicy: {"name", "target", "rules": [{"action", "peers", "methods"}]})
  policy list
  policy delete --name NAME

Every command takes -o json. The admin socket defaults to $SIGNET_ADMIN_SOCKET.
`

type cli struct {
	stdout, stderr io.Writer
	socket         string
}

func main() {
	c := &cli{stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(c.run(context.Background(), os.Args[1:]))
}

func (c *cli) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("signet", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.Usage = func() { fmt.Fprint(c.stderr, usage) }
	fs.StringVar(&c.socket, "admin-socket", os.Getenv("SIGNET_ADMIN_SOCKET"), "admin socket of signet-ca")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	rest := fs.Args()
	if len(rest) >= 1 && rest[0] == "dev" {
		return c.dev(ctx, rest[1:])
	}
	if len(rest) < 2 {
		fs.Usage()
		return 2
	}
	cmds := map[string]func(context.Context, adminv1.AdminClient, []string) error{
		"entry create":  c.entryCreate,
		"entry list":    c.entryList,
		"entry delete":  c.entryDelete,
		"token create":  c.tokenCreate,
		"agent list":    c.agentList,
		"agent evict":   c.agentEvict,
		"bundle show":   c.bundleShow,
		"policy create": c.policyCreate,
		"policy list":   c.policyList,
		"policy delete": c.policyDelete,
	}
	name := rest[0] + " " + rest[1]
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(c.stderr, "signet: unknown command %q\n\n%s", name, usage)
		return 2
	}
	if c.socket == "" {
		fmt.Fprintln(c.stderr, "signet: no admin socket: pass --admin-socket or set SIGNET_ADMIN_SOCKET")
		return 2
	}
	sock, err := filepath.Abs(c.socket)
	if err != nil {
		fmt.Fprintln(c.stderr, "signet:", err)
		return 1
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(c.stderr, "signet:", err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := cmd(ctx, adminv1.NewAdminClient(conn), rest[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		if errors.Is(err, errUsage) {
			return 2
		}
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(c.stderr, "signet %s: %s (%s)\n", name, st.Message(), st.Code())
		} else {
			fmt.Fprintf(c.stderr, "signet %s: %v\n", name, err)
		}
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

// flags returns a flag set for a subcommand with the common -o flag.
func (c *cli) flags(name string, output *string) *flag.FlagSet {
	fs := flag.NewFlagSet("signet "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(output, "o", "text", "output format: text or json")
	return fs
}

func (c *cli) parse(fs *flag.FlagSet, args []string, output string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	if output != "text" && output != "json" {
		fmt.Fprintf(c.stderr, "%s: -o %q: want text or json\n", fs.Name(), output)
		return errUsage
	}
	return nil
}
