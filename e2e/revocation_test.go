package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// TestRevocationThroughProcesses: signet-ca and signet-agent as
// processes, two SDK services over gRPC. `signet revocation create`
// revokes the client's SVID: the server closes the client's open
// connection and refuses its new handshakes; the agent re-mints the
// client's SVID at once, and the new one is accepted. Revoking the ID
// works the same way; withdrawing a revocation is listed and audited.
func TestRevocationThroughProcesses(t *testing.T) {
	dir := t.TempDir()
	caAddr := systest.FreeAddr(t)
	startCAWith(t, dir, nil, "--listen", caAddr)
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	os.WriteFile(bundle, []byte(signet(t, dir, "bundle", "show")), 0o600)
	var tok struct{ Token string }
	json.Unmarshal([]byte(signet(t, dir, "token", "create", "--node", "n1", "-o", "json")), &tok)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	denyFile := filepath.Join(t.TempDir(), "deny-list.jws")
	agent := exec.Command(filepath.Join(binDir, "signet-agent"), "--ca-address", caAddr, "--join-token", tok.Token, "--trust-bundle", bundle,
		"--data-dir", t.TempDir(), "--socket", sock, "--health-addr", "", "--deny-list-file", denyFile)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	const cartID, frontID = "spiffe://example.org/cart", "spiffe://example.org/front"
	uid := fmt.Sprintf("unix:uid:%d", os.Getuid())
	for _, id := range []string{cartID, frontID} {
		signet(t, dir, "entry", "create", "--parent-id", "spiffe://example.org/signet/agent/join/n1", "--spiffe-id", id, "--selector", uid)
	}
	source := func(id string) *sdk.Source {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		src, err := sdk.NewSource(ctx, sdk.WithAddr("unix://"+sock), sdk.WithID(id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	cart, front := source(cartID), source(frontID)
	az, err := authz.New(cart.TrustDomain(), authz.Allow(authz.PeerID(frontID)))
	if err != nil {
		t.Fatal(err)
	}
	client := healthOverSDK(t, cart, front, cartID, az)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("before any revocation: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan time.Time, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- time.Now()
				return
			}
		}
	}()

	svid, _ := front.GetX509SVID()
	serial := svid.Certificates[0].SerialNumber
	start := time.Now()
	var created struct {
		Revocations []struct {
			ID     string `json:"id"`
			Serial string `json:"serial"`
		} `json:"revocations"`
	}
	out := signet(t, dir, "revocation", "create", "--serial", fmt.Sprintf("%X", serial), "--reason", "key leaked in a log", "-o", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || len(created.Revocations) != 1 || created.Revocations[0].Serial != serial.Text(16) {
		t.Fatalf("revocation create: %v\n%s", err, out)
	}
	select {
	case at := <-ended:
		t.Logf("revoke -> the client's open connection closed: %v", at.Sub(start))
	case <-time.After(15 * time.Second):
		t.Fatal("the revoked client's open connection was not closed")
	}
	// The agent re-mints the revoked SVID: calls succeed again with the
	// new one, whose serial differs.
	deadline := time.Now().Add(20 * time.Second)
	for call() != nil {
		if time.Now().After(deadline) {
			t.Fatal("no call succeeded with a re-minted SVID")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if now, _ := front.GetX509SVID(); now.Certificates[0].SerialNumber.Cmp(serial) == 0 {
		t.Fatal("a call succeeded with the revoked SVID")
	}
	t.Logf("revoke -> the client calling again with a re-minted SVID: %v", time.Since(start))

	// The signed deny list on the node: a JWS that the trust bundle's
	// JWT keys verify offline, holding the serial.
	checkDenyList(t, sock, denyFile, serial.Text(16))

	list := signet(t, dir, "revocation", "list", "-o", "json")
	if !strings.Contains(list, created.Revocations[0].ID) || !strings.Contains(list, "key leaked in a log") {
		t.Errorf("revocation list -o json: %s", list)
	}
	// By ID: every SVID of front issued before now; the agent re-mints.
	before, _ := front.GetX509SVID()
	signet(t, dir, "revocation", "create", "--spiffe-id", frontID)
	deadline = time.Now().Add(20 * time.Second)
	for {
		now, _ := front.GetX509SVID()
		if now.Certificates[0].SerialNumber.Cmp(before.Certificates[0].SerialNumber) != 0 && call() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("front did not get a new SVID, accepted, after the revocation of its ID")
		}
		time.Sleep(50 * time.Millisecond)
	}
	signet(t, dir, "revocation", "delete", "--id", created.Revocations[0].ID)
	if list := signet(t, dir, "revocation", "list", "-o", "json"); strings.Contains(list, created.Revocations[0].ID) {
		t.Errorf("a deleted revocation is listed: %s", list)
	}
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	for _, want := range []string{`"event":"revocation.create"`, `"event":"revocation.delete"`, `"revocation":"` + created.Revocations[0].ID + `"`, `"reason":"key leaked in a log"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("the audit log lacks %s", want)
		}
	}
}

// checkDenyList waits for the agent's deny list file to name serial, and
// verifies it as a peer without Signet's SDK would: a compact JWS (ES256,
// typ signet-deny-list+jws) by a JWT-SVID key of the trust bundle.
func checkDenyList(t *testing.T, sock, path, serial string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	bundles, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	jwtKeys, err := bundles.GetJWTBundleForTrustDomain(spiffeid.RequireTrustDomainFromString("example.org"))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		raw, _ := os.ReadFile(path)
		if jws, err := jose.ParseSignedCompact(strings.TrimSpace(string(raw)), []jose.SignatureAlgorithm{jose.ES256}); err == nil {
			sig := jws.Signatures[0]
			key, ok := jwtKeys.FindJWTAuthority(sig.Header.KeyID)
			if !ok {
				t.Fatalf("the deny list is signed by key %q, not in the bundle", sig.Header.KeyID)
			}
			if typ, _ := sig.Header.ExtraHeaders["typ"].(string); typ != "signet-deny-list+jws" {
				t.Errorf("deny list typ %q", typ)
			}
			payload, err := jws.Verify(key)
			if err != nil {
				t.Fatalf("the deny list does not verify: %v", err)
			}
			var list struct {
				TrustDomain string `json:"trust_domain"`
				Expiry      int64  `json:"exp"`
				Revocations []struct {
					Serial string `json:"serial"`
				} `json:"revocations"`
			}
			if err := json.Unmarshal(payload, &list); err != nil {
				t.Fatal(err)
			}
			for _, r := range list.Revocations {
				if r.Serial == serial && list.TrustDomain == "example.org" && list.Expiry > time.Now().Unix() {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deny list at %s never named serial %s:\n%s", path, serial, raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// healthOverSDK serves gRPC health at server through the SDK (authorized
// by az), and returns a client that calls it as client, expecting the
// server's identity serverID. Both close when the test ends.
func healthOverSDK(t *testing.T, server, client *sdk.Source, serverID string, az *authz.Authorizer) healthpb.HealthClient {
	t.Helper()
	srv := grpc.NewServer(sdk.GRPCServerOptions(server, az)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(sdk.ClientCredentials(client, tlsconfig.AuthorizeID(spiffeid.RequireFromString(serverID)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}
