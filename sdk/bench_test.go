package sdk_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
	"github.com/signet-id/signet/sdk/sdktest"
)

// BenchmarkHandshake compares a full mutual TLS handshake through the SDK
// (SVIDs from the Workload API, go-spiffe verification, the handshake
// authorization) with plain crypto/tls using the same keys and
// certificates, over an in-memory pipe.
//
//	go test -run '^$' -bench Handshake -benchtime 3s -count 3 ./sdk/
func BenchmarkHandshake(b *testing.B) {
	ca := sdktest.NewCA(b, "example.org")
	serverSVID := ca.Issue(b, serverID, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	clientSVID := ca.Issue(b, frontID, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	src := func(s sdktest.SVID) *sdk.Source {
		api := sdktest.NewWorkloadAPI(b, s, ca)
		source, err := sdk.NewSource(context.Background(), sdk.WithAddr(api.Addr))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { source.Close() })
		return source
	}
	az, _ := authz.New(td, authz.Allow(authz.PeerNamespace("shop")))
	sdkServer := sdk.ServerTLSConfig(src(serverSVID), az)
	sdkClient := sdk.ClientTLSConfig(src(clientSVID), tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))

	pool := x509.NewCertPool()
	pool.AddCert(ca.Root)
	cert := func(s sdktest.SVID) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{s.Chain[0].Raw}, PrivateKey: s.Key, Leaf: s.Chain[0]}
	}
	plainServer := &tls.Config{Certificates: []tls.Certificate{cert(serverSVID)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, MinVersion: tls.VersionTLS12}
	plainClient := &tls.Config{Certificates: []tls.Certificate{cert(clientSVID)}, MinVersion: tls.VersionTLS12,
		// The server's certificate names no host (an SVID): verify the
		// chain as crypto/tls would, without the host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	for _, tt := range []struct {
		name           string
		server, client *tls.Config
	}{{"crypto-tls", plainServer, plainClient}, {"sdk", sdkServer, sdkClient}} {
		// No tickets: every handshake is a full one, and the unbuffered
		// pipe does not block on a ticket nobody reads.
		server := tt.server.Clone()
		server.SessionTicketsDisabled = true
		b.Run(tt.name, func(b *testing.B) {
			for b.Loop() {
				c1, c2 := net.Pipe()
				s, c := tls.Server(c1, server), tls.Client(c2, tt.client)
				errc := make(chan error, 1)
				go func() { errc <- s.Handshake() }()
				if err := c.Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				// Close the pipe, not the TLS connections: their close_notify
				// would wait for a reader.
				c1.Close()
				c2.Close()
			}
		})
	}
}

// BenchmarkListenEcho measures what metering a listener's connections
// costs: 1 KiB round trips on one connection from sdk.Listen (traffic
// counted) against the same TLS configuration on a plain tls.NewListener
// (nothing counted), over loopback TCP in the same run.
//
//	go test -run '^$' -bench ListenEcho -benchtime 3s -count 3 ./sdk/
func BenchmarkListenEcho(b *testing.B) {
	ca := sdktest.NewCA(b, "example.org")
	src := func(id string) *sdk.Source {
		api := sdktest.NewWorkloadAPI(b, ca.Issue(b, id, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)), ca)
		source, err := sdk.NewSource(context.Background(), sdk.WithAddr(api.Addr))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { source.Close() })
		return source
	}
	server, client := src(serverID), src(frontID)
	az, _ := authz.New(td, authz.Allow(authz.PeerNamespace("shop")))
	listeners := map[string]func() (net.Listener, error){
		"tls.NewListener": func() (net.Listener, error) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			return tls.NewListener(l, sdk.ServerTLSConfig(server, az)), nil
		},
		"sdk.Listen": func() (net.Listener, error) { return sdk.Listen("tcp", "127.0.0.1:0", server, az) },
	}
	for _, name := range []string{"tls.NewListener", "sdk.Listen"} {
		b.Run(name, func(b *testing.B) {
			l, err := listeners[name]()
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.Copy(c, c)
			}()
			c, err := sdk.Dial(context.Background(), "tcp", l.Addr().String(), client, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 1024)
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
