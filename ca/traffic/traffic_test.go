package traffic

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

const (
	front     = "spiffe://example.org/ns/shop/sa/front"
	cart      = "spiffe://example.org/ns/shop/sa/cart"
	payments  = "spiffe://example.org/ns/pay/sa/payments"
	inventory = "spiffe://example.org/ns/shop/sa/inventory"
	report    = "spiffe://example.org/ns/ops/sa/report"
	mallory   = "spiffe://example.org/ns/dev/sa/mallory"
)

// call is one regular flow: peer calls server's method at about rate
// calls a minute, of about size bytes each, when active says so.
type call struct {
	server, peer, method string
	rate, size           float64
	active               func(t time.Time) bool
}

func always(time.Time) bool { return true }

func hours(from, to int) func(time.Time) bool {
	return func(t time.Time) bool { return t.Hour() >= from && t.Hour() < to }
}

// regular is two weeks of five services' traffic: a shop front calling
// its cart day and night, the cart calling inventory and payments in
// business hours, and a weekly report job on Monday nights.
var regular = []call{
	{cart, front, "/shop.v1.Cart/Get", 30, 400, always},
	{cart, front, "/shop.v1.Cart/Add", 5, 300, hours(8, 20)},
	{inventory, cart, "/inv.v1.Inventory/Check", 20, 200, always},
	{payments, cart, "/pay.v1.Payments/Charge", 2, 1000, hours(8, 22)},
	{inventory, report, "/inv.v1.Inventory/Export", 50, 100_000, func(t time.Time) bool {
		return t.Weekday() == time.Monday && t.Hour() == 2 && t.Minute() < 10
	}},
}

// poisson draws a count with mean m (normal approximation, at least 0).
func poisson(r *rand.Rand, m float64) int64 {
	n := int64(m + r.NormFloat64()*sqrt(m) + 0.5)
	return max(n, 0)
}

func sqrt(x float64) float64 {
	z := x
	for range 20 {
		z = (z + x/z) / 2
	}
	return z
}

// simulate feeds the engine every minute from start to end, with the
// extra counts of inject, and returns the anomalies.
func simulate(e *Engine, r *rand.Rand, start, end time.Time, inject func(t time.Time) []*typesv1.TrafficCount) []Anomaly {
	var out []Anomaly
	for t := start; t.Before(end); t = t.Add(time.Minute) {
		if t.Minute() == 0 {
			e.Advance(t)
		}
		for _, c := range regular {
			if !c.active(t) {
				continue
			}
			n := poisson(r, c.rate)
			if n == 0 {
				continue
			}
			bytes := int64(float64(n) * c.size * (0.8 + 0.4*r.Float64()))
			out = append(out, e.Add(&typesv1.TrafficCount{Server: c.server, Peer: c.peer, Method: c.method, Minute: t.Unix(),
				Calls: n, BytesIn: bytes / 10, BytesOut: bytes})...)
		}
		if inject != nil {
			for _, tc := range inject(t) {
				out = append(out, e.Add(tc)...)
			}
		}
	}
	return out
}

// TestDetectsInjectedAnomalies: two simulated weeks of regular traffic
// between five services, a weekly job among them, give at most one false
// anomaly per day once learned; then a new caller, a known caller at
// 03:00 on a Sunday, a caller downloading 20 times its usual bytes, and a
// burst of denials are each detected, as what they are.
func TestDetectsInjectedAnomalies(t *testing.T) {
	e := New(Config{})
	r := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC) // a Monday
	weeks := start.Add(14 * 24 * time.Hour)
	regularAnomalies := simulate(e, r, start, weeks, nil)
	for _, a := range regularAnomalies {
		if a.At.Before(start.Add(7 * 24 * time.Hour)) {
			t.Errorf("an anomaly while learning: %+v", a)
		}
	}
	t.Logf("%d false anomalies in the second week of regular traffic", len(regularAnomalies))
	if len(regularAnomalies) > 7 {
		t.Errorf("more than one false anomaly a day: %+v", regularAnomalies)
	}
	for _, a := range regularAnomalies {
		t.Logf("false: %s %s %s %s %s", a.Kind, a.Peer, a.Method, a.At.Format(time.RFC3339), a.Detail)
	}

	// Day 15 (Monday) to day 21 (Sunday): regular traffic, and four
	// departures from it.
	sunday3 := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	heavy := time.Date(2026, 11, 18, 14, 0, 0, 0, time.UTC)
	denied := time.Date(2026, 11, 19, 11, 0, 0, 0, time.UTC)
	newCaller := time.Date(2026, 11, 17, 10, 30, 0, 0, time.UTC)
	inject := func(t time.Time) []*typesv1.TrafficCount {
		switch {
		case t.Equal(newCaller):
			return []*typesv1.TrafficCount{{Server: cart, Peer: mallory, Method: "/shop.v1.Cart/Get", Minute: t.Unix(), Calls: 3, BytesOut: 1200}}
		case t.Equal(sunday3):
			return []*typesv1.TrafficCount{{Server: payments, Peer: cart, Method: "/pay.v1.Payments/Charge", Minute: t.Unix(), Calls: 1, BytesOut: 1000}}
		case !t.Before(heavy) && t.Before(heavy.Add(time.Hour)):
			// 20 times the usual bytes of front's cart reads.
			return []*typesv1.TrafficCount{{Server: cart, Peer: front, Method: "/shop.v1.Cart/Get", Minute: t.Unix(), Calls: 1, BytesOut: 19 * 30 * 400}}
		case !t.Before(denied) && t.Before(denied.Add(2*time.Minute)):
			return []*typesv1.TrafficCount{{Server: inventory, Peer: cart, Method: "/inv.v1.Inventory/Check", Minute: t.Unix(), Calls: 15, Denials: 15}}
		}
		return nil
	}
	found := simulate(e, r, weeks, weeks.Add(7*24*time.Hour), inject)
	want := map[string]func(Anomaly) bool{
		"new caller": func(a Anomaly) bool { return a.Kind == NewCaller && a.Peer == mallory && a.Server == cart },
		"Sunday 03:00": func(a Anomaly) bool {
			return a.Kind == UnusualTime && a.Peer == cart && a.Server == payments && a.At.Equal(sunday3)
		},
		"20x bytes": func(a Anomaly) bool {
			return a.Kind == Volume && a.Peer == front && a.Method == "/shop.v1.Cart/Get" && a.At.Sub(heavy) < time.Hour && !a.At.Before(heavy)
		},
		"denials": func(a Anomaly) bool {
			return a.Kind == Denials && a.Peer == cart && a.Server == inventory && a.At.Sub(denied) < 2*time.Minute
		},
	}
	injected := 0
	for name, match := range want {
		ok := false
		for _, a := range found {
			if match(a) {
				ok = true
				injected++
				t.Logf("%s: %s %s", name, a.Kind, a.Detail)
				break
			}
		}
		if !ok {
			t.Errorf("%s: not detected; found %+v", name, found)
		}
	}
	if extra := len(found) - injected; extra > 7 {
		t.Errorf("%d false anomalies in the week with the injected ones (at most one a day)", extra)
	}
}

// TestWeeklyJobIsLearned: a job that runs an hour a week is no anomaly
// once it has run, and one that first runs after the learning week is.
func TestWeeklyJobIsLearned(t *testing.T) {
	e := New(Config{})
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	job := func(at time.Time) []Anomaly {
		var out []Anomaly
		for m := range 10 {
			tm := at.Add(time.Duration(m) * time.Minute)
			out = append(out, e.Add(&typesv1.TrafficCount{Server: inventory, Peer: report, Method: "/inv.v1.Inventory/Export", Minute: tm.Unix(), Calls: 50, BytesOut: 5_000_000})...)
		}
		return out
	}
	// Another caller keeps the server's profile going.
	for d := range 35 {
		day := start.Add(time.Duration(d) * 24 * time.Hour)
		for h := range 24 {
			tm := day.Add(time.Duration(h) * time.Hour)
			e.Advance(tm)
			e.Add(&typesv1.TrafficCount{Server: inventory, Peer: cart, Method: "/inv.v1.Inventory/Check", Minute: tm.Unix(), Calls: 20})
			if tm.Weekday() == time.Monday && h == 2 {
				if got := job(tm); len(got) > 0 {
					t.Errorf("the weekly job on %s: %+v", tm.Format("2006-01-02"), got)
				}
			}
		}
	}
	e2 := New(Config{})
	for h := range 8 * 24 {
		tm := start.Add(time.Duration(h) * time.Hour)
		e2.Advance(tm)
		e2.Add(&typesv1.TrafficCount{Server: inventory, Peer: cart, Method: "/inv.v1.Inventory/Check", Minute: tm.Unix(), Calls: 20})
	}
	got := e2.Add(&typesv1.TrafficCount{Server: inventory, Peer: report, Method: "/inv.v1.Inventory/Export", Minute: start.Add(8 * 24 * time.Hour).Unix(), Calls: 50})
	if len(got) != 1 || got[0].Kind != NewCaller {
		t.Errorf("a caller first seen after the learning week: %+v", got)
	}
}

// TestSuggestAndDiff: the policy suggested from a week of regular traffic
// allows every regular call of the next week and no call of a caller
// never seen; its diff against that week (with a new caller, and a known
// caller at 03:00 on a Sunday) is exactly those calls.
func TestSuggestAndDiff(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	all := func(string) bool { return true }
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	week1 := New(Config{})
	simulate(week1, rand.New(rand.NewPCG(3, 4)), start, start.Add(7*24*time.Hour), nil)
	suggested := Suggest(Observations(week1.Profiles(), start, all))
	for _, p := range suggested {
		if err := authz.CheckPolicy(td, p); err != nil {
			t.Fatalf("suggested policy %s: %v", p.GetName(), err)
		}
	}
	if len(suggested) != 3 {
		t.Errorf("%d policies suggested, want one for each of the 3 servers called", len(suggested))
	}

	next := start.Add(7 * 24 * time.Hour)
	regularWeek := New(Config{})
	simulate(regularWeek, rand.New(rand.NewPCG(5, 6)), next, next.Add(7*24*time.Hour), nil)
	if denied, err := Diff(suggested, Observations(regularWeek.Profiles(), next, all), td); err != nil || len(denied) != 0 {
		t.Fatalf("the suggestion denies regular calls of the next week: %+v, %v", denied, err)
	}

	sunday3 := time.Date(2026, 11, 15, 3, 0, 0, 0, time.UTC)
	injected := New(Config{})
	simulate(injected, rand.New(rand.NewPCG(7, 8)), next, next.Add(7*24*time.Hour), func(tm time.Time) []*typesv1.TrafficCount {
		switch {
		case tm.Equal(next.Add(30 * time.Hour)):
			return []*typesv1.TrafficCount{{Server: cart, Peer: mallory, Method: "/shop.v1.Cart/Get", Minute: tm.Unix(), Calls: 3}}
		case tm.Equal(sunday3):
			return []*typesv1.TrafficCount{{Server: payments, Peer: cart, Method: "/pay.v1.Payments/Charge", Minute: tm.Unix(), Calls: 1}}
		}
		return nil
	})
	denied, err := Diff(suggested, Observations(injected.Profiles(), next, all), td)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range denied {
		got = append(got, fmt.Sprintf("%s %s %s h%d", d.Server, d.Peer, d.Method, d.Hour))
	}
	want := []string{
		fmt.Sprintf("%s %s %s h%d", cart, mallory, "/shop.v1.Cart/Get", 30),
		fmt.Sprintf("%s %s %s h%d", payments, cart, "/pay.v1.Payments/Charge", 6*24+3),
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSuggestGeneralises: many IDs of one service account become a
// pattern of it, many accounts of one namespace calling the same methods
// the namespace.
func TestSuggestGeneralises(t *testing.T) {
	var obs []Observation
	var hours [168]bool
	for h := range hours {
		hours[h] = true
	}
	for i := range 4 {
		obs = append(obs, Observation{Server: cart, Peer: fmt.Sprintf("spiffe://example.org/ns/shop/sa/front/pod/%d", i), Method: "/shop.v1.Cart/Get", Hours: hours, Seen: hours})
	}
	for i := range 6 {
		obs = append(obs, Observation{Server: cart, Peer: fmt.Sprintf("spiffe://example.org/ns/batch/sa/job%d", i), Method: "/shop.v1.Cart/Export", Hours: hours, Seen: hours})
	}
	obs = append(obs, Observation{Server: cart, Peer: "spiffe://example.org/ns/ops/sa/admin", Method: "/shop.v1.Cart/Reset", Hours: hours, Seen: hours})
	ps := Suggest(obs)
	if len(ps) != 1 {
		t.Fatalf("%d policies", len(ps))
	}
	var peers []string
	for _, r := range ps[0].GetRules() {
		for _, p := range r.GetPeers() {
			peers = append(peers, p.GetId()+p.GetPattern()+p.GetNamespace()+" "+strings.Join(r.GetMethods(), ","))
		}
		if len(r.GetWhen()) != 0 {
			t.Errorf("windows for callers at every hour: %v", r.GetWhen())
		}
	}
	slices.Sort(peers)
	want := []string{"batch /shop.v1.Cart/Export", "spiffe://example.org/ns/ops/sa/admin /shop.v1.Cart/Reset", "spiffe://example.org/ns/shop/sa/front/** /shop.v1.Cart/Get"}
	if !slices.Equal(peers, want) {
		t.Errorf("peers: %q, want %q", peers, want)
	}
}

// TestSuggestAndDiffConnections: the connections of a plain TLS listener
// (authz.ConnectionMethod) are suggested as rules on that method, which
// allow the connection and no call, and judged by the handshake in diff.
func TestSuggestAndDiffConnections(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	db := "spiffe://example.org/ns/data/sa/db"
	var office [168]bool
	for h := 9; h < 17; h++ {
		office[h] = true
	}
	seen := func(peer string, hours [168]bool) Observation {
		return Observation{Server: db, Peer: peer, Method: authz.ConnectionMethod, Hours: hours, Seen: hours}
	}
	suggested := Suggest([]Observation{seen(cart, office)})
	if len(suggested) != 1 {
		t.Fatalf("%d policies, want 1", len(suggested))
	}
	if err := authz.CheckPolicy(td, suggested[0]); err != nil {
		t.Fatalf("suggested policy: %v", err)
	}
	if r := suggested[0].GetRules(); len(r) != 1 || !slices.Equal(r[0].GetMethods(), []string{authz.ConnectionMethod}) {
		t.Fatalf("rules %v, want one on %s", r, authz.ConnectionMethod)
	}
	var night [168]bool
	night[6*24+3] = true
	denied, err := Diff(suggested, []Observation{seen(cart, office), seen(mallory, office), seen(cart, night)}, td)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range denied {
		got = append(got, fmt.Sprintf("%s h%d", d.Peer, d.Hour))
	}
	want := []string{mallory + " h9", mallory + " h10", mallory + " h11", mallory + " h12", mallory + " h13", mallory + " h14", mallory + " h15", mallory + " h16", cart + " h147"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestHoursFoldOnTheCountsTime: a server's hours are folded into its
// baselines as its counts move on to later hours, without the CA's clock
// (Advance), so traffic replayed or simulated faster than time passes is
// judged as it would be live.
func TestHoursFoldOnTheCountsTime(t *testing.T) {
	e := New(Config{})
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	for h := range 48 {
		at := start.Add(time.Duration(h)*time.Hour + 30*time.Minute)
		e.Add(&typesv1.TrafficCount{Server: cart, Peer: front, Method: "/shop.v1.Cart/Get", Minute: at.Unix(), Calls: 10, BytesOut: 4000})
		e.Add(&typesv1.TrafficCount{Server: inventory, Peer: cart, Method: "/inv.v1.Inventory/Check", Minute: start.Unix() + 60, Calls: 1})
	}
	m := e.Profiles()[cart].Callers[front].Methods["/shop.v1.Cart/Get"]
	if m.Calls.Hours != 47 || m.Calls.Mean != 10 || m.Bytes.Mean != 4000 {
		t.Fatalf("cart's baseline after 48 hours of counts: %+v, %+v; want 47 hours folded (the last still open) of 10 calls, 4000 bytes", m.Calls, m.Bytes)
	}
	if n := e.Profiles()[inventory].Callers[cart].Methods["/inv.v1.Inventory/Check"].Calls.Hours; n != 0 {
		t.Fatalf("inventory, whose counts stayed in one hour, has %d hours folded", n)
	}
	e.Advance(start.Add(49 * time.Hour))
	if n := e.Profiles()[inventory].Callers[cart].Methods["/inv.v1.Inventory/Check"].Calls.Hours; n != 1 {
		t.Fatalf("after Advance, inventory has %d hours folded, want 1", n)
	}
}

// TestDiffNewMethodAtItsHour: a known caller that calls a method once, at
// one hour, shows in a diff at that hour only, not at every hour it calls
// its other methods in; a profile kept before methods recorded their
// hours falls back to the caller's.
func TestDiffNewMethodAtItsHour(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	e := New(Config{Learn: -1})
	start := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	for h := range 7 * 24 {
		at := start.Add(time.Duration(h)*time.Hour + 30*time.Minute)
		e.Add(&typesv1.TrafficCount{Server: payments, Peer: cart, Method: "/pay.v1.Payments/Charge", Minute: at.Unix(), Calls: 5})
	}
	suggested := Suggest(Observations(e.Profiles(), start, func(string) bool { return true }))
	refund := start.AddDate(0, 0, 2).Add(10 * time.Hour) // Wednesday 10:00
	e.Add(&typesv1.TrafficCount{Server: payments, Peer: cart, Method: "/pay.v1.Payments/Refund", Minute: refund.Unix(), Calls: 1})
	denied, err := Diff(suggested, Observations(e.Profiles(), start, func(string) bool { return true }), td)
	if err != nil {
		t.Fatal(err)
	}
	if len(denied) != 1 || denied[0].Method != "/pay.v1.Payments/Refund" || denied[0].Hour != 2*24+10 {
		t.Fatalf("diff: %+v; want the refund at Wednesday 10:00 only", denied)
	}
	// A profile from before: the method's hours unknown.
	e.Profiles()[payments].Callers[cart].Methods["/pay.v1.Payments/Refund"].SeenHours = nil
	denied, _ = Diff(suggested, Observations(e.Profiles(), start, func(string) bool { return true }), td)
	if len(denied) != 7*24 {
		t.Fatalf("diff of an old profile: %d hours, want the caller's 168", len(denied))
	}
}
