package sdk_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
	"github.com/signet-id/signet/sdk/sdktest"
)

// sourceOf starts a Workload API serving svid and a source on it.
func sourceOf(t *testing.T, w *world, svid sdktest.SVID) (*sdk.Source, *sdktest.WorkloadAPI) {
	t.Helper()
	api := sdktest.NewWorkloadAPI(t, svid, w.ca)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := sdk.NewSource(ctx, sdk.WithAddr(api.Addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src, api
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRevokedPeer: a server that learns a client's SVID is revoked
// refuses its new handshakes and closes its open connections; the other
// way round, a client refuses a revoked server. A revocation of a CA
// certificate covers every chain through it; one of a SPIFFE ID covers
// SVIDs issued before it, not the next one.
func TestRevokedPeer(t *testing.T) {
	w := newWorld(t)
	now := time.Now()
	serverSVID := w.ca.Issue(t, serverID, now.Add(-time.Hour), now.Add(time.Hour))
	frontSVID := w.ca.Issue(t, frontID, now.Add(-time.Hour), now.Add(time.Hour))
	serverSrc, serverAPI := sourceOf(t, w, serverSVID)
	front, frontAPI := sourceOf(t, w, frontSVID)
	az, err := authz.New(td, authz.Allow(authz.PeerServiceAccount("shop", "front")))
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64
	addr := grpcServer(t, serverSrc, az, &reached, nil)
	fc := healthClient(t, front, addr)
	if err := check(fc); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	// An open stream on the connection.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := fc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()

	serverAPI.SetRevocations(sdktest.Revoke(frontSVID))
	select {
	case err := <-ended:
		t.Logf("the open stream ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked client's open connection was not closed")
	}
	calls := reached.Load()
	if err := check(fc); err == nil {
		t.Fatal("a revoked client's new call succeeded")
	}
	if reached.Load() != calls {
		t.Fatal("a revoked client reached handler code")
	}

	// A CA certificate revoked: every SVID it signed, whatever its serial.
	serverAPI.SetRevocations(&typesv1.Revocation{Id: "rv-root", Serial: w.ca.Root.SerialNumber.Text(16)})
	frontAPI.SetSVID(w.ca.Issue(t, frontID, now.Add(-time.Minute), now.Add(time.Hour)))
	eventually(t, "the new SVID", func() bool {
		s, _ := front.GetX509SVID()
		return s.Certificates[0].NotBefore.After(now.Add(-2 * time.Minute))
	})
	eventually(t, "a client under a revoked root refused", func() bool { return check(fc) != nil })

	// Revoked by SPIFFE ID: SVIDs issued before; the one after passes.
	serverAPI.SetRevocations(&typesv1.Revocation{Id: "rv-id", SpiffeId: frontID, NotBeforeUnder: now.Add(-30 * time.Minute).Unix()})
	eventually(t, "an SVID issued after the ID's revocation accepted", func() bool { return check(fc) == nil })
	frontAPI.SetSVID(w.ca.Issue(t, frontID, now.Add(-time.Hour), now.Add(time.Hour)))
	eventually(t, "the old SVID", func() bool {
		s, _ := front.GetX509SVID()
		return s.Certificates[0].NotBefore.Before(now.Add(-30 * time.Minute))
	})
	fc2 := healthClient(t, front, addr)
	if err := check(fc2); err == nil {
		t.Fatal("an SVID issued before the ID's revocation was accepted")
	}

	// The client side: a revoked server is refused, and withdrawing the
	// revocation restores it.
	serverAPI.SetRevocations()
	frontAPI.SetRevocations(sdktest.Revoke(serverSVID))
	fc3 := healthClient(t, front, addr)
	eventually(t, "the client to refuse the revoked server", func() bool { return check(fc3) != nil })
	frontAPI.SetRevocations()
	eventually(t, "the withdrawn revocation", func() bool { return check(fc3) == nil })
}

// TestResumedSessionRevoked: a client resumes its TLS session (a ticket
// from a handshake before the revocation); the server must still refuse
// it once its SVID is revoked, as crypto/tls skips certificate
// verification on resumption.
func TestResumedSessionRevoked(t *testing.T) {
	w := newWorld(t)
	now := time.Now()
	frontSVID := w.ca.Issue(t, frontID, now.Add(-time.Hour), now.Add(time.Hour))
	serverSrc, serverAPI := sourceOf(t, w, w.ca.Issue(t, serverID, now.Add(-time.Hour), now.Add(time.Hour)))
	front, _ := sourceOf(t, w, frontSVID)
	az, err := authz.New(td, authz.Allow(authz.PeerServiceAccount("shop", "front")))
	if err != nil {
		t.Fatal(err)
	}
	l, err := sdk.Listen("tcp", "127.0.0.1:0", serverSrc, az)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serveEach(l, func(c net.Conn) {
		defer c.Close()
		if _, err := sdk.PeerIDOfConn(c); err == nil {
			c.Write([]byte("ok"))
		}
	})
	cfg := sdk.ClientTLSConfig(front, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	dial := func() (resumed bool, err error) {
		c, err := tls.Dial("tcp", l.Addr().String(), cfg)
		if err != nil {
			return false, err
		}
		defer c.Close()
		// TLS 1.3: the server checks the client after the client's
		// flight, and sends tickets after the handshake.
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil {
			return c.ConnectionState().DidResume, err
		}
		return c.ConnectionState().DidResume, nil
	}
	if _, err := dial(); err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	resumed, err := dial()
	if err != nil || !resumed {
		t.Fatalf("second handshake: resumed %v, %v (the test needs resumption)", resumed, err)
	}
	serverAPI.SetRevocations(sdktest.Revoke(frontSVID))
	eventually(t, "the server to refuse the resumed session", func() bool {
		_, err := dial()
		return err != nil
	})
	if resumed, err := dial(); err == nil {
		t.Fatalf("a revoked client's session (resumed: %v) was accepted", resumed)
	}
}
