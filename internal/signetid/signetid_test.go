package signetid

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestIDs(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	other := spiffeid.RequireTrustDomainFromString("other.org")
	if got := CA(td).String(); got != "spiffe://example.org/signet/ca" {
		t.Errorf("CA = %s", got)
	}
	if got := Webhook(td).String(); got != "spiffe://example.org/signet/webhook" {
		t.Errorf("Webhook = %s", got)
	}
	join, err := JoinAgent(td, "node1")
	if err != nil || join.String() != "spiffe://example.org/signet/agent/join/node1" {
		t.Errorf("JoinAgent = %s, %v", join, err)
	}
	if _, err := JoinAgent(td, "a/b"); err == nil {
		t.Error("JoinAgent accepted a node name with a slash")
	}
	kube, err := KubeAgent(td, "prod", "node-a")
	if err != nil || kube.String() != "spiffe://example.org/signet/agent/k8s/prod/node-a" {
		t.Errorf("KubeAgent = %s, %v", kube, err)
	}
	if node, ok := KubeAgentNode(kube, "prod"); !ok || node != "node-a" {
		t.Errorf("KubeAgentNode = %q, %v", node, ok)
	}
	for _, id := range []string{
		"spiffe://example.org/signet/agent/k8s/staging/node-a", // another cluster
		"spiffe://example.org/signet/agent/k8s/prod/a/b",       // extra segment
		"spiffe://example.org/signet/agent/join/node-a",
	} {
		if node, ok := KubeAgentNode(spiffeid.RequireFromString(id), "prod"); ok {
			t.Errorf("KubeAgentNode(%s) = %q, want none", id, node)
		}
	}
	if !IsAgent(td, join) || !IsAgent(td, kube) || IsAgent(other, join) || IsAgent(td, CA(td)) {
		t.Error("IsAgent is wrong")
	}
	for id, want := range map[string]bool{
		"spiffe://example.org/signet":       true,
		"spiffe://example.org/signet/ca":    true,
		"spiffe://example.org/signetx":      false,
		"spiffe://example.org/ns/signet/sa": false,
	} {
		if got := IsReserved(spiffeid.RequireFromString(id)); got != want {
			t.Errorf("IsReserved(%s) = %v, want %v", id, got, want)
		}
	}
}
