package authz_test

import (
	"fmt"
	"log"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/sdk/authz"
)

func ExampleNew() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	az, err := authz.New(td,
		// The storefront may read the cart; everything in payments may
		// call everything; one legacy account may call nothing.
		authz.Allow(authz.PeerServiceAccount("shop", "frontend")).OnMethods("/shop.v1.Cart/Get"),
		authz.Allow(authz.PeerPattern("spiffe://example.org/ns/payments/**")),
		authz.Deny(authz.PeerServiceAccount("payments", "legacy")),
	)
	if err != nil {
		log.Fatal(err)
	}
	front := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/frontend")
	legacy := spiffeid.RequireFromString("spiffe://example.org/ns/payments/sa/legacy")
	fmt.Println(az.Allowed(front, "/shop.v1.Cart/Get"), az.Allowed(front, "/shop.v1.Cart/Empty"), az.Allowed(legacy, "/shop.v1.Cart/Get"))
	// Output: true false false
}

func ExampleAuthorizer_SetCentral() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	az, _ := authz.New(td, authz.Allow(authz.PeerNamespace("shop")))
	peer := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/batch")
	fmt.Println(az.Allowed(peer, "/shop.v1.Cart/Get"))
	// A central policy arrives: a deny always wins over an allow.
	az.SetCentral([]authz.Rule{authz.Deny(authz.PeerServiceAccount("shop", "batch"))})
	fmt.Println(az.Allowed(peer, "/shop.v1.Cart/Get"))
	// Output:
	// true
	// false
}

func ExampleAuthorizer_OnDecision() {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	az, _ := authz.New(td, authz.Allow(authz.PeerNamespace("shop")))
	// sdk.Source.Follow uses this to send decisions to the audit log.
	remove := az.OnDecision(func(d authz.Decision) { fmt.Println(d.Peer, d.Method, d.Allowed) })
	defer remove()
	az.Check(spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/web"), "", "/shop.v1.Cart/Get")
	az.Check(spiffeid.RequireFromString("spiffe://example.org/ns/bank/sa/web"), "GET", "/balance")
	az.CheckConnect(spiffeid.RequireFromString("spiffe://example.org/ns/bank/sa/web"))
	// Output:
	// spiffe://example.org/ns/shop/sa/web /shop.v1.Cart/Get true
	// spiffe://example.org/ns/bank/sa/web GET /balance false
	// spiffe://example.org/ns/bank/sa/web (handshake) false
}
