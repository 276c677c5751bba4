package authz

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

func TestDecisions(t *testing.T) {
	a, err := New(td,
		Allow(PeerID("spiffe://example.org/web")),
		Allow(PeerPattern("spiffe://example.org/ns/payments/**")),
		Allow(PeerPattern("spiffe://example.org/team/*/ci")).OnMethods("/build.v1.Builder/*"),
		Allow(PeerNamespace("shop")).OnMethods("GET /items", "GET /items/*"),
		Allow(PeerServiceAccount("ops", "admin")).OnMethods("* /admin/**"),
		Allow(PeerTrustDomain("partner.org")).OnMethods("/shop.v1.Cart/Get"),
		Deny(PeerID("spiffe://example.org/ns/payments/sa/legacy")),
		Deny(PeerNamespace("shop")).OnMethods("GET /items/secret"),
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		peer, verb, path string
		want             bool
	}{
		{"spiffe://example.org/web", "", "/any.Svc/Any", true},
		{"spiffe://example.org/web2", "", "/any.Svc/Any", false},
		{"spiffe://example.org/ns/payments/sa/api", "", "/x.Y/Z", true},
		{"spiffe://example.org/ns/payments", "", "/x.Y/Z", false}, // ** needs a segment
		{"spiffe://example.org/ns/payments/sa/legacy", "", "/x.Y/Z", false},
		{"spiffe://example.org/team/a/ci", "", "/build.v1.Builder/Run", true},
		{"spiffe://example.org/team/a/ci", "", "/deploy.v1.Deployer/Run", false},
		{"spiffe://example.org/team/a/b/ci", "", "/build.v1.Builder/Run", false},
		{"spiffe://example.org/ns/shop/sa/front", "GET", "/items", true},
		{"spiffe://example.org/ns/shop/sa/front", "GET", "/items/42", true},
		{"spiffe://example.org/ns/shop/sa/front", "GET", "/items/42/x", false},
		{"spiffe://example.org/ns/shop/sa/front", "POST", "/items", false},
		{"spiffe://example.org/ns/shop/sa/front", "GET", "/items/secret", false},
		{"spiffe://other.org/ns/shop/sa/front", "GET", "/items", false}, // namespace: local trust domain only
		{"spiffe://example.org/ns/ops/sa/admin", "DELETE", "/admin/users/1", true},
		{"spiffe://example.org/ns/ops/sa/viewer", "DELETE", "/admin/users/1", false},
		{"spiffe://partner.org/anything", "", "/shop.v1.Cart/Get", true},
		{"spiffe://partner.org/anything", "", "/shop.v1.Cart/Pay", false},
	} {
		if got := a.AllowedHTTP(id(tt.peer), tt.verb, tt.path); got != tt.want {
			t.Errorf("%s %s %s: allowed = %v, want %v", tt.peer, tt.verb, tt.path, got, tt.want)
		}
	}
	for peer, want := range map[string]bool{
		"spiffe://example.org/web":                   true,
		"spiffe://example.org/ns/payments/sa/legacy": false, // denied for every method
		"spiffe://example.org/ns/shop/sa/front":      true,  // denied for one path only
		"spiffe://example.org/stranger":              false,
	} {
		if got := a.MayConnect(id(peer)); got != want {
			t.Errorf("MayConnect(%s) = %v, want %v", peer, got, want)
		}
	}
}

func TestNoRulesDeniesEveryone(t *testing.T) {
	a, err := New(td)
	if err != nil {
		t.Fatal(err)
	}
	if a.MayConnect(id("spiffe://example.org/web")) || a.Allowed(id("spiffe://example.org/web"), "/a.B/C") {
		t.Fatal("an authorizer without rules allowed a peer")
	}
}

func TestCentralRulesJoinCodeRules(t *testing.T) {
	a, _ := New(td, Allow(PeerNamespace("shop")))
	peer := id("spiffe://example.org/ns/shop/sa/front")
	if !a.Allowed(peer, "/a.B/C") {
		t.Fatal("code rule did not allow")
	}
	if err := a.SetCentral([]Rule{Deny(PeerServiceAccount("shop", "front"))}); err != nil {
		t.Fatal(err)
	}
	if a.Allowed(peer, "/a.B/C") {
		t.Fatal("a central deny did not win over a code allow")
	}
	if err := a.SetCentral([]Rule{{Action: 7, Peers: []Peer{PeerNamespace("x")}}}); err == nil {
		t.Fatal("bad central rule accepted")
	}
	if a.Allowed(peer, "/a.B/C") {
		t.Fatal("a refused update changed the rules in force")
	}
	if err := a.SetCentral(nil); err != nil || !a.Allowed(peer, "/a.B/C") {
		t.Fatal("clearing central rules did not restore the code rules")
	}
}

func TestRuleErrors(t *testing.T) {
	for _, tt := range []struct {
		rule Rule
		want string
	}{
		{Rule{Peers: []Peer{PeerNamespace("a")}}, "action"},
		{Allow(), "no peers"},
		{Allow(Peer{}), "empty peer"},
		{Allow(PeerID("not-an-id")), "scheme"},
		{Allow(PeerPattern("spiffe://example.org/a/**/b")), "segment"},
		{Allow(PeerPattern("https://example.org/a")), "want spiffe://"},
		{Allow(PeerNamespace("a/b")), "namespace"},
		{Allow(PeerServiceAccount("a", "")), "service account"},
		{Allow(PeerTrustDomain("Bad Domain")), "trust domain"},
		{Allow(PeerNamespace("a")).OnMethods("Cart/Get"), "want"},
		{Allow(PeerNamespace("a")).OnMethods("/a/**/b"), "only at the end"},
		{Allow(PeerNamespace("a")).OnMethods(" /a"), "empty HTTP method"},
	} {
		_, err := New(td, tt.rule)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v; want error containing %q", tt.rule, err, tt.want)
		}
	}
}

// BenchmarkDecide is one authorization decision among 1,000 rules of
// every kind (goal: under 1 µs).
//
//	go test -run '^$' -bench Decide ./sdk/authz/
func BenchmarkDecide(b *testing.B) { benchmarkDecide(b, false) }

// BenchmarkDecideWithWindows is BenchmarkDecide with a weekly window in a
// named time zone on every rule (goal: under 1 µs too).
//
//	go test -run '^$' -bench Decide ./sdk/authz/
func BenchmarkDecideWithWindows(b *testing.B) { benchmarkDecide(b, true) }

func benchmarkDecide(b *testing.B, windows bool) {
	var rules []Rule
	for i := range 1000 {
		switch i % 5 {
		case 0:
			rules = append(rules, Allow(PeerID(fmt.Sprintf("spiffe://example.org/svc/%d", i))).OnMethods(fmt.Sprintf("/svc%d.v1.S/*", i)))
		case 1:
			rules = append(rules, Allow(PeerPattern(fmt.Sprintf("spiffe://example.org/ns/team%d/**", i))))
		case 2:
			rules = append(rules, Allow(PeerServiceAccount(fmt.Sprintf("ns%d", i), "api")).OnMethods("GET /items/*"))
		case 3:
			rules = append(rules, Deny(PeerNamespace(fmt.Sprintf("ns%d", i))).OnMethods("/admin.v1.Admin/*"))
		case 4:
			rules = append(rules, Allow(PeerPattern(fmt.Sprintf("spiffe://example.org/ns/x%d/sa/*", i))).OnMethods("/a.B/C", "/a.B/D"))
		}
	}
	if windows {
		berlin, err := time.LoadLocation("Europe/Berlin")
		if err != nil {
			b.Fatal(err)
		}
		for i := range rules {
			rules[i] = rules[i].During(Window{Days: []time.Weekday{time.Monday, time.Friday}, Start: "08:00", End: "20:00", Location: berlin},
				Window{Start: "22:00", End: "02:00"})
		}
	}
	a, err := New(td, rules...)
	if err != nil {
		b.Fatal(err)
	}
	peers := []spiffeid.ID{id("spiffe://example.org/svc/500"), id("spiffe://example.org/ns/team501/sa/web"),
		id("spiffe://example.org/ns/ns502/sa/api"), id("spiffe://example.org/ns/x504/sa/api"), id("spiffe://example.org/nobody")}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p := peers[i%len(peers)]
		i++
		a.Allowed(p, "/a.B/C")
	}
}

func TestPolicies(t *testing.T) {
	good := &typesv1.AccessPolicy{Name: "cart", Target: "spiffe://example.org/ns/shop/sa/cart", Rules: []*typesv1.PolicyRule{
		{Action: "allow", Peers: []*typesv1.PolicyPeer{{ServiceAccount: "shop/front"}}, Methods: []string{"/shop.v1.Cart/*"}},
		{Action: "deny", Peers: []*typesv1.PolicyPeer{{Pattern: "spiffe://example.org/ns/shop/sa/*"}}, Methods: []string{"/shop.v1.Cart/Empty"}},
	}}
	if err := CheckPolicy(td, good); err != nil {
		t.Fatal(err)
	}
	rules, err := PolicyRules([]*typesv1.AccessPolicy{good})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := New(td)
	a.SetCentral(rules)
	front := id("spiffe://example.org/ns/shop/sa/front")
	if !a.Allowed(front, "/shop.v1.Cart/Add") || a.Allowed(front, "/shop.v1.Cart/Empty") {
		t.Fatal("policy rules decide wrongly")
	}
	for _, bad := range []*typesv1.AccessPolicy{
		{Target: "spiffe://example.org/x", Rules: good.Rules},
		{Name: "x", Target: "example.org/x", Rules: good.Rules},
		{Name: "x", Target: "spiffe://example.org/x"},
		{Name: "x", Target: "spiffe://example.org/x", Rules: []*typesv1.PolicyRule{{Action: "maybe", Peers: good.Rules[0].Peers}}},
		{Name: "x", Target: "spiffe://example.org/x", Rules: []*typesv1.PolicyRule{{Action: "allow", Peers: []*typesv1.PolicyPeer{{Namespace: "a", Id: "spiffe://example.org/b"}}}}},
		{Name: "x", Target: "spiffe://example.org/x", Rules: []*typesv1.PolicyRule{{Action: "allow", Peers: []*typesv1.PolicyPeer{{ServiceAccount: "nons"}}}}},
		{Name: "x", Target: "spiffe://example.org/x", Rules: []*typesv1.PolicyRule{{Action: "allow", Peers: good.Rules[0].Peers, Methods: []string{"nope"}}}},
		{Name: "x", Target: "spiffe://other.org/x", Rules: good.Rules},
		{Name: "x", Target: "spiffe://other.org/**", Rules: good.Rules},
	} {
		if err := CheckPolicy(td, bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
	for target, want := range map[string]bool{
		"spiffe://example.org/ns/shop/sa/cart": true,
		"spiffe://example.org/ns/shop/**":      true,
		"spiffe://example.org/ns/*/sa/cart":    true,
		"spiffe://example.org/ns/pay/**":       false,
		"spiffe://other.org/ns/shop/**":        false,
	} {
		if got := TargetMatches(target, id("spiffe://example.org/ns/shop/sa/cart")); got != want {
			t.Errorf("TargetMatches(%s) = %v", target, got)
		}
	}
}

// TestNonCanonicalPathsAreDenied: "**" does not reach past its prefix
// through "..", and a deny rule is not sidestepped by a path that spells
// another.
func TestNonCanonicalPathsAreDenied(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	peer := spiffeid.RequireFromString("spiffe://example.org/client")
	a, err := New(td, Allow(PeerID(peer.String())).OnMethods("GET /public/**"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(td, Allow(PeerID(peer.String())), Deny(PeerID(peer.String())).OnMethods("* /admin/**"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/public/../admin/x", "/public/./x", "/public//x", "/public/..", "public/x", ""} {
		if a.AllowedHTTP(peer, "GET", p) {
			t.Errorf("allow-prefix authorizer allowed %q", p)
		}
	}
	for _, p := range []string{"/x/../admin/secret", "//admin/secret", "/./admin/secret"} {
		if b.AllowedHTTP(peer, "GET", p) {
			t.Errorf("deny-rule authorizer allowed %q", p)
		}
	}
	for _, p := range []string{"/public/x", "/public/x/", "/public/a.b/..c"} {
		if !a.AllowedHTTP(peer, "GET", p) {
			t.Errorf("canonical path %q denied", p)
		}
	}
}

// TestConnectionMethod: a rule on ConnectionMethod lets its peer connect
// to a plain TLS listener and allows no call; a deny rule on it refuses
// the handshake.
func TestConnectionMethod(t *testing.T) {
	a, err := New(td,
		Allow(PeerID("spiffe://example.org/db-client")).OnMethods(ConnectionMethod),
		Allow(PeerNamespace("shop")),
		Deny(PeerID("spiffe://example.org/ns/shop/sa/old")).OnMethods(ConnectionMethod),
	)
	if err != nil {
		t.Fatal(err)
	}
	for peer, want := range map[string]bool{
		"spiffe://example.org/db-client":      true,
		"spiffe://example.org/ns/shop/sa/new": true,
		"spiffe://example.org/ns/shop/sa/old": false,
		"spiffe://example.org/someone-else":   false,
	} {
		if got := a.MayConnect(id(peer)); got != want {
			t.Errorf("MayConnect(%s) = %v, want %v", peer, got, want)
		}
	}
	client := id("spiffe://example.org/db-client")
	for _, call := range [][2]string{{"", "/db.v1.DB/Query"}, {"GET", "/"}, {"CONNECT", "/"}, {"", ConnectionMethod}, {ConnectionMethod, "/"}} {
		if a.AllowedHTTP(client, call[0], call[1]) {
			t.Errorf("a rule on %s allowed the call %q %q", ConnectionMethod, call[0], call[1])
		}
	}
}
