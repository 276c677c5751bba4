package sdk

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/signet-id/signet/sdk/authz"
)

type peerKey struct{}

// CallerID returns the SPIFFE ID of the caller of a request handled behind
// Middleware or the gRPC interceptors.
func CallerID(ctx context.Context) (spiffeid.ID, bool) {
	id, ok := ctx.Value(peerKey{}).(spiffeid.ID)
	return id, ok
}

// Middleware authorizes every request before next sees it: the caller's
// SPIFFE ID comes from its verified client certificate; a request that
// az denies gets 403 Forbidden. next reads the caller with CallerID.
//
// The path authorized is the one every router reads alike: a request whose
// path has "." or ".." segments, empty segments, encoded slashes or
// backslashes ("/public/../admin", "/public/..%2Fadmin", "/a//b") is
// refused with 400 Bad Request, since routers and file servers disagree on
// what it names.
func Middleware(az *authz.Authorizer, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "mutual TLS required", http.StatusForbidden)
			return
		}
		if !authz.CanonicalPath(r.URL.Path) || strings.ContainsRune(r.URL.Path, '\\') || hasEncodedSeparator(r.URL.RawPath) {
			http.Error(w, "path is not canonical", http.StatusBadRequest)
			return
		}
		id, err := peerIDOfState(*r.TLS)
		var attrs authz.Attributes
		if len(r.TLS.PeerCertificates) > 0 {
			attrs = authz.AttributesOf(r.TLS.PeerCertificates[0])
		}
		if err != nil || !az.CheckFrom(id, attrs, r.Method, r.URL.Path) {
			if cw, ok := w.(*countingWriter); ok {
				cw.denied = true
			}
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), peerKey{}, id)))
	})
}

// hasEncodedSeparator reports whether an escaped path encodes "/" or
// "\\", which some routers split on and others do not.
func hasEncodedSeparator(raw string) bool {
	raw = strings.ToLower(raw)
	return strings.Contains(raw, "%2f") || strings.Contains(raw, "%5c")
}

// NewHTTPServer returns a server on addr whose TLS configuration is
// ServerTLSConfig and whose handler is Middleware(az, h), with every
// request counted in the source's traffic (Source.TrafficTotals, and the
// reports of Follow). Serve it with ListenAndServeTLS("", "").
func NewHTTPServer(addr string, src *Source, az *authz.Authorizer, h http.Handler) *http.Server {
	return &http.Server{Addr: addr, TLSConfig: ServerTLSConfig(src, az), Handler: countHTTP(src, Middleware(az, h)),
		// Connections whose peer becomes revoked are closed.
		ConnState: func(c net.Conn, st http.ConnState) {
			if tc, ok := c.(*tls.Conn); ok && st == http.StateNew {
				src.conns.addTLS(tc)
			}
		}}
}

// HTTPClient returns a client that presents the source's SVID and talks
// only to servers that server authorizes. A server that refuses this
// client's identity at the handshake makes requests fail with a
// *RefusedError (inside the *url.Error).
func HTTPClient(src *Source, server tlsconfig.Authorizer) *http.Client {
	cfg := ClientTLSConfig(src, server)
	cfg.NextProtos = []string{"h2", "http/1.1"}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		// Closed if the server becomes revoked.
		src.conns.addTLS(c.(*tls.Conn))
		return c, nil
	}
	return &http.Client{Transport: &refusalTransport{RoundTripper: &http.Transport{TLSClientConfig: cfg, DialTLSContext: dial, ForceAttemptHTTP2: true}, src: src, server: server}}
}
