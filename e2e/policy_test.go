package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIPolicies creates, lists and deletes an AccessPolicy with the CLI;
// a bad policy is refused with the field named, and every change is
// audited.
func TestCLIPolicies(t *testing.T) {
	dir := t.TempDir()
	startCA(t, dir)
	file := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(file, []byte(`{"name": "cart", "target": "spiffe://example.org/ns/shop/sa/cart",
  "rules": [{"action": "allow", "peers": [{"serviceAccount": "shop/front"}], "methods": ["/shop.v1.Cart/*"]},
            {"action": "deny", "peers": [{"pattern": "spiffe://example.org/ns/batch/**"}]}]}`), 0o600)
	if out := signet(t, dir, "policy", "create", "--file", file); !strings.Contains(out, "cart") {
		t.Fatalf("create: %s", out)
	}
	var listed struct {
		Policies []map[string]any `json:"policies"`
	}
	if err := json.Unmarshal([]byte(signet(t, dir, "policy", "list", "-o", "json")), &listed); err != nil || len(listed.Policies) != 1 || listed.Policies[0]["target"] != "spiffe://example.org/ns/shop/sa/cart" {
		t.Fatalf("list: %v %v", listed, err)
	}

	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"name": "x", "target": "spiffe://example.org/x", "rules": [{"action": "allow", "peers": [{"serviceAccount": "no-slash"}]}]}`), 0o600)
	cmd := exec.Command(filepath.Join(binDir, "signet"), "policy", "create", "--file", bad)
	cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(dir, "admin.sock"))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "rules[0].peers[0]") || !strings.Contains(string(out), "InvalidArgument") {
		t.Fatalf("bad policy: %v %s", err, out)
	}

	signet(t, dir, "policy", "delete", "--name", "cart")
	if out := signet(t, dir, "policy", "list", "-o", "json"); strings.Join(strings.Fields(out), "") != `{"policies":[]}` {
		t.Fatalf("after delete: %s", out)
	}
	audit, _ := os.ReadFile(filepath.Join(dir, "audit.log"))
	if !strings.Contains(string(audit), `"event":"policy.put"`) || !strings.Contains(string(audit), `"event":"policy.delete"`) {
		t.Fatalf("policy changes not audited:\n%s", audit)
	}
}
