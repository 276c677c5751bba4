package podidentity

import (
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/ca/identityrule"
	"github.com/signet-id/signet/internal/entry"
)

// IdentityRuleResource is the IdentityRule CRD's resource.
var IdentityRuleResource = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "identityrules"}

// IdentityRuleSpec mirrors the CRD's spec (deploy/base/crds/identityrules.yaml).
type IdentityRuleSpec struct {
	SPIFFEIDTemplate  string                `json:"spiffeIDTemplate"`
	DNSNameTemplates  []string              `json:"dnsNameTemplates,omitempty"`
	PodSelector       *metav1.LabelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	X509SVIDTTL       *metav1.Duration      `json:"x509SVIDTTL,omitempty"`
	JWTSVIDTTL        *metav1.Duration      `json:"jwtSVIDTTL,omitempty"`
	AllowPodMetadata  bool                  `json:"allowPodMetadata,omitempty"`
	WorkloadKey       bool                  `json:"workloadKey,omitempty"`
	FederatesWith     []string              `json:"federatesWith,omitempty"`
}

// IdentityRuleStatus mirrors the CRD's status.
type IdentityRuleStatus struct {
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// IdentityRule is a cluster-scoped signet.dev/v1alpha1 IdentityRule.
type IdentityRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              IdentityRuleSpec   `json:"spec"`
	Status            IdentityRuleStatus `json:"status,omitempty"`
}

// rule is a compiled IdentityRule, or the reason it is refused.
type rule struct {
	name        string
	generation  int64
	compiled    *identityrule.Rule
	pods        labels.Selector
	namespaces  labels.Selector
	x509TTL     time.Duration
	jwtTTL      time.Duration
	allowMeta   bool
	workloadKey bool
	federates   []spiffeid.TrustDomain
	err         error
}

// compileRule checks an IdentityRule object; a rule that fails keeps its
// error, which goes into its status, and selects nothing.
func compileRule(td spiffeid.TrustDomain, u *unstructured.Unstructured) *rule {
	var ir IdentityRule
	r := &rule{name: u.GetName(), generation: u.GetGeneration()}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &ir); err != nil {
		r.err = fmt.Errorf("spec: %w", err)
		return r
	}
	s := ir.Spec
	r.allowMeta, r.workloadKey = s.AllowPodMetadata, s.WorkloadKey
	if r.compiled, r.err = identityrule.Compile(td, identityrule.Spec{SPIFFEIDTemplate: s.SPIFFEIDTemplate, DNSNameTemplates: s.DNSNameTemplates, AllowPodMetadata: s.AllowPodMetadata}); r.err != nil {
		return r
	}
	if r.federates, r.err = entry.FederatesWith(td, s.FederatesWith); r.err != nil {
		r.err = fmt.Errorf("federatesWith: %w", r.err)
		return r
	}
	if r.pods, r.err = selectorOrAll(s.PodSelector); r.err != nil {
		r.err = fmt.Errorf("podSelector: %w", r.err)
		return r
	}
	if r.namespaces, r.err = selectorOrAll(s.NamespaceSelector); r.err != nil {
		r.err = fmt.Errorf("namespaceSelector: %w", r.err)
		return r
	}
	for _, t := range []struct {
		name string
		d    *metav1.Duration
		out  *time.Duration
	}{{"x509SVIDTTL", s.X509SVIDTTL, &r.x509TTL}, {"jwtSVIDTTL", s.JWTSVIDTTL, &r.jwtTTL}} {
		if t.d == nil {
			continue
		}
		if t.d.Duration < time.Minute || t.d.Duration > entry.MaxTTL {
			r.err = fmt.Errorf("%s: %s is outside 1m to %s", t.name, t.d.Duration, entry.MaxTTL)
			return r
		}
		*t.out = t.d.Duration
	}
	return r
}

func selectorOrAll(s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Everything(), nil
	}
	return metav1.LabelSelectorAsSelector(s)
}
