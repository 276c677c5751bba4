// Package clusterrevocation is the Revocation objects of the cluster
// (signet.dev/v1alpha1, cluster-scoped): the revocations every CA replica
// enforces, whichever took them. The admin API writes them in Kubernetes
// mode; cluster admins may also apply them with kubectl.
package clusterrevocation

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

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
	return read(u, u.GetCreationTimestamp().Time)
}

// Check checks an object being created at now as FromObject will read it
// (for the admission webhook: the object has no creation time yet).
func Check(u *unstructured.Unstructured, now time.Time) error {
	_, err := read(u, now)
	return err
}

func read(u *unstructured.Unstructured, created time.Time) (*typesv1.Revocation, error) {
	spec, _, _ := unstructured.NestedMap(u.Object, "spec")
	str := func(k string) string { v, _ := spec[k].(string); return v }
	r := &typesv1.Revocation{Serial: str("serial"), SpiffeId: str("spiffeID"), AgentId: str("agent"), CaKey: str("caKey"), Reason: str("reason")}
	for field, dst := range map[string]*int64{"issuedBefore": &r.IssuedBefore, "enforceAfter": &r.EnforceAfter, "expiresAt": &r.ExpiresAt} {
		if v := str(field); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return nil, fmt.Errorf("spec.%s: %v", field, err)
			}
			*dst = t.Unix()
		}
	}
	// A CA key's revocation gives agents time to re-issue before peers
	// refuse the key, unless the object says otherwise.
	if grace, ok, _ := unstructured.NestedInt64(u.Object, "spec", "graceSeconds"); ok && r.EnforceAfter == 0 {
		r.EnforceAfter = created.Unix() + grace
	} else if r.CaKey != "" && r.EnforceAfter == 0 {
		r.EnforceAfter = created.Add(revocations.DefaultCAKeyGrace).Unix()
	}
	r, err := revocations.Complete(r, created)
	if err != nil {
		return nil, err
	}
	r.Id = IDPrefix + u.GetName()
	r.Revision = u.GetGeneration()
	return r, nil
}

// Set is the valid Revocation objects of the cluster.
type Set struct {
	objects *clusterview.Objects[*typesv1.Revocation]
	client  dynamic.NamespaceableResourceInterface
}

// NewSet registers the Revocation informer with the view; the view's Start
// runs it, then Load reads the objects.
func NewSet(view *clusterview.View, dyn dynamic.Interface, log hclog.Logger) (*Set, error) {
	oldestFirst := func(rs []*typesv1.Revocation) {
		sort.Slice(rs, func(i, j int) bool {
			if rs[i].GetCreatedAt() != rs[j].GetCreatedAt() {
				return rs[i].GetCreatedAt() < rs[j].GetCreatedAt()
			}
			return rs[i].GetId() < rs[j].GetId()
		})
	}
	objects, err := clusterview.NewObjects(view, Resource, "Revocation", FromObject, oldestFirst, log)
	if err != nil {
		return nil, err
	}
	return &Set{objects: objects, client: dyn.Resource(Resource)}, nil
}

// Load reads the objects once the view has synced; events keep the set
// current after.
func (s *Set) Load() { s.objects.Load() }

// Revocations returns the valid Revocation objects, oldest first
// (expired ones too: their readers leave those out at their own now).
func (s *Set) Revocations() []*typesv1.Revocation { return s.objects.List() }

// Changed returns a channel closed at the next change of the set.
func (s *Set) Changed() <-chan struct{} { return s.objects.Changed() }

// Create makes a Revocation object of r (what it names, issued_before,
// reason: checked by revocations.New first) and returns it as enforced.
func (s *Set) Create(ctx context.Context, r *typesv1.Revocation) (*typesv1.Revocation, error) {
	spec := map[string]any{}
	if r.GetCaKey() != "" {
		spec["caKey"] = r.GetCaKey()
		spec["expiresAt"] = time.Unix(r.GetExpiresAt(), 0).UTC().Format(time.RFC3339)
	}
	if r.GetEnforceAfter() != 0 {
		spec["enforceAfter"] = time.Unix(r.GetEnforceAfter(), 0).UTC().Format(time.RFC3339)
	}
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

// PruneExpired deletes the Revocation objects that have expired by now
// (everything they covered has expired: they revoke nothing more), and
// returns their IDs. The leader runs it.
func (s *Set) PruneExpired(ctx context.Context, now time.Time) ([]string, error) {
	var gone []string
	for _, r := range s.objects.List() {
		if r.GetExpiresAt() > now.Unix() {
			continue
		}
		if err := s.Delete(ctx, r.GetId()); err != nil && !errors.Is(err, store.ErrNotFound) {
			return gone, err
		}
		gone = append(gone, r.GetId())
	}
	return gone, nil
}

// RunPruning prunes expired Revocation objects now, every interval and
// after every change (an object made already expired), until ctx ends.
func (s *Set) RunPruning(ctx context.Context, interval time.Duration, log hclog.Logger) {
	for {
		changed := s.Changed()
		if ids, err := s.PruneExpired(ctx, time.Now()); err != nil && ctx.Err() == nil {
			log.Warn("deleting expired Revocation objects failed", "error", err)
		} else if len(ids) > 0 {
			log.Info("deleted expired Revocation objects: everything they covered has expired", "ids", ids)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(interval):
		}
	}
}
