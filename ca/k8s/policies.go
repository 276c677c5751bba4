package k8s

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// AccessPolicyResource is the namespaced AccessPolicy CRD's resource.
var AccessPolicyResource = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "accesspolicies"}

// CrossNamespaceLabel on a namespace lets its AccessPolicies allow peers
// of other namespaces. Only cluster admins may set it (the webhook checks).
const CrossNamespaceLabel = "signet.dev/cross-namespace"

// PolicyFromObject reads an AccessPolicy object as the central policy
// "<namespace>/<name>", its revision the object's generation.
func PolicyFromObject(u *unstructured.Unstructured) (*typesv1.AccessPolicy, error) {
	spec, ok := u.Object["spec"]
	if !ok {
		return nil, fmt.Errorf("no spec")
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	p := &typesv1.AccessPolicy{}
	if err := protojson.Unmarshal(raw, p); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	p.Name = u.GetNamespace() + "/" + u.GetName()
	p.Revision = u.GetGeneration()
	return p, nil
}

// CheckNamespacedPolicy checks an AccessPolicy of namespace ns: valid, its
// target a server of ns, and, unless crossAllowed, no allow rule for a
// peer outside ns.
func CheckNamespacedPolicy(td spiffeid.TrustDomain, ns string, crossAllowed bool, p *typesv1.AccessPolicy) error {
	if err := authz.CheckPolicy(td, p); err != nil {
		return err
	}
	prefix := "spiffe://" + td.Name() + "/ns/" + ns + "/"
	if !strings.HasPrefix(p.GetTarget(), prefix) {
		return fmt.Errorf("target %q: must be a server of namespace %s (%s...)", p.GetTarget(), ns, prefix)
	}
	if crossAllowed {
		return nil
	}
	for i, r := range p.GetRules() {
		if r.GetAction() != "allow" {
			continue
		}
		for j, peer := range r.GetPeers() {
			inNS := false
			switch {
			case peer.GetNamespace() != "":
				inNS = peer.GetNamespace() == ns
			case peer.GetServiceAccount() != "":
				inNS = strings.HasPrefix(peer.GetServiceAccount(), ns+"/")
			case peer.GetId() != "":
				inNS = strings.HasPrefix(peer.GetId(), prefix)
			case peer.GetPattern() != "":
				inNS = strings.HasPrefix(peer.GetPattern(), prefix)
			}
			if !inNS {
				return fmt.Errorf("rules[%d].peers[%d] allows peers outside namespace %s; a cluster admin must label the namespace %s=allowed first",
					i, j, ns, CrossNamespaceLabel)
			}
		}
	}
	return nil
}

// Policies returns the AccessPolicy objects that pass the checks, by name.
// The admission webhook refuses the others; the CA ignores them too, in
// case the webhook is not installed. Sync streams call it on every wake, so
// the checks run on informer events (recheckPolicies), not here.
func (id *Identities) Policies() []*typesv1.AccessPolicy {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.valid
}

// recheckPolicies checks every AccessPolicy object again (after a change
// of the objects or of a namespace's labels) and wakes every Sync stream.
func (id *Identities) recheckPolicies() {
	if id.policies == nil {
		return
	}
	var out []*typesv1.AccessPolicy
	for _, obj := range id.policies.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		p, err := PolicyFromObject(u)
		if err == nil {
			err = CheckNamespacedPolicy(id.cfg.TrustDomain, u.GetNamespace(), id.namespaceLabels(u.GetNamespace())[CrossNamespaceLabel] == "allowed", p)
		}
		if err != nil {
			id.cfg.Log.Warn("AccessPolicy ignored", "policy", u.GetNamespace()+"/"+u.GetName(), "error", err)
			continue
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	id.mu.Lock()
	id.valid = out
	id.mu.Unlock()
	id.notify("")
}
