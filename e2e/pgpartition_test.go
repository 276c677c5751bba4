package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/e2e/pgenv"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// pgTCP serves the test's PostgreSQL (a Unix socket only) on a TCP address,
// as a PostgreSQL with tcp_keepalives set would: a client that stops
// answering is dropped within a few seconds (keepalive probes, and
// TCP_USER_TIMEOUT for unacknowledged data), its session ends, and its
// advisory locks are released. The product asks the server for the same
// on its leader connection (tcp_keepalives_*: about 25 s); 5 s keeps the
// test short.
func pgTCP(t *testing.T, addr, sock string) {
	t.Helper()
	lc := net.ListenConfig{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 2 * time.Second, Interval: time.Second, Count: 3},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 5000)
			}); err != nil {
				return err
			}
			return serr
		},
	}
	l, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	forward(t, l, func() (net.Conn, error) { return net.Dial("unix", sock) }, 0)
}

// TestReplicaCutFromPostgres: the leading replica is cut from PostgreSQL
// by a partition (dropped packets, in a network namespace of its own),
// while PostgreSQL stays up for the other replica. The cut replica stops
// leading within seconds and says so (metric, /readyz, log); the other
// leads once PostgreSQL drops the cut sessions; the cut replica sends its
// agents away, so that changes made meanwhile reach them; after the
// partition it follows, hears the others again and serves what was
// written; the bundle is the same; the workloads never hold an expired
// SVID.
func TestReplicaCutFromPostgres(t *testing.T) {
	dsn := pgenv.Database(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	ns := newNetNS(t)
	pgAddr := net.JoinHostPort(ns.hostIP, strings.Split(systest.FreeAddr(t), ":")[1])
	pgTCP(t, pgAddr, filepath.Join(u.Query().Get("host"), ".s.PGSQL.5432"))
	overTCP := (&url.URL{Scheme: "postgres", User: u.User, Host: pgAddr, Path: u.Path, RawQuery: url.Values{"sslmode": {"disable"}}.Encode()}).String()
	free := func() string { return net.JoinHostPort(ns.nsIP, strings.Split(systest.FreeAddr(t), ":")[1]) }
	a := &caProc{dir: t.TempDir(), listen: free(), health: free(), args: []string{"--datastore", overTCP}, logs: &systest.Buffer{}, netns: ns.name}
	b := newCAProc(t, systest.FreeAddr(t), "--datastore", dsn)
	a.start(t)
	waitFor(t, 30*time.Second, func() error {
		if !a.leads() {
			return errors.New("not leading")
		}
		return nil
	}, func() string { return "the replica in the namespace does not lead; logs:\n" + a.logs.String() })
	ctx := context.Background()
	uid := fmt.Sprint(os.Getuid())
	// The agent is given both replicas and starts while only the one to be
	// cut runs, so that it is on that one when the partition comes.
	agent := newAgentProc(t, a, "n1", a.listen+","+b.listen, "", systest.FreeAddr(t))
	a.streams(t, 1)
	b.start(t)
	entry := func(r *caProc, id string) error {
		_, err := r.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
			SpiffeId: "spiffe://example.org/" + id, ParentId: "spiffe://example.org/signet/agent/join/n1",
			Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:" + uid}}}}})
		return err
	}
	for _, id := range ids("w", 2) {
		if err := entry(b, id); err != nil {
			t.Fatal(err)
		}
	}
	w := startWorkloads(t, agent.sock, ids("w", 2))
	bundle := signet(t, b.dir, "bundle", "show")

	heal := ns.partition(t, pgAddr)
	cut := time.Now()
	waitFor(t, 20*time.Second, func() error {
		if v, err := metricValue(a.health, "signet_ca_leader"); err != nil || v != 0 {
			return fmt.Errorf("signet_ca_leader %v, %v", v, err)
		}
		return nil
	}, func() string { return "the cut replica still leads; logs:\n" + a.logs.String() })
	t.Logf("the cut replica stopped leading %s after the partition", time.Since(cut).Round(time.Millisecond))
	waitFor(t, 60*time.Second, func() error {
		if !b.leads() {
			return errors.New("not leading")
		}
		return nil
	}, func() string { return "the other replica never led; logs:\n" + b.logs.String() })
	t.Logf("the other replica led %s after the partition", time.Since(cut).Round(time.Millisecond))
	waitFor(t, 60*time.Second, func() error {
		code, body, err := httpGet("http://" + a.health + "/readyz")
		if err == nil && (code == 200 || !strings.Contains(body, "store")) {
			err = fmt.Errorf("%d %s", code, body)
		}
		return err
	}, func() string { return "the cut replica's /readyz never named the store; logs:\n" + a.logs.String() })
	t.Logf("the cut replica not ready %s after the partition", time.Since(cut).Round(time.Millisecond))
	for _, want := range []string{"lost the lead", "lost the store's notification connection"} {
		waitFor(t, 10*time.Second, func() error {
			if !strings.Contains(a.logs.String(), want) {
				return errors.New("not in the log")
			}
			return nil
		}, func() string { return fmt.Sprintf("the cut replica's log never said %q:\n%s", want, a.logs.String()) })
	}
	// A change made at the replica that reaches PostgreSQL reaches the
	// agent: the cut replica sent it away.
	if err := entry(b, "during"); err != nil {
		t.Fatalf("the replica that reaches PostgreSQL refused a write: %v", err)
	}
	t.Logf("an entry written during the partition reached the agent %s after it was written", holdsID(t, agent.sock, "during", 60*time.Second))
	// The cut replica sends agents away (REPLICA_DEAF); a caller without
	// an agent's SVID is refused for what it is, and learns nothing of the
	// replica's state.
	if err := anonymousSync(a.listen); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Sync without a client certificate at the cut replica: %v, want Unauthenticated", err)
	}

	heal()
	back := time.Now()
	waitFor(t, 60*time.Second, func() error {
		if v, err := metricValue(a.health, "signet_ca_store_listening"); err != nil || v != 1 {
			return fmt.Errorf("listening %v, %v", v, err)
		}
		if code, body, err := httpGet("http://" + a.health + "/readyz"); err != nil || code != 200 {
			return fmt.Errorf("/readyz %d %s %v", code, body, err)
		}
		return nil
	}, func() string { return "the cut replica never recovered; logs:\n" + a.logs.String() })
	t.Logf("the cut replica ready again %s after the partition ended", time.Since(back).Round(time.Millisecond))
	if a.leads() || !b.leads() {
		t.Fatalf("after the partition: the cut replica leads %v, the other %v; want the other alone", a.leads(), b.leads())
	}
	var list *adminv1.ListEntriesResponse
	waitFor(t, 30*time.Second, func() error {
		list, err = a.admin.ListEntries(ctx, &adminv1.ListEntriesRequest{})
		return err
	}, func() string { return "the cut replica does not answer admin calls" })
	found := false
	for _, e := range list.GetEntries() {
		found = found || e.GetSpiffeId() == "spiffe://example.org/during"
	}
	if !found {
		t.Fatal("the entry written during the partition is not served by the replica that was cut")
	}
	var werr error
	waitFor(t, 30*time.Second, func() error { werr = entry(a, "after"); return werr }, func() string {
		return fmt.Sprintf("the cut replica refuses writes after the partition: %v", werr)
	})
	holdsID(t, agent.sock, "after", 30*time.Second)
	for _, r := range []*caProc{a, b} {
		if got := signet(t, r.dir, "bundle", "show"); got != bundle {
			t.Error("the trust bundle changed across the partition")
		}
	}
	w.check(t)
}

// anonymousSync opens a Sync stream at addr over TLS without a client
// certificate, as anyone who reaches the port can, and returns how it
// ends.
func anonymousSync(addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := agentv1.NewNodeClient(conn).Sync(ctx, &agentv1.SyncRequest{})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}
