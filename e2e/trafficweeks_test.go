package e2e

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// rawCodec carries a gRPC message as its bytes, so that one handler can
// serve any method by name: the shop's services below are names and
// payload sizes, which is all the CA learns from.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*v.(*[]byte) = append((*v.(*[]byte))[:0], b...)
	return nil
}
func (rawCodec) Name() string { return "signet-e2e-raw" }

func init() { encoding.RegisterCodec(rawCodec{}) }

// sizedReply answers every call with as many bytes as its request asks
// for (a big-endian uint32).
func sizedReply(_ any, stream grpc.ServerStream) error {
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	if len(req) != 4 {
		return fmt.Errorf("request of %d bytes, want 4", len(req))
	}
	resp := make([]byte, binary.BigEndian.Uint32(req))
	return stream.SendMsg(&resp)
}

// TestTrafficThreeSimulatedWeeks is the zero-trust loop's proof through
// the real path: signet-ca and signet-agent as processes, five services
// as SDK sources on the agent making real gRPC calls over mutual TLS,
// their traffic reported by the SDK to the agent and on to the CA. The
// SDK stamps the counts with an injected clock, so that three weeks pass
// in seconds. Week one is learned; week two is regular traffic (at most
// one false anomaly a day); week three adds a new caller, a known caller
// at 03:00 on a Sunday, a known caller calling a method it never called,
// a caller downloading 20 times its usual bytes and a burst of denials,
// which must all be found. `signet policy
// suggest` on week one allows all of week two, and `signet policy diff`
// of it lists exactly the injected calls a policy can refuse.
func TestTrafficThreeSimulatedWeeks(t *testing.T) {
	const (
		front     = "spiffe://example.org/ns/shop/sa/front"
		cart      = "spiffe://example.org/ns/shop/sa/cart"
		inventory = "spiffe://example.org/ns/shop/sa/inventory"
		payments  = "spiffe://example.org/ns/pay/sa/payments"
		report    = "spiffe://example.org/ns/ops/sa/report"
		mallory   = "spiffe://example.org/ns/dev/sa/mallory"
	)
	ids := []string{front, cart, inventory, payments, report, mallory}
	dir, m := meshOnOneAgent(t, ids)
	src := map[string]*sdk.Source{}
	for i, id := range ids {
		src[id] = m.srcs[i]
	}
	// The simulated clock: the SDK stamps each call's minute with it,
	// the servers' policies read their windows from it.
	var simNow atomic.Int64
	clock := func() time.Time { return time.Unix(simNow.Load(), 0).UTC() }
	for _, s := range m.srcs {
		s.SetClock(clock)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The servers. Their policies in force are broad (the trust
	// domain), as before a least-privilege policy is learned; inventory
	// refuses cart's checks in a weekly maintenance window.
	td := src[cart].TrustDomain()
	maintenance := authz.Window{Days: []time.Weekday{time.Thursday}, Start: "11:00", End: "11:10"}
	addr := map[string]string{}
	for _, server := range []string{cart, inventory, payments} {
		rules := []authz.Rule{authz.Allow(authz.PeerTrustDomain(td.Name()))}
		if server == inventory {
			rules = append(rules, authz.Deny(authz.PeerID(cart)).OnMethods("/inv.v1.Inventory/Check").During(maintenance))
		}
		az, err := authz.New(td, rules...)
		if err != nil {
			t.Fatal(err)
		}
		az.SetClock(clock)
		go src[server].Follow(ctx, az, nil)
		srv := grpc.NewServer(append(sdk.GRPCServerOptions(src[server], az), grpc.UnknownServiceHandler(sizedReply))...)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		t.Cleanup(srv.Stop)
		addr[server] = l.Addr().String()
	}
	conns := map[[2]string]*grpc.ClientConn{}
	call := func(peer, server, method string, size int) error {
		k := [2]string{peer, server}
		if conns[k] == nil {
			c, err := grpc.NewClient(addr[server], grpc.WithTransportCredentials(sdk.ClientCredentials(src[peer], tlsconfig.AuthorizeID(spiffeid.RequireFromString(server)))),
				grpc.WithDefaultCallOptions(grpc.CallContentSubtype(rawCodec{}.Name())))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			conns[k] = c
		}
		req, resp := binary.BigEndian.AppendUint32(nil, uint32(size)), []byte(nil)
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		return conns[k].Invoke(cctx, method, &req, &resp)
	}

	// Regular traffic, by the hour: the front reads and fills carts day
	// and night and in business hours, the cart checks stock and
	// charges payments, and a report job exports the inventory on Monday
	// nights.
	type flow struct {
		server, peer, method string
		perHour, size        int
		active               func(time.Time) bool
	}
	always := func(time.Time) bool { return true }
	business := func(t time.Time) bool { return t.Hour() >= 8 && t.Hour() < 20 }
	flows := []flow{
		{cart, front, "/shop.v1.Cart/Get", 12, 400, always},
		{cart, front, "/shop.v1.Cart/Add", 6, 300, business},
		{inventory, cart, "/inv.v1.Inventory/Check", 10, 200, always},
		{payments, cart, "/pay.v1.Payments/Charge", 10, 1000, business},
		{inventory, report, "/inv.v1.Inventory/Export", 20, 100_000, func(t time.Time) bool {
			return t.Weekday() == time.Monday && t.Hour() == 2
		}},
	}
	r := rand.New(rand.NewPCG(1, 2))
	poisson := func(mean int) int { // normal approximation, at least 1
		return max(1, int(float64(mean)+r.NormFloat64()*math.Sqrt(float64(mean))+0.5))
	}
	// lastSeen is, per server, caller and method, the last minute a call
	// was stamped with: what the CA must have learned before it is asked.
	lastSeen := map[[3]string]int64{}
	calls := 0
	do := func(at time.Time, peer, server, method string, n, size int, wantDenied bool) {
		t.Helper()
		simNow.Store(at.Unix())
		for range n {
			err := call(peer, server, method, size)
			if denied := status.Code(err) == codes.PermissionDenied; denied != wantDenied || err != nil && !denied {
				t.Fatalf("%s: %s calling %s %s: %v", at.Format(time.RFC3339), peer, server, method, err)
			}
			calls++
		}
		lastSeen[[3]string{server, peer, method}] = at.Unix() / 60 * 60
	}
	run := func(from, to time.Time, inject func(hour time.Time)) {
		t.Helper()
		for h := from; h.Before(to); h = h.Add(time.Hour) {
			for _, f := range flows {
				if f.active(h) {
					size := f.size
					if inject != nil && f.peer == front && f.method == "/shop.v1.Cart/Get" && h.Equal(heavyHour(from)) {
						size *= 20 // the heavy download of week three
					}
					do(h.Add(30*time.Minute), f.peer, f.server, f.method, poisson(f.perHour), size, false)
				}
			}
			if inject != nil {
				inject(h)
			}
		}
	}
	admin := func() adminv1.AdminClient {
		conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return adminv1.NewAdminClient(conn)
	}()
	// learned waits until the CA has learned every call made so far.
	learned := func(what string) {
		t.Helper()
		start := time.Now()
		eventuallyTB(t, "the CA learned "+what, func() bool {
			resp, err := admin.ListObservedCalls(ctx, &adminv1.ListObservedCallsRequest{})
			if err != nil {
				return false
			}
			got := map[[3]string]int64{}
			for _, oc := range resp.GetCalls() {
				got[[3]string{oc.GetServer(), oc.GetPeer(), oc.GetMethod()}] = oc.GetLastSeen()
			}
			for k, at := range lastSeen {
				if got[k] < at {
					return false
				}
			}
			return true
		})
		t.Logf("%s: %d calls so far, learned by the CA %s after the last", what, calls, time.Since(start).Round(time.Millisecond))
	}
	// The simulated weeks end a week before today, so that the CA's own
	// clock has closed every hour of them.
	now := time.Now().UTC()
	monday := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC).AddDate(0, 0, -int((now.Weekday()+6)%7))
	week1 := monday.AddDate(0, 0, -28)
	week2, week3, end := week1.AddDate(0, 0, 7), week1.AddDate(0, 0, 14), week1.AddDate(0, 0, 21)
	since := fmt.Sprintf("%dh", int(time.Since(week1).Hours())+24)

	// Week one: learned.
	run(week1, week2, nil)
	learned("week one")
	suggestion := filepath.Join(t.TempDir(), "suggested.json")
	var policies []json.RawMessage
	for _, server := range []string{cart, inventory, payments} {
		var out struct {
			Policies []json.RawMessage `json:"policies"`
		}
		if err := json.Unmarshal([]byte(signet(t, dir, "policy", "suggest", "--server", server, "--since", since, "--format", "json")), &out); err != nil || len(out.Policies) != 1 {
			t.Fatalf("policy suggest --server %s: %v, %d policies", server, err, len(out.Policies))
		}
		policies = append(policies, out.Policies...)
	}
	b, _ := json.Marshal(map[string]any{"policies": policies})
	if err := os.WriteFile(suggestion, b, 0o600); err != nil {
		t.Fatal(err)
	}

	// Week two: regular traffic, judged.
	run(week2, week3, nil)
	learned("week two")
	anomalies := func(from, to time.Time) []string {
		resp, err := admin.ListAnomalies(ctx, &adminv1.ListAnomaliesRequest{Since: from.Unix()})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range resp.GetAnomalies() {
			if at := time.Unix(a.GetAt(), 0).UTC(); !at.Before(from) && at.Before(to) {
				out = append(out, fmt.Sprintf("%s %s %s→%s %s: %s", at.Format("Mon 15:04"), a.GetKind(), a.GetPeer(), a.GetServer(), a.GetMethod(), a.GetDetail()))
			}
		}
		return out
	}
	if found := anomalies(week1, week2); len(found) != 0 {
		t.Errorf("anomalies while learning:\n%s", strings.Join(found, "\n"))
	}
	falseWeek2 := anomalies(week2, week3)
	t.Logf("week two: %d false anomalies:\n%s", len(falseWeek2), strings.Join(falseWeek2, "\n"))
	if len(falseWeek2) > 7 {
		t.Errorf("more than one false anomaly a day in week two")
	}
	if out := signet(t, dir, "policy", "diff", suggestion, "--since", since, "-o", "json"); !strings.Contains(out, `"would_deny": []`) {
		t.Errorf("the suggestion from week one denies calls of weeks one and two:\n%s", out)
	}

	// Week three: regular traffic, and four departures from it.
	newCaller := week3.AddDate(0, 0, 1).Add(10*time.Hour + 30*time.Minute) // Tuesday 10:30
	sunday3 := week3.AddDate(0, 0, 6).Add(3 * time.Hour)                   // Sunday 03:00
	denials := week3.AddDate(0, 0, 3).Add(11*time.Hour + 2*time.Minute)    // Thursday 11:02, in maintenance
	refund := week3.AddDate(0, 0, 2).Add(10*time.Hour + 15*time.Minute)    // Wednesday 10:15
	run(week3, end, func(h time.Time) {
		switch {
		case h.Equal(newCaller.Truncate(time.Hour)):
			do(newCaller, mallory, cart, "/shop.v1.Cart/Get", 3, 400, false)
		case h.Equal(sunday3):
			do(sunday3, cart, payments, "/pay.v1.Payments/Charge", 1, 1000, false)
		case h.Equal(refund.Truncate(time.Hour)):
			// A known caller calls a method it never called.
			do(refund, cart, payments, "/pay.v1.Payments/Refund", 1, 100, false)
		case h.Equal(denials.Truncate(time.Hour)):
			// 60, three times the rule's 20 in five minutes: should the
			// SDK's reports split the burst, and the CA's clock (far past
			// these weeks) forget the first part between them, the other
			// part is still a burst.
			do(denials, cart, inventory, "/inv.v1.Inventory/Check", 60, 200, true)
		}
	})
	learned("week three")
	heavy := heavyHour(week3)
	want := map[string]func(string) bool{
		"a new caller": func(a string) bool { return strings.Contains(a, "new_caller "+mallory+"→"+cart) },
		"a known caller on Sunday at 03:00": func(a string) bool {
			return strings.HasPrefix(a, "Sun 03:00 unusual_time "+cart+"→"+payments)
		},
		"20 times the usual bytes": func(a string) bool {
			return strings.HasPrefix(a, heavy.Format("Mon 15")) && strings.Contains(a, "volume "+front+"→"+cart+" /shop.v1.Cart/Get")
		},
		"a method the caller never called": func(a string) bool {
			return strings.HasPrefix(a, "Wed 10:15 new_method "+cart+"→"+payments+" /pay.v1.Payments/Refund")
		},
		"a burst of denials": func(a string) bool {
			return strings.HasPrefix(a, "Thu 11:") && strings.Contains(a, "denials "+cart+"→"+inventory)
		},
	}
	// Wait for the anomalies themselves (the CA stores them as it learns
	// the counts that show them; 30 s allows for a loaded machine).
	var found []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		found = anomalies(week3, end)
		all := true
		for _, match := range want {
			all = all && slices.ContainsFunc(found, match)
		}
		if all || time.Now().After(deadline) {
			break
		}
	}
	injected := 0
	for name, match := range want {
		i := slices.IndexFunc(found, match)
		if i < 0 {
			t.Errorf("%s: not found among week three's anomalies:\n%s\n%s", name, strings.Join(found, "\n"), auditSummary(t, dir, week3))
			continue
		}
		injected++
		t.Logf("%s: %s", name, found[i])
	}
	if extra := len(found) - injected; extra > 7 {
		t.Errorf("%d false anomalies in week three:\n%s", extra, strings.Join(found, "\n"))
	}

	var diff struct {
		WouldDeny []struct{ Server, Peer, Method, Hour string } `json:"would_deny"`
	}
	if err := json.Unmarshal([]byte(signet(t, dir, "policy", "diff", suggestion, "--since", since, "-o", "json")), &diff); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range diff.WouldDeny {
		got = append(got, fmt.Sprintf("%s %s %s %s", d.Hour, d.Peer, d.Server, d.Method))
	}
	wantDiff := []string{
		"Tuesday 10:00 UTC " + mallory + " " + cart + " /shop.v1.Cart/Get",
		"Sunday 03:00 UTC " + cart + " " + payments + " /pay.v1.Payments/Charge",
		"Wednesday 10:00 UTC " + cart + " " + payments + " /pay.v1.Payments/Refund",
	}
	slices.Sort(got)
	slices.Sort(wantDiff)
	if !slices.Equal(got, wantDiff) {
		t.Errorf("policy diff of the suggestion:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantDiff, "\n"))
	}
	t.Logf("%d real calls over three simulated weeks", calls)
}

// auditSummary says, from the CA's audit log, which denials it received
// (decided since from, in real time) and which anomalies it found: whether
// a missing anomaly was never found, or found and not listed.
func auditSummary(t *testing.T, dir string, from time.Time) string {
	b, err := os.ReadFile(filepath.Join(dir, "audit.log"))
	if err != nil {
		return "audit log: " + err.Error()
	}
	denials := map[string]int{}
	var anomalies []string
	for _, line := range strings.Split(string(b), "\n") {
		var r struct {
			Event    string    `json:"event"`
			SPIFFEID string    `json:"spiffe_id"`
			Peer     string    `json:"peer"`
			Method   string    `json:"method"`
			Time     time.Time `json:"time"`
			Window   time.Time `json:"window"`
		}
		if json.Unmarshal([]byte(line), &r) != nil {
			continue
		}
		switch {
		case r.Event == "authz.deny" && !r.Time.Before(from):
			denials[r.Time.Format("Mon 15:04")+" "+r.Peer+"→"+r.SPIFFEID+" "+r.Method]++
		case strings.HasPrefix(r.Event, "anomaly."):
			anomalies = append(anomalies, r.Window.Format("Mon 15:04")+" "+r.Event+" "+r.Peer+"→"+r.SPIFFEID+" "+r.Method)
		}
	}
	return fmt.Sprintf("the CA's audit log: denial decisions received (by caller, method and the time the service decided) %v; anomalies found:\n%s", denials, strings.Join(anomalies, "\n"))
}

// heavyHour is the hour of week three's heavy download: Wednesday 14:00
// of the week that starts on monday.
func heavyHour(monday time.Time) time.Time { return monday.AddDate(0, 0, 2).Add(14 * time.Hour) }
