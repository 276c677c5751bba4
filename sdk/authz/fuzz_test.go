package authz

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// FuzzPolicy feeds policy JSON (what `signet policy create --file` reads)
// through the checks and, when accepted, the authorizer: never a panic,
// and an accepted policy always compiles.
func FuzzPolicy(f *testing.F) {
	f.Add(`{"name":"cart","target":"spiffe://example.org/ns/shop/sa/cart","rules":[{"action":"allow","peers":[{"serviceAccount":"shop/front"}],"methods":["/shop.v1.Cart/*"]}]}`)
	f.Add(`{"name":"x","target":"spiffe://example.org/**","rules":[{"action":"deny","peers":[{"pattern":"spiffe://example.org/a/*/b/**"}],"methods":["* /admin/**","GET /"]}]}`)
	f.Fuzz(func(t *testing.T, raw string) {
		p := &typesv1.AccessPolicy{}
		if protojson.Unmarshal([]byte(raw), p) != nil {
			return
		}
		if CheckPolicy(td, p) != nil {
			return
		}
		rules, err := PolicyRules([]*typesv1.AccessPolicy{p})
		if err != nil {
			t.Fatalf("checked policy does not convert: %v", err)
		}
		a, err := New(td, rules...)
		if err != nil {
			t.Fatalf("checked policy does not compile: %v", err)
		}
		peer := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/front")
		a.Allowed(peer, "/shop.v1.Cart/Get")
		a.AllowedHTTP(peer, "GET", "/admin/x")
		a.MayConnect(peer)
		TargetMatches(p.GetTarget(), peer)
	})
}

// FuzzDecide checks the matchers against arbitrary peers and calls.
func FuzzDecide(f *testing.F) {
	f.Add("spiffe://example.org/ns/shop/sa/front", "GET", "/items/7")
	f.Add("spiffe://example.org/ns/payments/x/y", "", "/a.B/C")
	a, err := New(td,
		Allow(PeerPattern("spiffe://example.org/ns/*/sa/**")).OnMethods("GET /items/*", "/a.B/*"),
		Deny(PeerNamespace("payments")).OnMethods("* /**"),
		Allow(PeerTrustDomain("example.org")).OnMethods("/x.Y/Z"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, id, verb, path string) {
		peer, err := spiffeid.FromString(id)
		if err != nil {
			return
		}
		a.AllowedHTTP(peer, verb, path)
		a.Allowed(peer, path)
		a.MayConnect(peer)
	})
}
