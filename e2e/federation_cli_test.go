package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signet-id/signet/e2e/systest"
)

// TestFederationCLI: an operator federates one signet-ca with another's
// bundle endpoint through the CLI, as docs/federation.md shows: the bundle
// got out of band, the relationship created, listed once fetched, named
// by an entry, and deleted; every step is audited, and a bad relationship
// is refused with a message.
func TestFederationCLI(t *testing.T) {
	dir := t.TempDir()
	partnerDir, homeDir := filepath.Join(dir, "partner"), filepath.Join(dir, "home")
	ep := systest.FreeAddr(t)
	startCAWith(t, partnerDir, nil, "--trust-domain", "partner.test", "--federation-listen", ep, "--federation-refresh-hint", "5s")
	startCA(t, homeDir)
	bundle := filepath.Join(dir, "partner-bundle.json")
	if err := os.WriteFile(bundle, []byte(signet(t, partnerDir, "bundle", "show", "--format", "spiffe")), 0o600); err != nil {
		t.Fatal(err)
	}

	// A relationship the CA refuses: the message says why.
	cmd := exec.Command(filepath.Join(binDir, "signet"), "federation", "create", "--trust-domain", "partner.test",
		"--bundle-endpoint-url", "http://"+ep, "--profile", "https_spiffe", "--endpoint-spiffe-id", "spiffe://partner.test/signet/ca", "--bundle", bundle)
	cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(homeDir, "admin.sock"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "https URL") {
		t.Fatalf("federation over http: %v\n%s", err, out)
	}

	signet(t, homeDir, "federation", "create", "--trust-domain", "partner.test", "--bundle-endpoint-url", "https://"+ep,
		"--profile", "https_spiffe", "--endpoint-spiffe-id", "spiffe://partner.test/signet/ca", "--bundle", bundle)
	type listed struct {
		Federations []struct {
			TrustDomain     string `json:"trust_domain"`
			X509Authorities int    `json:"x509_authorities"`
			JWTAuthorities  int    `json:"jwt_authorities"`
			RefreshHint     string `json:"refresh_hint"`
			RefreshedAt     string `json:"refreshed_at"`
			LastError       string `json:"last_error"`
		} `json:"federations"`
	}
	var l listed
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := json.Unmarshal([]byte(signet(t, homeDir, "federation", "list", "-o", "json")), &l); err != nil {
			t.Fatal(err)
		}
		if len(l.Federations) == 1 && l.Federations[0].RefreshedAt != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the partner's bundle was not fetched: %+v", l)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if f := l.Federations[0]; f.X509Authorities != 1 || f.JWTAuthorities == 0 || f.RefreshHint != "5s" || f.LastError != "" {
		t.Fatalf("listed %+v, want the partner's root and JWT keys with its 5s hint", f)
	}

	out := signet(t, homeDir, "entry", "create", "--spiffe-id", "spiffe://example.org/billing", "--parent-id", "spiffe://example.org/signet/agent/join/n1",
		"--selector", "unix:uid:1000", "--federates-with", "partner.test", "-o", "json")
	if !strings.Contains(out, `"federates_with"`) || !strings.Contains(out, "partner.test") {
		t.Fatalf("entry create: %s", out)
	}

	signet(t, homeDir, "federation", "delete", "--trust-domain", "partner.test")
	if err := json.Unmarshal([]byte(signet(t, homeDir, "federation", "list", "-o", "json")), &l); err != nil || len(l.Federations) != 0 {
		t.Fatalf("after delete: %+v, %v", l, err)
	}
	audit, err := os.ReadFile(filepath.Join(homeDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []string{`"federation.put"`, `"federation.bundle"`, `"federation.delete"`} {
		if !strings.Contains(string(audit), ev) {
			t.Errorf("no %s record in the audit log", ev)
		}
	}
}
