package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/signet-id/signet/sdk/authz"
)

// TestTrafficLoop: signet-ca and signet-agent as processes, a gRPC
// service and its client through the SDK. The service's traffic reaches
// the CA, which reports the caller as new (no learning period here);
// `signet policy suggest` proposes exactly the call observed, `policy
// diff` of the suggestion denies nothing, and a diff of a policy that
// allows someone else lists the call.
func TestTrafficLoop(t *testing.T) {
	const cartID, frontID = "spiffe://example.org/ns/shop/sa/cart", "spiffe://example.org/ns/shop/sa/front"
	dir, m := meshOnOneAgent(t, []string{cartID, frontID}, "--traffic-learn", "0s")
	cart, front := m.srcs[0], m.srcs[1]

	az, _ := authz.New(cart.TrustDomain(), authz.Allow(authz.PeerID(frontID)).OnMethods("/grpc.health.v1.Health/Check"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go cart.Follow(ctx, az, nil)
	hc := healthOverSDK(t, cart, front, cartID, az)
	for range 20 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}

	eventuallyTB(t, "the new caller among the anomalies", func() bool {
		return strings.Contains(signet(t, dir, "anomaly", "list", "-o", "json"), `"kind": "new_caller"`)
	})
	var suggestion string
	eventuallyTB(t, "a suggestion from the observed calls", func() bool {
		cmd := exec.Command(filepath.Join(binDir, "signet"), "policy", "suggest", "--server", cartID, "--format", "json")
		cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET="+filepath.Join(dir, "admin.sock"))
		out, err := cmd.Output()
		suggestion = string(out)
		return err == nil
	})
	var got struct {
		Policies []struct {
			Target string `json:"target"`
			Rules  []struct {
				Action  string `json:"action"`
				Peers   []map[string]string
				Methods []string `json:"methods"`
			} `json:"rules"`
		} `json:"policies"`
	}
	if err := json.Unmarshal([]byte(suggestion), &got); err != nil || len(got.Policies) != 1 || len(got.Policies[0].Rules) != 1 {
		t.Fatalf("policy suggest: %v\n%s", err, suggestion)
	}
	r := got.Policies[0].Rules[0]
	if got.Policies[0].Target != cartID || r.Action != "allow" || r.Peers[0]["id"] != frontID || strings.Join(r.Methods, ",") != "/grpc.health.v1.Health/Check" {
		t.Errorf("suggested: %s", suggestion)
	}
	file := filepath.Join(t.TempDir(), "cart.json")
	os.WriteFile(file, []byte(suggestion), 0o600)
	if out := signet(t, dir, "policy", "diff", file); !strings.Contains(out, "allow every call") {
		t.Errorf("diff of the suggestion: %s", out)
	}
	other := strings.ReplaceAll(suggestion, frontID, "spiffe://example.org/ns/shop/sa/someone-else")
	os.WriteFile(file, []byte(other), 0o600)
	if out := signet(t, dir, "policy", "diff", file); !strings.Contains(out, frontID) || !strings.Contains(out, "/grpc.health.v1.Health/Check") {
		t.Errorf("diff of a policy that allows someone else: %s", out)
	}
	// Kubernetes objects, for kubectl apply.
	if out := signet(t, dir, "policy", "suggest", "--server", cartID); !strings.Contains(out, "kind: AccessPolicy") || !strings.Contains(out, "namespace: shop") {
		t.Errorf("policy suggest in YAML: %s", out)
	}
}
