// Package clusterfederation keeps the federated trust domains of
// Kubernetes mode as cluster-scoped FederatedTrustDomain objects
// (signet.dev/v1alpha1): a federation.Store over them, so that the
// relationships and the bundles the leader fetches are shared by every
// replica. Cluster admins may apply the objects with kubectl; the admin
// API (`signet federation create|delete`) writes them too.
package clusterfederation

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/signet-id/signet/ca/clusterview"
	"github.com/signet-id/signet/ca/federation"
	"github.com/signet-id/signet/ca/store"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Resource is the FederatedTrustDomain CRD.
var Resource = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "federatedtrustdomains"}

// object is one FederatedTrustDomain as read.
type object struct {
	name string
	f    *typesv1.FederatedTrustDomain
}

// FromObject reads a FederatedTrustDomain object: its spec, and the
// bundle fetched last (its status), else the one the spec gives.
func FromObject(u *unstructured.Unstructured) (*typesv1.FederatedTrustDomain, error) {
	str := func(fields ...string) string { v, _, _ := unstructured.NestedString(u.Object, fields...); return v }
	f := &typesv1.FederatedTrustDomain{
		TrustDomain: str("spec", "trustDomain"), BundleEndpointUrl: str("spec", "bundleEndpointURL"),
		Profile: str("spec", "bundleEndpointProfile", "type"), EndpointSpiffeId: str("spec", "bundleEndpointProfile", "endpointSPIFFEID"),
		EndpointCa: []byte(str("spec", "endpointCA")), LastError: str("status", "lastError"),
	}
	if len(f.EndpointCa) == 0 {
		f.EndpointCa = nil
	}
	td, err := spiffeid.TrustDomainFromString(f.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("spec.trustDomain: %v", err)
	}
	for _, src := range []string{str("status", "bundle"), str("spec", "trustDomainBundle")} {
		if src == "" {
			continue
		}
		b, err := spiffebundle.Parse(td, []byte(src))
		if err != nil {
			return nil, fmt.Errorf("bundle: %v", err)
		}
		if f.Bundle, err = federation.ToProto(b); err != nil {
			return nil, err
		}
		break
	}
	for field, dst := range map[string]*int64{"refreshedAt": &f.RefreshedAt, "nextRefreshAt": &f.NextRefreshAt} {
		if v := str("status", field); v != "" {
			if t, err := time.Parse(time.RFC3339, v); err == nil {
				*dst = t.Unix()
			}
		}
	}
	return f, nil
}

// Store is the FederatedTrustDomain objects as a federation.Store.
type Store struct {
	objects *clusterview.Objects[object]
	client  dynamic.NamespaceableResourceInterface
}

// NewStore registers the informer with the view; the view's Start runs
// it, then Load reads the objects.
func NewStore(view *clusterview.View, dyn dynamic.Interface, log hclog.Logger) (*Store, error) {
	read := func(u *unstructured.Unstructured) (object, error) {
		f, err := FromObject(u)
		return object{name: u.GetName(), f: f}, err
	}
	byTD := func(os []object) {
		sort.Slice(os, func(i, j int) bool { return os[i].f.GetTrustDomain() < os[j].f.GetTrustDomain() })
	}
	objects, err := clusterview.NewObjects(view, Resource, "FederatedTrustDomain", read, byTD, log)
	if err != nil {
		return nil, err
	}
	return &Store{objects: objects, client: dyn.Resource(Resource)}, nil
}

// Load reads the objects once the view has synced.
func (s *Store) Load() { s.objects.Load() }

// Changed is closed at the next change of the objects.
func (s *Store) Changed() <-chan struct{} { return s.objects.Changed() }

// ListFederations implements federation.Store.
func (s *Store) ListFederations(context.Context) ([]*typesv1.FederatedTrustDomain, error) {
	var out []*typesv1.FederatedTrustDomain
	seen := map[string]bool{}
	for _, o := range s.objects.List() {
		// Two objects of one trust domain: the first by name counts.
		if !seen[o.f.GetTrustDomain()] {
			seen[o.f.GetTrustDomain()] = true
			out = append(out, o.f)
		}
	}
	return out, nil
}

func (s *Store) find(td string) (string, bool) {
	for _, o := range s.objects.List() {
		if o.f.GetTrustDomain() == td {
			return o.name, true
		}
	}
	return "", false
}

var dnsName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// objectName is the name of a new object for trust domain td: td itself
// when it is a valid name, else a hash of it.
func objectName(td string) string {
	if len(td) <= 253 && dnsName.MatchString(td) {
		return td
	}
	h := sha256.Sum256([]byte(td))
	return "td-" + hex.EncodeToString(h[:10])
}

// PutFederation implements federation.Store. The operator's write (from
// the admin API: nothing fetched yet) sets the spec and clears the status;
// the fetcher's write-back (it always says when to fetch next) sets the
// status only.
func (s *Store) PutFederation(ctx context.Context, f *typesv1.FederatedTrustDomain) error {
	bundleJSON := ""
	if f.GetBundle() != nil {
		b, err := federation.FromProto(f.GetBundle())
		if err != nil {
			return err
		}
		raw, err := b.Marshal()
		if err != nil {
			return err
		}
		bundleJSON = string(raw)
	}
	name, exists := s.find(f.GetTrustDomain())
	var cur *unstructured.Unstructured
	if exists {
		var err error
		if cur, err = s.client.Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			exists = false
		} else if err != nil {
			return err
		}
	}
	status := map[string]any{}
	if writeBack := f.GetNextRefreshAt() != 0; writeBack {
		if !exists {
			return store.ErrNotFound
		}
		if bundleJSON != "" {
			status["bundle"] = bundleJSON
		}
		if f.GetRefreshedAt() != 0 {
			status["refreshedAt"] = time.Unix(f.GetRefreshedAt(), 0).UTC().Format(time.RFC3339)
		}
		status["nextRefreshAt"] = time.Unix(f.GetNextRefreshAt(), 0).UTC().Format(time.RFC3339)
		if f.GetLastError() != "" {
			status["lastError"] = f.GetLastError()
		}
	} else {
		spec := map[string]any{"trustDomain": f.GetTrustDomain(), "bundleEndpointURL": f.GetBundleEndpointUrl()}
		prof := map[string]any{"type": f.GetProfile()}
		if f.GetEndpointSpiffeId() != "" {
			prof["endpointSPIFFEID"] = f.GetEndpointSpiffeId()
		}
		spec["bundleEndpointProfile"] = prof
		if len(f.GetEndpointCa()) > 0 {
			spec["endpointCA"] = string(f.GetEndpointCa())
		}
		if bundleJSON != "" {
			spec["trustDomainBundle"] = bundleJSON
		}
		var err error
		if !exists {
			obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "signet.dev/v1alpha1", "kind": "FederatedTrustDomain",
				"metadata": map[string]any{"name": objectName(f.GetTrustDomain())}, "spec": spec}}
			if cur, err = s.client.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("creating the FederatedTrustDomain object: %w", err)
			}
		} else {
			cur.Object["spec"] = spec
			if cur, err = s.client.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("updating the FederatedTrustDomain object: %w", err)
			}
		}
	}
	if old, _, _ := unstructured.NestedMap(cur.Object, "status"); fmt.Sprint(old) == fmt.Sprint(status) {
		return nil
	}
	cur.Object["status"] = status
	if _, err := s.client.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating the FederatedTrustDomain status: %w", err)
	}
	return nil
}

// DeleteFederation implements federation.Store.
func (s *Store) DeleteFederation(ctx context.Context, td string) error {
	name, ok := s.find(td)
	if !ok {
		return store.ErrNotFound
	}
	err := s.client.Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return store.ErrNotFound
	}
	return err
}
