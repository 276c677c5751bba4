// Package clusterrevocation is the Revocation objects of the cluster
// (signet.dev/v1alpha1, cluster-scoped): the revocations every CA replica
// enforces, whichever took them. The admin API writes them in Kubernetes
// mode; cluster admins may also apply them with kubectl.
package clusterrevocation

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/signet-id/signet/ca/clusterview"
	"github.com/signet-id/signet/ca/revocations"
	"github.com/signet-id/signet/ca/store"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Resource is the Revocation CRD.
var Resource = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "revocations"}

// IDPrefix starts the IDs of revocations that are cluster objects: the
// rest is the object's name.
const IDPrefix = "k8s-"

// FromObject reads a Revocation object as the CA enforces it.
func FromObject(u *unstructured.Unstructured) (*typesv1.Revocation, error) {
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	str := func(k string) string { v, _ := spec[k].(string); return v }
	r := &typesv1.Revocation{Serial: str("serial"), SpiffeId: str("spiffeID"), AgentId: str("agent"), Reason: str("reason")}
	if ib := str("issuedBefore"); ib != "" {
		t, err := time.Parse(time.RFC3339, ib)
		if err != nil {
			return nil, fmt.Errorf("spec.issuedBefore: %v", err)
		}
		r.IssuedBefore = t.Unix()
	}
	r, err := revocations.Complete(r, u.GetCreationTimestamp().Time)
	if err != nil {
		return nil, err
	}
	r.Id = IDPrefix + u.GetName()
	r.Revision = u.GetGeneration()
	return r, nil
}

// Set is the valid Revocation objects of the cluster.
type Set struct {
	objects cache.SharedIndexInformer
	client  dynamic.NamespaceableResourceInterface
	log     hclog.Logger

	mu      sync.Mutex
	valid   []*typesv1.Revocation
	changed chan struct{}
}

// NewSet registers the Revocation informer with the view; the view's Start
// runs it, then Load reads the objects.
func NewSet(view *clusterview.View, dyn dynamic.Interface, log hclog.Logger) (*Set, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Set{client: dyn.Resource(Resource), log: log, changed: make(chan struct{})}
	s.objects = view.Resource(Resource)
	if _, err := s.objects.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.recheck() }, UpdateFunc: func(any, any) { s.recheck() }, DeleteFunc: func(any) { s.recheck() },
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// Load reads the objects once the view has synced; events keep the set
// current after.
func (s *Set) Load() { s.recheck() }

// Revocations returns the valid Revocation objects, oldest first
// (expired ones too: their readers leave those out at their own now).
func (s *Set) Revocations() []*typesv1.Revocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.valid
}

// Changed returns a channel closed at the next change of the set.
func (s *Set) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Set) recheck() {
	var out []*typesv1.Revocation
	for _, obj := range s.objects.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		r, err := FromObject(u)
		if err != nil {
			s.log.Warn("Revocation ignored", "revocation", u.GetName(), "error", err)
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetCreatedAt() != out[j].GetCreatedAt() {
			return out[i].GetCreatedAt() < out[j].GetCreatedAt()
		}
		return out[i].GetId() < out[j].GetId()
	})
	s.mu.Lock()
	s.valid = out
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// Create makes a Revocation object of r (what it names, issued_before,
// reason: checked by revocations.New first) and returns it as enforced.
func (s *Set) Create(ctx context.Context, r *typesv1.Revocation) (*typesv1.Revocation, error) {
	spec := map[string]any{}
	switch {
	case r.GetSerial() != "":
		spec["serial"] = r.GetSerial()
	case r.GetAgentId() != "":
		spec["agent"] = r.GetAgentId()
		spec["issuedBefore"] = time.Unix(r.GetIssuedBefore(), 0).UTC().Format(time.RFC3339)
	default:
		spec["spiffeID"] = r.GetSpiffeId()
		spec["issuedBefore"] = time.Unix(r.GetIssuedBefore(), 0).UTC().Format(time.RFC3339)
	}
	if r.GetReason() != "" {
		spec["reason"] = r.GetReason()
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "signet.dev/v1alpha1", "kind": "Revocation",
		"metadata": map[string]any{"generateName": "rv-"}, "spec": spec,
	}}
	created, err := s.client.Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating the revocation object: %w", err)
	}
	return FromObject(created)
}

// Delete deletes the object of a revocation's ID (IDPrefix + name).
func (s *Set) Delete(ctx context.Context, id string) error {
	name, ok := strings.CutPrefix(id, IDPrefix)
	if !ok {
		return store.ErrNotFound
	}
	err := s.client.Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return store.ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("deleting the revocation object: %w", err)
	}
	return nil
}
