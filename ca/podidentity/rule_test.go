package podidentity

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func ruleObj(spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "signet.dev/v1alpha1", "kind": "IdentityRule", "metadata": map[string]any{"name": "r"}, "spec": spec,
	}}
}

func TestCompileRule(t *testing.T) {
	for _, tt := range []struct {
		name    string
		spec    map[string]any
		wantErr string
	}{
		{"default", map[string]any{"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/ns/{{.Namespace}}/sa/{{.ServiceAccount}}"}, ""},
		{"ttls", map[string]any{"spiffeIDTemplate": "spiffe://example.org/x/{{.PodName}}", "x509SVIDTTL": "30m", "jwtSVIDTTL": "5m"}, ""},
		{"ttl too short", map[string]any{"spiffeIDTemplate": "spiffe://example.org/x/{{.PodName}}", "x509SVIDTTL": "10s"}, "x509SVIDTTL"},
		{"ttl too long", map[string]any{"spiffeIDTemplate": "spiffe://example.org/x/{{.PodName}}", "jwtSVIDTTL": "48h"}, "jwtSVIDTTL"},
		{"bad selector", map[string]any{"spiffeIDTemplate": "spiffe://example.org/x/{{.PodName}}",
			"podSelector": map[string]any{"matchExpressions": []any{map[string]any{"key": "a", "operator": "Sideways"}}}}, "podSelector"},
		{"not an object", map[string]any{"spiffeIDTemplate": 42}, "spec"},
		{"outside the trust domain", map[string]any{"spiffeIDTemplate": "spiffe://evil.org/x/{{.PodName}}"}, "example.org"},
		{"reserved", map[string]any{"spiffeIDTemplate": "spiffe://example.org/signet/{{.PodName}}"}, "reserved"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := compileRule(td, ruleObj(tt.spec))
			if tt.wantErr == "" && r.err != nil || tt.wantErr != "" && (r.err == nil || !strings.Contains(r.err.Error(), tt.wantErr)) {
				t.Fatalf("compileRule = %v; want error containing %q", r.err, tt.wantErr)
			}
		})
	}
	r := compileRule(td, ruleObj(map[string]any{"spiffeIDTemplate": "spiffe://example.org/x/{{.PodName}}", "x509SVIDTTL": "30m"}))
	if r.x509TTL != 30*time.Minute || r.jwtTTL != 0 || !r.pods.Matches(labels.Set{"any": "thing"}) {
		t.Fatalf("compiled %+v", r)
	}
}

func TestDeriveSkipsFinishedPodsAndBadRenders(t *testing.T) {
	id := &Identities{cfg: Config{TrustDomain: td, Log: hclog.NewNullLogger()}}
	id.order = []*rule{
		compileRule(td, ruleObj(map[string]any{"spiffeIDTemplate": "spiffe://example.org/ns/{{.Namespace}}/sa/{{.ServiceAccount}}"})),
	}
	parent := spiffeid.RequireFromString("spiffe://example.org/signet/agent/k8s/c/n1")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	es := id.derive(pod, parent, "")
	if len(es) != 1 || es[0].SPIFFEID.String() != "spiffe://example.org/ns/ns/sa/default" || es[0].ID != "k8s:u1:r" || es[0].ParentID != parent {
		t.Fatalf("derive = %+v", es)
	}
	pod.Status.Phase = corev1.PodSucceeded
	if es := id.derive(pod, parent, ""); len(es) != 0 {
		t.Fatalf("finished pod: %+v", es)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Spec.ServiceAccountName = "a%2Fb"
	if es := id.derive(pod, parent, ""); len(es) != 0 {
		t.Fatalf("service account that cannot render: %+v", es)
	}
}
