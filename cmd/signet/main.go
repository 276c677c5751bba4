// Command signet is Signet's command-line interface. It talks to the admin
// API of signet-ca, on its Unix socket (--admin-socket, or
// SIGNET_ADMIN_SOCKET) or over mTLS (--admin-address, or
// SIGNET_ADMIN_ADDRESS, with the X509-SVID of SPIFFE_ENDPOINT_SOCKET), and
// runs `signet dev`, `signet fetch` and `signet healthcheck`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	_ "github.com/signet-id/signet/internal/grpcbuf" // buffers sized for batches of SVIDs
	"github.com/signet-id/signet/internal/version"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
)

// command is one `signet GROUP VERB` (or `signet VERB`).
type command struct {
	name     string
	synopsis string // its flags, for the overview
	summary  string
	run      func(c *cli, ctx context.Context, args []string) error
}

// commands is set in init: the commands' own help refers to it.
var commands []command

func init() {
	commands = []command{
		{"entry create", "--spiffe-id ID --parent-id ID --selector TYPE:KEY:VALUE... [--x509-ttl 1h] [--jwt-ttl 5m] [--dns NAME]... [--workload-key] | --file F",
			"register workloads (a file takes the output of entry list -o json)", (*cli).entryCreate},
		{"entry update", "--id ID [--spiffe-id ID] [--parent-id ID] [--selector S]... [--x509-ttl D] [--jwt-ttl D] [--dns NAME]... | --file F",
			"change entries: the flags given replace those fields", (*cli).entryUpdate},
		{"entry delete", "--id ID...", "delete entries", (*cli).entryDelete},
		{"entry list", "[--spiffe-id ID] [--parent-id ID] [--selector S]...", "list entries (all selectors must match)", (*cli).entryList},
		{"entry show", "ID", "show one entry", (*cli).entryShow},
		{"entry count", "[--spiffe-id ID] [--parent-id ID] [--selector S]...", "count entries", (*cli).entryCount},
		{"token create", "--node NAME [--ttl 10m]", "a single-use join token for an agent", (*cli).tokenCreate},
		{"token list", "", "the join tokens the CA keeps (by id: it stores no token itself)", (*cli).tokenList},
		{"token revoke", "--id ID | --node NAME", "delete unused join tokens", (*cli).tokenRevoke},
		{"agent list", "", "list agents", (*cli).agentList},
		{"agent show", "SPIFFE-ID", "show one agent", (*cli).agentShow},
		{"agent evict", "--id SPIFFE-ID", "evict an agent: the CA refuses its SVIDs from now on", (*cli).agentEvict},
		{"bundle show", "[--format pem|jwks|spiffe]", "the trust bundle", (*cli).bundleShow},
		{"policy create", "--file F", "create access policies (one, or the output of policy list -o json)", (*cli).policyCreate},
		{"policy list", "", "list access policies", (*cli).policyList},
		{"policy delete", "--name NAME", "delete an access policy", (*cli).policyDelete},
		{"policy suggest", "--server ID | --namespace NS [--since 7d] [--format kubernetes|json]", "the least access policies that allow the calls the CA observed, and nothing more", (*cli).policySuggest},
		{"policy diff", "FILE [--since 7d]", "the observed calls that the policies of FILE would deny", (*cli).policyDiff},
		{"revocation create", "--serial HEX | --spiffe-id ID | --agent ID | --ca-key ID", "revoke an X.509-SVID, every SVID of an ID, an agent and all it minted, or a CA key (with re-issue); peers refuse them within seconds", (*cli).revocationCreate},
		{"revocation list", "", "list the revocations in force", (*cli).revocationList},
		{"revocation delete", "--id ID", "withdraw a revocation", (*cli).revocationDelete},
		{"federation create", "--trust-domain TD --bundle-endpoint-url URL [--profile https_spiffe --endpoint-spiffe-id ID --bundle FILE]", "federate with another trust domain: fetch its bundle from its SPIFFE bundle endpoint, at its refresh hint", (*cli).federationCreate},
		{"federation list", "", "list the federated trust domains and when each bundle was fetched", (*cli).federationList},
		{"federation delete", "--trust-domain TD", "stop federating with a trust domain", (*cli).federationDelete},
		{"anomaly list", "[--since 24h] [--server ID]", "anomalies the CA found in services' traffic: new callers or methods, unusual hours, volume, denial bursts", (*cli).anomalyList},
		{"ca status", "", "the CA's keys, and which live agents and SDK workloads hold each root and JWT key", (*cli).caStatus},
		{"ca rotate", "--now [--force] [--ack-timeout 5m] [--grace 10s]", "emergency root rotation: prepare a root, wait until every live agent holds it, activate it, revoke the previous one and follow the re-issue", (*cli).caRotate},
		{"fetch x509", "[--socket ADDR] [--write DIR]", "the caller's X509-SVIDs from the Workload API, as a workload sees them", (*cli).fetchX509},
		{"fetch jwt", "--audience AUD [--spiffe-id ID] [--socket ADDR]", "a JWT-SVID from the Workload API", (*cli).fetchJWT},
		{"fetch bundle", "[--socket ADDR] [--write DIR]", "the trust bundles the Workload API gives the caller", (*cli).fetchBundle},
		{"audit verify", "FILE...", "check the hash chain of CA audit log files (oldest first): every record unchanged, none removed or inserted", (*cli).auditVerify},
		{"healthcheck", "[--addr HOST:PORT] [--live]", "ask a CA's or an agent's health endpoint whether it is ready (or live)", (*cli).healthcheck},
		{"version", "", "print the version", (*cli).printVersion},
	}
}

func usage() string {
	var b strings.Builder
	b.WriteString(`usage: signet [--admin-socket PATH | --admin-address HOST:PORT] COMMAND [flags]

  dev [--data-dir .signet] [--socket DATA-DIR/agent.sock] [--trust-domain example.org]
      run a CA and an agent in the foreground
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %s %s\n      %s\n", c.name, c.synopsis, c.summary)
	}
	b.WriteString(`
Every command that prints objects takes -o text (the default), json or yaml.
The admin API is at --admin-socket ($SIGNET_ADMIN_SOCKET), or over mTLS at
--admin-address ($SIGNET_ADMIN_ADDRESS) with the X509-SVID of
$SPIFFE_ENDPOINT_SOCKET. These flags may also follow the command.
"signet COMMAND --help" shows a command's flags.
`)
	return b.String()
}

type cli struct {
	stdout, stderr io.Writer
	// socket and address reach the admin API (global flags, accepted
	// before or after the command).
	socket, address string
	conn            *grpc.ClientConn
	closers         []func()
}

func main() {
	c := &cli{stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(c.run(context.Background(), os.Args[1:]))
}

// errUsage is a mistake in the command line, already reported.
var errUsage = errors.New("usage")

// errSilent is a failure the command has reported itself.
var errSilent = errors.New("failed")

func (c *cli) run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("signet", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.globalFlags(fs)
	showVersion := fs.Bool("version", false, "print the version")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, usage())
			return 0
		}
		fmt.Fprintf(c.stderr, "signet: %v\n\n%s", err, usage())
		return 2
	}
	if *showVersion {
		fmt.Fprintln(c.stdout, version.String("signet"))
		return 0
	}
	rest := fs.Args()
	switch {
	case len(rest) == 0:
		fmt.Fprint(c.stderr, usage())
		return 2
	case rest[0] == "help":
		fmt.Fprint(c.stdout, usage())
		return 0
	case rest[0] == "dev":
		return c.dev(ctx, rest[1:])
	}
	defer func() {
		if c.conn != nil {
			c.conn.Close()
		}
		for _, f := range c.closers {
			f()
		}
	}()
	cmd, args, code := lookUp(c, rest)
	if cmd == nil {
		return code
	}
	// Every call to the admin API is bounded; an emergency rotation waits
	// as long as its own flags say.
	if cmd.name != "ca rotate" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	err := cmd.run(c, ctx, args)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errSilent):
		return 1
	}
	if st, ok := status.FromError(err); ok {
		fmt.Fprintf(c.stderr, "signet %s: %s (%s)\n", cmd.name, st.Message(), st.Code())
	} else {
		fmt.Fprintf(c.stderr, "signet %s: %v\n", cmd.name, err)
	}
	return 1
}

// lookUp finds the command that args name and returns its arguments; for
// a group alone ("signet entry", "signet entry --help") it prints the
// group's commands, and returns no command and the exit code.
func lookUp(c *cli, args []string) (*command, []string, int) {
	for i := range commands {
		words := strings.Fields(commands[i].name)
		if len(args) >= len(words) && strings.Join(args[:len(words)], " ") == commands[i].name {
			return &commands[i], args[len(words):], 0
		}
	}
	var group []string
	for _, cmd := range commands {
		if g, _, ok := strings.Cut(cmd.name, " "); ok && g == args[0] {
			group = append(group, fmt.Sprintf("  signet %s %s\n      %s\n", cmd.name, cmd.synopsis, cmd.summary))
		}
	}
	if len(group) == 0 {
		fmt.Fprintf(c.stderr, "signet: unknown command %q\n\n%s", strings.Join(args, " "), usage())
		return nil, nil, 2
	}
	sort.Strings(group)
	help := len(args) > 1 && (args[1] == "--help" || args[1] == "-help" || args[1] == "-h" || args[1] == "help")
	out, code := c.stderr, 2
	if help {
		out, code = c.stdout, 0
	} else if len(args) > 1 {
		fmt.Fprintf(c.stderr, "signet: unknown command %q\n\n", strings.Join(args[:2], " "))
	}
	fmt.Fprintf(out, "usage: signet %s COMMAND [flags]\n\n%s\n\"signet %s COMMAND --help\" shows a command's flags.\n", args[0], strings.Join(group, ""), args[0])
	return nil, nil, code
}

// globalFlags registers the flags every command accepts.
func (c *cli) globalFlags(fs *flag.FlagSet) {
	if c.socket == "" {
		c.socket = os.Getenv("SIGNET_ADMIN_SOCKET")
	}
	if c.address == "" {
		c.address = os.Getenv("SIGNET_ADMIN_ADDRESS")
	}
	fs.StringVar(&c.socket, "admin-socket", c.socket, "admin socket of signet-ca (default $SIGNET_ADMIN_SOCKET)")
	fs.StringVar(&c.address, "admin-address", c.address, "admin API of signet-ca over mTLS, HOST:PORT (default $SIGNET_ADMIN_ADDRESS); authenticates with the X509-SVID of $SPIFFE_ENDPOINT_SOCKET")
}

// flags returns the flag set of a command, with the global flags and,
// unless output is nil, -o.
func (c *cli) flags(name string, output *string) *flag.FlagSet {
	fs := flag.NewFlagSet("signet "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	c.globalFlags(fs)
	if output != nil {
		fs.StringVar(output, "o", "text", "output format: text, json or yaml")
	}
	fs.Usage = func() {
		for _, cmd := range commands {
			if cmd.name == name {
				fmt.Fprintf(fs.Output(), "usage: signet %s %s\n\n%s\n\nflags:\n", cmd.name, cmd.synopsis, cmd.summary)
			}
		}
		fs.PrintDefaults()
	}
	return fs
}

// parse parses a command's flags; with maxArgs >= 0 it allows that many
// positional arguments, which it returns.
func (c *cli) parse(fs *flag.FlagSet, args []string, output *string, maxArgs int) ([]string, error) {
	// Flags may follow positional arguments: "entry show ID -o json".
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(c.stdout)
				fs.Usage()
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) > max(maxArgs, 0) {
		fmt.Fprintf(c.stderr, "%s: unexpected argument %q\n", fs.Name(), pos[max(maxArgs, 0)])
		return nil, errUsage
	}
	if output != nil {
		switch *output {
		case "text", "json", "yaml":
		default:
			fmt.Fprintf(c.stderr, "%s: -o %q: want text, json or yaml\n", fs.Name(), *output)
			return nil, errUsage
		}
	}
	return pos, nil
}

// printVersion is `signet version`.
func (c *cli) printVersion(_ context.Context, args []string) error {
	fs := c.flags("version", nil)
	if _, err := c.parse(fs, args, nil, 0); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, version.String("signet"))
	return nil
}

// admin returns a client of the admin API, connecting on first use.
func (c *cli) admin(ctx context.Context) (adminv1.AdminClient, error) {
	if c.conn == nil {
		conn, err := c.dialAdmin(ctx)
		if err != nil {
			return nil, err
		}
		c.conn = conn
	}
	return adminv1.NewAdminClient(c.conn), nil
}
