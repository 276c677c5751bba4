package kube

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// TestPSATAttestation attests an agent with a real pod-bound token and
// tries the tokens that must be refused; each refusal is audited and no
// token reaches the audit log.
func TestPSATAttestation(t *testing.T) {
	ca := startCA(t, "psat-ca", "psat")
	pod := agentPod(t, "node-a")
	good := podToken(t, pod, "signet-ca")

	svid, err := ca.AttestPSAT(good, "node-a")
	if err != nil {
		t.Fatalf("attest with a good token: %v", err)
	}
	if want := "spiffe://example.org/signet/agent/k8s/test/node-a"; svid.ID.String() != want {
		t.Fatalf("agent ID %s, want %s", svid.ID, want)
	}
	// The agent's SVID works on the agent API.
	if _, err := ca.NodeClient(svid).FetchPodEntries(context.Background(), &agentv1.FetchPodEntriesRequest{PodUid: string(pod.UID)}); err != nil {
		t.Fatalf("call with the agent SVID: %v", err)
	}

	createNode(t, "node-b")
	createNode(t, "node-c")
	intruder := createPod(t, agentNS, "intruder", "intruder", "node-a", nil)
	// The API server caches a token review for 10 s, so a token reviewed
	// just before its pod is deleted still authenticates: the CA's own
	// check of the pod must refuse it.
	doomed := createPod(t, agentNS, "doomed", agentSA, "node-c", nil)
	doomedToken := podToken(t, doomed, "signet-ca")
	if _, err := ca.AttestPSAT(doomedToken, "node-c"); err != nil {
		t.Fatalf("attest before the pod is deleted: %v", err)
	}
	deletePod(t, doomed)

	cases := []struct {
		name, token, node, reason string
	}{
		{"wrong audience", podToken(t, pod, "someone-else"), "node-a", "not authenticated"},
		{"expired", forgeToken(t, pod, time.Now().Add(-time.Hour)), "node-a", "not authenticated"},
		{"another service account", podToken(t, intruder, "signet-ca"), "node-a", "not an agent service account"},
		{"deleted pod", doomedToken, "node-c", "does not exist"},
		{"node mismatch", good, "node-b", "node-b"},
		{"not a token", "not-a-jwt", "node-a", "not authenticated"},
		{"empty", "", "node-a", "empty"},
	}
	for _, c := range cases {
		_, err := ca.AttestPSAT(c.token, c.node)
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: got %v, want PermissionDenied", c.name, err)
			continue
		}
		if !strings.Contains(status.Convert(err).Message(), c.reason) {
			t.Errorf("%s: reason %q does not mention %q", c.name, status.Convert(err).Message(), c.reason)
		}
	}

	var failures int
	for _, r := range ca.AuditLog() {
		if r["event"] == "node.attest" && r["result"] == "failure" {
			failures++
		}
	}
	if failures != len(cases) {
		t.Errorf("%d failed attestations audited, want %d", failures, len(cases))
	}
	raw := ca.AuditRaw()
	for _, tok := range []string{good, doomedToken} {
		if strings.Contains(raw, tok) || strings.Contains(raw, tok[len(tok)-20:]) {
			t.Fatal("a token reached the audit log")
		}
	}
}

// forgeToken signs a pod-bound token with the cluster's service-account
// key, expired at exp: the API server will not issue one that short.
func forgeToken(t *testing.T, p *corev1.Pod, exp time.Time) string {
	t.Helper()
	raw, err := os.ReadFile(cluster.SAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(raw)
	key, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key.(crypto.Signer)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{
		"iss": testenv.Issuer, "aud": []string{"signet-ca"}, "sub": "system:serviceaccount:" + p.Namespace + ":" + p.Spec.ServiceAccountName,
		"iat": exp.Add(-time.Hour).Unix(), "nbf": exp.Add(-time.Hour).Unix(), "exp": exp.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      p.Namespace,
			"pod":            map[string]any{"name": p.Name, "uid": string(p.UID)},
			"serviceaccount": map[string]any{"name": p.Spec.ServiceAccountName, "uid": "00000000-0000-0000-0000-000000000000"},
		},
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var _ = systest.TrustDomain
