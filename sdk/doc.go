// Package sdk is what a service imports to take part in Signet:
// mutually authenticated TLS on every connection and least-privilege
// authorization of every call, in the service's own process, with no
// proxy beside it.
//
// A Source holds the service's rotating X.509-SVID and trust bundle from
// the SPIFFE Workload API (the local Signet agent, or any SPIFFE agent).
// An authz.Authorizer (package sdk/authz) holds the rules: deny by default; a matching deny rule
// always wins; else a matching allow rule allows. Servers refuse a peer at
// the TLS handshake when its identity alone decides (no rule could allow
// any of its calls), and otherwise per call, before handler code runs:
// gRPC answers PermissionDenied, HTTP 403.
//
//	source, err := sdk.NewSource(ctx) // $SPIFFE_ENDPOINT_SOCKET
//	az, err := authz.New(source.TrustDomain(),
//		authz.Allow(authz.PeerServiceAccount("shop", "frontend")).OnMethods("/shop.v1.Cart/*"))
//	go source.Follow(ctx, az, nil) // central policies + decision audit
//	srv := grpc.NewServer(sdk.GRPCServerOptions(source, az)...)
//
// The SDK builds on go-spiffe (workloadapi, tlsconfig, grpccredentials)
// and logs nothing.
package sdk
