package kube

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/signet-id/signet/ca/clusterfederation"
	"github.com/signet-id/signet/ca/podidentity"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// TestFederatedTrustDomainObjects: in Kubernetes mode, `signet federation
// create` makes a FederatedTrustDomain object; the leading replica fetches
// the partner's bundle from its bundle endpoint (https_spiffe) into the
// object's status; an IdentityRule's federatesWith reaches the agents with
// the bundle, also for a trust domain whose bundle does not exist (the
// identity still works); the partner's root rotation arrives by itself;
// and deleting the relationship takes the bundle away.
func TestFederatedTrustDomainObjects(t *testing.T) {
	ctx := context.Background()
	ep := systest.FreeAddr(t)
	partner := systest.StartCA(t, func(c *server.Config) {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString("partner.test")
		c.Federation = &server.FederationConfig{ListenAddr: ep, RefreshHint: 5 * time.Second}
	})
	ca := startCA(t, "fed-ca", "fed")
	pb, err := partner.Admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := &typesv1.Bundle{TrustDomain: "partner.test", X509Authorities: pb.GetBundle().GetX509Authorities()}
	if _, err := ca.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: &typesv1.FederatedTrustDomain{
		TrustDomain: "partner.test", BundleEndpointUrl: "https://" + ep, Profile: "https_spiffe",
		EndpointSpiffeId: "spiffe://partner.test/signet/ca", Bundle: out,
	}}); err != nil {
		t.Fatal(err)
	}
	objs := dyn.Resource(clusterfederation.Resource)
	t.Cleanup(func() { objs.Delete(ctx, "partner.test", metav1.DeleteOptions{}) })
	eventually(t, 30*time.Second, "the leader fetched the partner's bundle into the object's status", func() bool {
		u, err := objs.Get(ctx, "partner.test", metav1.GetOptions{})
		if err != nil {
			return false
		}
		at, _, _ := unstructured.NestedString(u.Object, "status", "refreshedAt")
		b, _, _ := unstructured.NestedString(u.Object, "status", "bundle")
		return at != "" && b != ""
	})

	rules := dyn.Resource(podidentity.IdentityRuleResource)
	if _, err := rules.Create(ctx, ruleObject("federated", map[string]any{
		"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/fed/{{.Namespace}}/{{.PodName}}",
		"podSelector":      map[string]any{"matchLabels": map[string]any{"app": "fed"}},
		"federatesWith":    []any{"partner.test", "absent.test"},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rules.Delete(ctx, "federated", metav1.DeleteOptions{}) })
	if _, err := rules.Create(ctx, ruleObject("federated-self", map[string]any{
		"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/self/{{.PodName}}",
		"podSelector":      map[string]any{"matchLabels": map[string]any{"app": "fed"}},
		"federatesWith":    []any{"example.org"},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rules.Delete(ctx, "federated-self", metav1.DeleteOptions{}) })

	node := "node-fed"
	svid := attestAgent(t, ca, node)
	createPod(t, "default", "fed-pod", "default", node, map[string]string{"app": "fed"})
	v := follow(t, ca, svid)
	rootIDs := func() []string {
		v.mu.Lock()
		defer v.mu.Unlock()
		var ids []string
		for _, der := range v.federated["partner.test"].GetX509Authorities() {
			c, err := x509.ParseCertificate(der)
			if err == nil {
				ids = append(ids, hex.EncodeToString(c.SubjectKeyId))
			}
		}
		return ids
	}
	eventually(t, 30*time.Second, "the agent holds the partner's bundle and the pod's federating identity", func() bool {
		v.mu.Lock()
		var fed []string
		for _, e := range v.entries {
			if e.GetSpiffeId() == "spiffe://example.org/fed/default/fed-pod" {
				fed = e.GetFederatesWith()
			}
		}
		v.mu.Unlock()
		return slices.Equal(fed, []string{"absent.test", "partner.test"}) && len(rootIDs()) == 1
	})
	if ids := v.ids(); slices.Contains(mapValues(ids), "spiffe://example.org/self/fed-pod") {
		t.Error("a rule federating with its own trust domain gave an identity")
	}

	// The partner prepares a root: it reaches the agent with the next fetch.
	prep, err := partner.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the partner's prepared root reaches the agent", func() bool {
		return slices.Contains(rootIDs(), prep.GetRoot().GetId())
	})

	if _, err := ca.Admin.DeleteFederation(ctx, &adminv1.DeleteFederationRequest{TrustDomain: "partner.test"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			_, err := objs.Get(ctx, "partner.test", metav1.GetOptions{})
			roots := rootIDs()
			v.mu.Lock()
			t.Logf("object: %v; agent's partner roots %v; sync stream error: %v", err, roots, v.err)
			v.mu.Unlock()
		}
	})
	eventually(t, 30*time.Second, "the bundle leaves the agent with the relationship", func() bool {
		_, err := objs.Get(ctx, "partner.test", metav1.GetOptions{})
		return apierrors.IsNotFound(err) && len(rootIDs()) == 0
	})
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
