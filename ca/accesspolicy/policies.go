// Package accesspolicy reads the namespaced AccessPolicy objects of a
// cluster: it checks each as the admission webhook does (a policy may
// protect only servers of its own namespace, and allow peers of other
// namespaces only where a cluster admin allowed it) and keeps the set of
// those that pass for the CA to send to agents.
package accesspolicy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/signet-id/signet/ca/clusterview"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// Resource is the namespaced AccessPolicy CRD's resource.
var Resource = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "accesspolicies"}

// CrossNamespaceLabel on a namespace lets its AccessPolicies allow peers
// of other namespaces. Only cluster admins may set it (the webhook checks).
const CrossNamespaceLabel = "signet.dev/cross-namespace"

// FromObject reads an AccessPolicy object as the central policy
// "<namespace>/<name>", its revision the object's generation.
func FromObject(u *unstructured.Unstructured) (*typesv1.AccessPolicy, error) {
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

// CheckNamespaced checks an AccessPolicy of namespace ns: valid, its
// target a server of ns, and, unless crossAllowed, no allow rule for a
// peer outside ns.
func CheckNamespaced(td spiffeid.TrustDomain, ns string, crossAllowed bool, p *typesv1.AccessPolicy) error {
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

// Set is the AccessPolicy objects of the cluster that pass the checks.
// The admission webhook refuses the others; the CA ignores them too, in
// case the webhook is not installed.
type Set struct {
	objects *clusterview.Objects[*typesv1.AccessPolicy]
}

// NewSet registers the AccessPolicy informer and its callbacks with the
// view; the view's Start runs them, then Load reads the objects.
func NewSet(view *clusterview.View, td spiffeid.TrustDomain, log hclog.Logger) (*Set, error) {
	read := func(u *unstructured.Unstructured) (*typesv1.AccessPolicy, error) {
		p, err := FromObject(u)
		if err == nil {
			err = CheckNamespaced(td, u.GetNamespace(), view.NamespaceLabels(u.GetNamespace())[CrossNamespaceLabel] == "allowed", p)
		}
		return p, err
	}
	byName := func(ps []*typesv1.AccessPolicy) {
		sort.Slice(ps, func(i, j int) bool { return ps[i].GetName() < ps[j].GetName() })
	}
	objects, err := clusterview.NewObjects(view, Resource, "AccessPolicy", read, byName, log)
	if err != nil {
		return nil, err
	}
	// A namespace's labels decide whether its policies may reach out.
	view.OnNamespacesChange(objects.Load)
	return &Set{objects: objects}, nil
}

// Load checks the objects once the view has synced; events keep the set
// current after.
func (s *Set) Load() { s.objects.Load() }

// Policies returns the policies that pass the checks, by name. Sync
// streams call it on every wake, so the checks run on events, not here.
func (s *Set) Policies() []*typesv1.AccessPolicy { return s.objects.List() }

// Changed returns a channel closed at the next change of the set.
func (s *Set) Changed() <-chan struct{} { return s.objects.Changed() }
