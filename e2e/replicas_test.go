package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
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

// newReplica is a signet-ca process on the store at dsn, not started
// yet.
func newReplica(t *testing.T, dsn string) *caProc {
	return newCAProc(t, systest.FreeAddr(t), "--datastore", dsn)
}

// waitFor polls cond until it returns nil, failing the test with what()
// and cond's last error after d.
func waitFor(t *testing.T, d time.Duration, cond func() error, what func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (last: %v)", what(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplicasOnPostgres runs two signet-ca replicas on one PostgreSQL
// database: both serve agents and admin calls, a change made on one
// reaches agents of the other through the database's notifications, and
// after kill -9 of the leader under registration and issuance load the
// other replica leads, nothing acknowledged is lost, the agents move over
// and keep their workloads served, and the trust bundle is unchanged.
func TestReplicasOnPostgres(t *testing.T) {
	dsn := pgenv.Database(t)
	a, b := newReplica(t, dsn), newReplica(t, dsn)
	a.start(t)
	waitFor(t, 30*time.Second, func() error {
		if !a.leads() {
			return fmt.Errorf("not leading")
		}
		return nil
	}, func() string { return "the first replica does not lead; logs:\n" + a.logs.String() })
	uid := fmt.Sprint(os.Getuid())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Agents given both replicas, started while only the leader runs so
	// that they are all on it when it is killed; one more agent given only
	// the leader, to see a change made on the other replica arrive
	// through the database.
	both := a.listen + "," + b.listen
	socks := map[string]string{}
	for _, node := range []string{"n1", "n2"} {
		sock, _ := startAgentProcess(t, a.dir, both, node)
		socks[node] = sock
	}
	pinned, _ := startAgentProcess(t, a.dir, a.listen, "pinned")
	a.streams(t, 3)
	b.start(t)
	if b.leads() {
		t.Fatal("both replicas lead")
	}
	bundle := signet(t, a.dir, "bundle", "show")
	if got := signet(t, b.dir, "bundle", "show"); got != bundle {
		t.Fatal("the replicas serve different bundles")
	}
	b.streams(t, 0)
	entry := func(r *caProc, id, node string, selector string) (*typesv1.Entry, error) {
		resp, err := r.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
			SpiffeId: "spiffe://example.org/" + id, ParentId: "spiffe://example.org/signet/agent/join/" + node,
			Selectors: []*typesv1.Selector{{Type: "unix", Value: selector}},
		}}})
		if err != nil {
			return nil, err
		}
		return resp.GetEntries()[0], nil
	}
	// Created on the follower, served by the agent that only knows the
	// leader: the leader heard of it from PostgreSQL, not by polling
	// (a stream re-reads the store on its own only every minute).
	if _, err := entry(b, "cross", "pinned", "uid:"+uid); err != nil {
		t.Fatal(err)
	}
	t.Logf("an entry created on the follower reached an agent of the leader in %s", holdsID(t, pinned, "cross", 20*time.Second))
	for node, sock := range socks {
		if _, err := entry(a, "w-"+node, node, "uid:"+uid); err != nil {
			t.Fatal(err)
		}
		holdsID(t, sock, "w-"+node, 30*time.Second)
	}

	// Registration and issuance load on both replicas: entries for the
	// agents' nodes, which the agents mint SVIDs for.
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		wg    sync.WaitGroup
	)
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	for w, r := range []*caProc{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; load.Err() == nil; i++ {
				node := []string{"n1", "n2"}[i%2]
				id := fmt.Sprintf("load/%d/%d", w, i)
				e, err := entry(r, id, node, fmt.Sprintf("uid:%d", 100000+i))
				if err != nil {
					if r == a {
						return // the leader is gone
					}
					continue
				}
				mu.Lock()
				acked[e.GetId()] = e.GetSpiffeId()
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitFor(t, 60*time.Second, func() error {
		if n := count(); n < 100 {
			return fmt.Errorf("%d acknowledged", n)
		}
		return nil
	}, func() string { return "the load made too little progress" })

	// kill -9 of the leader.
	a.kill9(t)
	killed := time.Now()
	waitFor(t, 60*time.Second, func() error {
		if !b.leads() {
			return fmt.Errorf("not leading")
		}
		return nil
	}, func() string { return "the other replica did not take the lead; logs:\n" + b.logs.String() })
	t.Logf("the other replica led %s after the kill", time.Since(killed).Round(time.Millisecond))
	b.streams(t, 2)
	t.Logf("both agents' streams were open on the other replica %s after the kill", time.Since(killed).Round(time.Millisecond))
	// The agents keep serving, and now through the other replica: a new
	// entry reaches each of their workloads, and a JWT-SVID (signed by the
	// CA for each request) is issued.
	for node, sock := range socks {
		if _, err := entry(b, "after-"+node, node, "uid:"+uid); err != nil {
			t.Fatal(err)
		}
		took := holdsID(t, sock, "after-"+node, 60*time.Second)
		t.Logf("agent %s served an entry created after the kill %s after it was created", node, took.Round(time.Millisecond))
		waitFor(t, 30*time.Second, func() error {
			jctx, jcancel := context.WithTimeout(ctx, 5*time.Second)
			defer jcancel()
			_, err := workloadapi.FetchJWTSVID(jctx, jwtsvid.Params{Audience: "after-kill-" + node}, workloadapi.WithAddr("unix://"+sock))
			return err
		}, func() string { return "no JWT-SVID from agent " + node + " after the kill" })
	}
	stopLoad()
	wg.Wait()

	// Nothing acknowledged is lost.
	var listed struct {
		Entries []struct {
			ID       string `json:"id"`
			SPIFFEID string `json:"spiffe_id"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(signet(t, b.dir, "entry", "list", "-o", "json")), &listed); err != nil {
		t.Fatal(err)
	}
	have := map[string]string{}
	for _, e := range listed.Entries {
		have[e.ID] = e.SPIFFEID
	}
	mu.Lock()
	defer mu.Unlock()
	for id, spiffeID := range acked {
		if have[id] != spiffeID {
			t.Errorf("acknowledged entry %s (%s) lost", id, spiffeID)
		}
	}
	if got := signet(t, b.dir, "bundle", "show"); got != bundle {
		t.Error("the bundle changed when the leader was killed")
	}
	t.Logf("%d entries acknowledged under load, all present after the kill", len(acked))
}

// TestReplicasSurvivePostgresAway: the PostgreSQL server goes away for a
// while under two replicas. Both say so (/readyz names the store,
// signet_ca_store_listening is 0), writes are refused, the agent and its
// workloads keep what they hold; when PostgreSQL is back the replicas
// listen again by themselves and a change made on one reaches the agent.
func TestReplicasSurvivePostgresAway(t *testing.T) {
	srv, err := pgenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dsn, err := srv.Database()
	if err != nil {
		t.Fatal(err)
	}
	a, b := newReplica(t, dsn), newReplica(t, dsn)
	a.start(t)
	b.start(t)
	ctx := context.Background()
	agent := newAgentProc(t, a, "n1", a.listen+","+b.listen, "", systest.FreeAddr(t))
	uid := fmt.Sprint(os.Getuid())
	for _, id := range ids("w", 3) {
		if _, err := b.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
			SpiffeId: "spiffe://example.org/" + id, ParentId: "spiffe://example.org/signet/agent/join/n1",
			Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:" + uid}}}}}); err != nil {
			t.Fatal(err)
		}
	}
	w := startWorkloads(t, agent.sock, ids("w", 3))

	srv.Pause()
	gone := time.Now()
	for _, r := range []*caProc{a, b} {
		waitFor(t, 30*time.Second, func() error {
			code, body, err := httpGet("http://" + r.health + "/readyz")
			if err == nil && (code == 200 || !strings.Contains(body, "store")) {
				err = fmt.Errorf("%d %s", code, body)
			}
			return err
		}, func() string { return "a replica's /readyz never named the store; logs:\n" + r.logs.String() })
		if v, err := metricValue(r.health, "signet_ca_store_listening"); err != nil || v != 0 {
			t.Errorf("signet_ca_store_listening = %v, %v; want 0 with PostgreSQL away", v, err)
		}
	}
	if _, err := a.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
		SpiffeId: "spiffe://example.org/refused", ParentId: "spiffe://example.org/signet/agent/join/n1",
		Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:" + uid}}}}}); err == nil {
		t.Fatal("an entry was created with the database away")
	}
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(a.logs.String(), "lost the store's notification connection") {
			return errors.New("not in the log")
		}
		return nil
	}, func() string { return "the replica's log never said it lost PostgreSQL:\n" + a.logs.String() })
	t.Logf("PostgreSQL away: both replicas not ready %s after it went", time.Since(gone).Round(time.Millisecond))

	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, r := range []*caProc{a, b} {
		waitFor(t, 30*time.Second, func() error {
			v, err := metricValue(r.health, "signet_ca_store_listening")
			if err == nil && v != 1 {
				err = errors.New("not listening")
			}
			return err
		}, func() string { return "a replica never listened again; logs:\n" + r.logs.String() })
	}
	t.Logf("both replicas listening again %s after PostgreSQL was back", time.Since(back).Round(time.Millisecond))
	var created error
	waitFor(t, 30*time.Second, func() error {
		_, created = b.admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
			SpiffeId: "spiffe://example.org/after", ParentId: "spiffe://example.org/signet/agent/join/n1",
			Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:" + uid}}}}})
		return created
	}, func() string { return "writes still refused after PostgreSQL was back" })
	holdsID(t, agent.sock, "after", 30*time.Second)
	t.Logf("a new entry reached the agent %s after PostgreSQL was back", time.Since(back).Round(time.Millisecond))
	w.check(t)
}

// TestJoinTokenReplayAcrossReplicas attacks the single use of a join
// token through the agent API of two replicas on one database: twenty
// attestations with the same token race, half at each replica, and
// exactly one gets an agent SVID.
func TestJoinTokenReplayAcrossReplicas(t *testing.T) {
	dsn := pgenv.Database(t)
	a, b := newReplica(t, dsn), newReplica(t, dsn)
	a.start(t)
	b.start(t)
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(signet(t, a.dir, "token", "create", "--node", "victim", "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	tlsCfg := tlsconfig.TLSClientConfig(bundleOf(t, a), tlsconfig.AuthorizeID(spiffeid.RequireFromPath(exampleTD, "/signet/ca")))
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		won      int
		refusals = map[codes.Code]int{}
	)
	start := make(chan struct{})
	for i := 0; i < 20; i++ {
		addr := a.listen
		if i%2 == 1 {
			addr = b.listen
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, csr := systest.NewCSR(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := agentv1.NewNodeClient(conn).AttestNode(context.Background(), &agentv1.AttestNodeRequest{
				Attestation: &agentv1.AttestNodeRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: tok.Token}}, Csr: csr})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won++
			} else {
				refusals[status.Code(err)]++
			}
		}()
	}
	close(start)
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d attestations with one join token succeeded across two replicas; want 1 (refusals: %v)", won, refusals)
	}
	for code := range refusals {
		if code == codes.Internal || code == codes.Unknown || code == codes.Unavailable {
			t.Errorf("replays refused with %v; want a refusal of the token: %v", code, refusals)
		}
	}
	t.Logf("1 attestation won, the replays were refused: %v", refusals)
}

// TestDatastorePasswordNeverShown: signet-ca given a PostgreSQL URL with a
// password it cannot use fails at start, naming the store, and the
// password is in neither its output nor its error.
func TestDatastorePasswordNeverShown(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(binDir, "signet-ca"), "--trust-domain", "example.org", "--data-dir", dir,
		"--datastore", "postgres://signet:s3cret-pw@127.0.0.1:1/signet?sslmode=disable&connect_timeout=2",
		"--listen", systest.FreeAddr(t), "--health-addr", systest.FreeAddr(t))
	out, err := runBounded(t, cmd, "signet-ca with an unreachable datastore")
	if err == nil {
		t.Fatalf("signet-ca started with a datastore it cannot reach:\n%s", out)
	}
	if !strings.Contains(string(out), "PostgreSQL") {
		t.Errorf("the error does not name the store:\n%s", out)
	}
	if strings.Contains(string(out), "s3cret-pw") {
		t.Fatalf("the password shows:\n%s", out)
	}
	for _, f := range []string{"audit.log"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && strings.Contains(string(b), "s3cret-pw") {
			t.Fatalf("the password is in %s", f)
		}
	}
}

// TestPprofOnlyOnLoopback: signet-ca refuses to serve its profiles (they
// show its memory, keys included) on any address but a loopback one.
func TestPprofOnlyOnLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0"} {
		cmd := exec.Command(filepath.Join(binDir, "signet-ca"), "--trust-domain", "example.org", "--data-dir", t.TempDir(),
			"--pprof-addr", addr, "--listen", systest.FreeAddr(t), "--health-addr", systest.FreeAddr(t))
		out, err := runBounded(t, cmd, "signet-ca --pprof-addr "+addr)
		if err == nil || !strings.Contains(string(out), "pprof-addr") {
			t.Errorf("--pprof-addr %s: %v\n%s; want a refusal naming pprof-addr", addr, err, out)
		}
	}
	ca := runCA(t, systest.FreeAddr(t), "--pprof-addr", "127.0.0.1:0")
	if !strings.Contains(ca.logs.String(), "serving Go profiles") {
		t.Fatalf("no profiles on loopback; logs:\n%s", ca.logs.String())
	}
}

var exampleTD = spiffeid.RequireTrustDomainFromString("example.org")

// bundleOf is the trust bundle r serves (signet bundle show).
func bundleOf(t *testing.T, r *caProc) *x509bundle.Bundle {
	t.Helper()
	var roots []*x509.Certificate
	for rest := []byte(signet(t, r.dir, "bundle", "show")); ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		roots = append(roots, c)
	}
	return x509bundle.FromX509Authorities(exampleTD, roots)
}

// joinAgentAt attests an agent for node with a join token at replica r
// and returns the agent API of r as that agent.
func joinAgentAt(t *testing.T, r *caProc, node string) agentv1.NodeClient {
	t.Helper()
	var tok struct{ Token string }
	if err := json.Unmarshal([]byte(signet(t, r.dir, "token", "create", "--node", node, "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	b := bundleOf(t, r)
	authz := tlsconfig.AuthorizeID(spiffeid.RequireFromPath(exampleTD, "/signet/ca"))
	dial := func(cfg *tls.Config) agentv1.NodeClient {
		conn, err := grpc.NewClient(r.listen, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return agentv1.NewNodeClient(conn)
	}
	key, csr := systest.NewCSR(t)
	resp, err := dial(tlsconfig.TLSClientConfig(b, authz)).AttestNode(context.Background(), &agentv1.AttestNodeRequest{
		Attestation: &agentv1.AttestNodeRequest_JoinToken{JoinToken: &agentv1.JoinTokenAttestation{Token: tok.Token}}, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: spiffeid.RequireFromString(resp.GetSpiffeId()), PrivateKey: key}
	for _, der := range resp.GetSvidChain() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		svid.Certificates = append(svid.Certificates, c)
	}
	return dial(tlsconfig.MTLSClientConfig(svid, b, authz))
}

// TestReplicasLearnTrafficTogether: on one PostgreSQL database only the
// leader learns services' traffic; a replica that does not lead hands
// its agents' counts over through the database. A service that runs on
// two nodes, whose agents report to different replicas, has one profile:
// a caller both nodes saw is new once, not once per replica, and the
// profile holds the callers of both.
func TestReplicasLearnTrafficTogether(t *testing.T) {
	dsn := pgenv.Database(t)
	a := newCAProc(t, systest.FreeAddr(t), "--datastore", dsn, "--traffic-learn", "0s")
	b := newCAProc(t, systest.FreeAddr(t), "--datastore", dsn, "--traffic-learn", "0s")
	a.start(t)
	waitFor(t, 30*time.Second, func() error {
		if !a.leads() {
			return errors.New("not leading")
		}
		return nil
	}, func() string { return "the first replica does not lead; logs:\n" + a.logs.String() })
	b.start(t)
	ctx := context.Background()
	const server, both, onlyB = "spiffe://example.org/shop", "spiffe://example.org/web", "spiffe://example.org/batch"
	na, nb := joinAgentAt(t, a, "shop-a"), joinAgentAt(t, b, "shop-b")
	for _, node := range []string{"shop-a", "shop-b"} {
		signet(t, a.dir, "entry", "create", "--spiffe-id", server, "--parent-id", "spiffe://example.org/signet/agent/join/"+node, "--selector", "unix:uid:1000")
	}
	minute := time.Now().Unix() / 60 * 60
	report := func(n agentv1.NodeClient, peers ...string) {
		var counts []*typesv1.TrafficCount
		for _, p := range peers {
			counts = append(counts, &typesv1.TrafficCount{Server: server, Peer: p, Method: "/shop.v1.Shop/Buy", Minute: minute, Calls: 5})
		}
		// Entries reach the CA's ownership check through the store; an
		// agent's report may come before its replica has read them.
		waitFor(t, 20*time.Second, func() error {
			_, err := n.ReportDecisions(ctx, &typesv1.DecisionReport{Traffic: counts})
			return err
		}, func() string { return "report traffic" })
	}
	newCallers := func() map[string]int {
		resp, err := b.admin.ListAnomalies(ctx, &adminv1.ListAnomaliesRequest{Server: server})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, an := range resp.GetAnomalies() {
			if an.GetKind() == "new_caller" {
				out[an.GetPeer()]++
			}
		}
		return out
	}
	report(na, both)
	waitFor(t, 20*time.Second, func() error {
		if n := newCallers()[both]; n != 1 {
			return fmt.Errorf("%d new-caller anomalies", n)
		}
		return nil
	}, func() string {
		return "the leader did not find the new caller its own agent reported; logs:\n" + a.logs.String()
	})
	// The same caller and one more, at the replica that does not lead:
	// handed to the leader, learned together.
	report(nb, both, onlyB)
	waitFor(t, 40*time.Second, func() error {
		if n := newCallers()[onlyB]; n != 1 {
			return fmt.Errorf("%d new-caller anomalies", n)
		}
		return nil
	}, func() string {
		return "the caller reported at the other replica was not found; logs:\n" + b.logs.String()
	})
	if got := newCallers(); got[both] != 1 {
		t.Fatalf("new-caller anomalies by caller %v: the caller both nodes saw is new %d times; want once", got, got[both])
	}
	// Either replica suggests a policy from the one profile.
	for name, r := range map[string]*caProc{"leader": a, "other replica": b} {
		out := signet(t, r.dir, "policy", "suggest", "--server", server, "--format", "json")
		if !strings.Contains(out, both) || !strings.Contains(out, onlyB) {
			t.Errorf("the %s suggests a policy without both nodes' callers:\n%s", name, out)
		}
	}
}
