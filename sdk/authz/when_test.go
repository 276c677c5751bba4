package authz

import (
	"strings"
	"testing"
	"time"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// TestWhen: a rule with windows applies in them only, in their time zone,
// across midnight and daylight saving; a deny with a window lifts outside
// it.
func TestWhen(t *testing.T) {
	policies := []*typesv1.AccessPolicy{{Name: "batch", Target: "spiffe://example.org/ns/shop/sa/db", Rules: []*typesv1.PolicyRule{
		{Action: "allow", Peers: []*typesv1.PolicyPeer{{ServiceAccount: "shop/report"}}, Methods: []string{"/db.v1.DB/Read"},
			When: []*typesv1.TimeWindow{
				{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Start: "09:00", End: "17:30", TimeZone: "Europe/Berlin"},
				{Days: []string{"sat"}, Start: "22:00", End: "02:00", TimeZone: "Europe/Berlin"},
			}},
		{Action: "allow", Peers: []*typesv1.PolicyPeer{{ServiceAccount: "shop/admin"}}},
		{Action: "deny", Peers: []*typesv1.PolicyPeer{{ServiceAccount: "shop/admin"}}, Methods: []string{"/db.v1.DB/Drop"},
			When: []*typesv1.TimeWindow{{Start: "00:00", End: "24:00", Days: []string{"sun"}}}},
	}}}
	rules, err := PolicyRules(policies)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(td, rules...)
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	at := func(s string, loc *time.Location) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	report, admin := id("spiffe://example.org/ns/shop/sa/report"), id("spiffe://example.org/ns/shop/sa/admin")
	for _, c := range []struct {
		when   time.Time
		peer   string
		method string
		want   bool
	}{
		{at("2026-12-02 10:00", berlin), "report", "/db.v1.DB/Read", true},    // Wednesday
		{at("2026-12-02 08:59", berlin), "report", "/db.v1.DB/Read", false},   // before the window
		{at("2026-12-02 17:30", berlin), "report", "/db.v1.DB/Read", false},   // the end is not in it
		{at("2026-12-02 16:29", time.UTC), "report", "/db.v1.DB/Read", true},  // 17:29 in Berlin
		{at("2026-12-06 03:00", berlin), "report", "/db.v1.DB/Read", false},   // Sunday 03:00
		{at("2026-12-05 23:00", berlin), "report", "/db.v1.DB/Read", true},    // Saturday night
		{at("2026-12-06 01:59", berlin), "report", "/db.v1.DB/Read", true},    // past midnight, still Saturday's
		{at("2026-12-07 01:00", berlin), "report", "/db.v1.DB/Read", false},   // Sunday night is not
		{at("2026-07-01 09:30", berlin), "report", "/db.v1.DB/Read", true},    // summer time
		{at("2026-07-01 07:30", time.UTC), "report", "/db.v1.DB/Read", true},  // 09:30 CEST
		{at("2026-07-01 06:30", time.UTC), "report", "/db.v1.DB/Read", false}, // 08:30 CEST
		{at("2026-12-06 12:00", time.UTC), "admin", "/db.v1.DB/Drop", false},  // the Sunday deny
		{at("2026-12-07 12:00", time.UTC), "admin", "/db.v1.DB/Drop", true},   // lifted on Monday
		{at("2026-12-06 12:00", time.UTC), "admin", "/db.v1.DB/Read", true},   // other methods
		{at("2026-12-02 10:00", berlin), "report", "/db.v1.DB/Write", false},  // not the method
	} {
		a.SetClock(func() time.Time { return c.when })
		p := report
		if c.peer == "admin" {
			p = admin
		}
		if got := a.Allowed(p, c.method); got != c.want {
			t.Errorf("%s %s at %s: %v, want %v", c.peer, c.method, c.when.In(berlin).Format("Mon 2006-01-02 15:04 MST"), got, c.want)
		}
	}
	// The handshake: a peer only allowed in a window is refused outside it.
	a.SetClock(func() time.Time { return at("2026-12-06 03:00", berlin) })
	if a.MayConnect(report) {
		t.Error("a peer allowed only in windows may connect outside them")
	}
	a.SetClock(func() time.Time { return at("2026-12-02 10:00", berlin) })
	if !a.MayConnect(report) {
		t.Error("a peer allowed in a window may not connect in it")
	}

	for name, c := range map[string]struct {
		w    *typesv1.TimeWindow
		want string
	}{
		"bad day":    {&typesv1.TimeWindow{Days: []string{"someday"}, Start: "09:00", End: "10:00"}, "day"},
		"bad start":  {&typesv1.TimeWindow{Start: "9:00", End: "10:00"}, "HH:MM"},
		"bad end":    {&typesv1.TimeWindow{Start: "09:00", End: "24:30"}, "24:00"},
		"24 start":   {&typesv1.TimeWindow{Start: "24:00", End: "10:00"}, "24:00"},
		"empty":      {&typesv1.TimeWindow{Start: "09:00", End: "09:00"}, "empty window"},
		"bad zone":   {&typesv1.TimeWindow{Start: "09:00", End: "10:00", TimeZone: "Mars/Olympus"}, "timeZone"},
		"minutes 60": {&typesv1.TimeWindow{Start: "09:60", End: "10:00"}, "HH:MM"},
	} {
		_, err := PolicyRules([]*typesv1.AccessPolicy{{Name: "p", Rules: []*typesv1.PolicyRule{{Action: "allow",
			Peers: []*typesv1.PolicyPeer{{Namespace: "x"}}, When: []*typesv1.TimeWindow{c.w}}}}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// TestShadow: audit-mode policies decide nothing; the calls they would
// deny (with the code rules, as if they replaced the enforced policies)
// are passed on as shadow denials.
func TestShadow(t *testing.T) {
	a, err := New(td, Allow(PeerTrustDomain("example.org")).OnMethods("/health.v1.Health/Check"))
	if err != nil {
		t.Fatal(err)
	}
	enforced, _ := PolicyRules([]*typesv1.AccessPolicy{{Name: "open", Target: "spiffe://example.org/cart", Rules: []*typesv1.PolicyRule{
		{Action: "allow", Peers: []*typesv1.PolicyPeer{{TrustDomain: "example.org"}}}}}})
	audit := []*typesv1.AccessPolicy{{Name: "tight", Target: "spiffe://example.org/cart", Mode: "audit", Rules: []*typesv1.PolicyRule{
		{Action: "allow", Peers: []*typesv1.PolicyPeer{{Id: "spiffe://example.org/front"}}, Methods: []string{"/cart.v1.Cart/Get"}}}}}
	if rules, _ := PolicyRules(audit); len(rules) != 0 {
		t.Fatal("an audit-mode policy among the enforced rules")
	}
	shadow, err := ShadowRules(audit)
	if err != nil || len(shadow) != 1 {
		t.Fatalf("shadow rules: %v, %v", shadow, err)
	}
	a.SetCentral(enforced)
	a.SetShadow(shadow)
	var seen []Decision
	a.OnDecision(func(d Decision) { seen = append(seen, d) })
	front, other := id("spiffe://example.org/front"), id("spiffe://example.org/other")
	if !a.Check(front, "", "/cart.v1.Cart/Get") || !a.Check(other, "", "/cart.v1.Cart/Get") || !a.Check(other, "", "/health.v1.Health/Check") {
		t.Fatal("an audit-mode policy refused a call")
	}
	var shadows []string
	for _, d := range seen {
		if d.Shadow {
			shadows = append(shadows, d.Peer.String()+" "+d.Method)
		}
	}
	// front's Get is allowed by the audit policy, the health check by a
	// code rule; other's Get is not.
	if len(shadows) != 1 || shadows[0] != "spiffe://example.org/other /cart.v1.Cart/Get" {
		t.Errorf("shadow denials: %v", shadows)
	}
	if allowed, denied, _ := a.Counts(); allowed != 3 || denied != 0 {
		t.Errorf("counts %d allowed %d denied: shadow denials are no denials", allowed, denied)
	}
	if err := CheckPolicy(td, &typesv1.AccessPolicy{Name: "x", Target: "spiffe://example.org/cart", Mode: "dry-run", Rules: audit[0].Rules}); err == nil || !strings.Contains(err.Error(), "mode") {
		t.Errorf("a bad mode: %v", err)
	}
}

// TestFrom: a rule with from applies to peers whose attributes (their
// SVID's marks) name one of its places; without attributes it applies to
// none.
func TestFrom(t *testing.T) {
	rules, err := PolicyRules([]*typesv1.AccessPolicy{{Name: "db", Target: "spiffe://example.org/db", Rules: []*typesv1.PolicyRule{
		{Action: "allow", Peers: []*typesv1.PolicyPeer{{TrustDomain: "example.org"}}, From: []*typesv1.PolicySource{{Namespace: "shop"}, {Node: "db-node-1"}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := New(td, rules...)
	p := id("spiffe://example.org/ns/shop/sa/web")
	for _, c := range []struct {
		attrs Attributes
		want  bool
	}{
		{Attributes{Namespace: "shop", Node: "n7"}, true},
		{Attributes{Namespace: "dev", Node: "db-node-1"}, true},
		{Attributes{Namespace: "dev", Node: "n7"}, false},
		{Attributes{}, false},
	} {
		if got := a.CheckFrom(p, c.attrs, "", "/db.v1.DB/Read"); got != c.want {
			t.Errorf("from %+v: %v, want %v", c.attrs, got, c.want)
		}
		if got := a.MayConnectFrom(p, c.attrs); got != c.want {
			t.Errorf("handshake from %+v: %v, want %v", c.attrs, got, c.want)
		}
	}
	if a.Check(p, "", "/db.v1.DB/Read") {
		t.Error("a call without attributes matched a rule with from")
	}
	for name, src := range map[string]*typesv1.PolicySource{"both": {Namespace: "a", Node: "b"}, "neither": {}} {
		_, err := PolicyRules([]*typesv1.AccessPolicy{{Name: "x", Rules: []*typesv1.PolicyRule{{Action: "allow", Peers: []*typesv1.PolicyPeer{{Namespace: "x"}}, From: []*typesv1.PolicySource{src}}}}})
		if err == nil || !strings.Contains(err.Error(), "from") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestFederatedPeers: a federated trust domain's peer is allowed only by a
// rule that names its trust domain, and never by a from condition (its CA
// may write any place into its SVIDs).
func TestFederatedPeers(t *testing.T) {
	a, err := New(td,
		Allow(PeerNamespace("shop")),
		Allow(PeerPattern("spiffe://example.org/**")),
		Allow(PeerTrustDomain("partner.test")).FromSources(Source{Namespace: "shop"}).OnMethods("/db.v1.DB/Write"),
		Allow(PeerID("spiffe://partner.test/billing")).OnMethods("/db.v1.DB/Read"),
	)
	if err != nil {
		t.Fatal(err)
	}
	forged := Attributes{Namespace: "shop", Node: "db-node-1"}
	for _, c := range []struct {
		peer, method string
		want         bool
	}{
		{"spiffe://partner.test/billing", "/db.v1.DB/Read", true},
		{"spiffe://partner.test/billing", "/db.v1.DB/Write", false}, // from names a place the partner's CA cannot vouch for
		{"spiffe://partner.test/ns/shop/sa/web", "/db.v1.DB/Read", false},
		{"spiffe://other.test/billing", "/db.v1.DB/Read", false},
		{"spiffe://example.org/ns/shop/sa/web", "/db.v1.DB/Write", true},
	} {
		if got := a.CheckFrom(id(c.peer), forged, "", c.method); got != c.want {
			t.Errorf("%s %s: %v, want %v", c.peer, c.method, got, c.want)
		}
	}
	if a.MayConnectFrom(id("spiffe://other.test/billing"), forged) {
		t.Error("a handshake of an unnamed trust domain's peer passed")
	}
}
