package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Bundle acknowledgements are kept as one Lease per agent in the CA's
// namespace, as the kubelet keeps its node heartbeats: any replica that
// takes an agent's acknowledgement writes it, and every replica (the
// leader, which activates roots, among them) reads them all from its
// informer. The Lease's holder is the agent; the acknowledgement itself is
// an annotation.
const (
	// AckLabel marks the Leases that hold acknowledgements.
	AckLabel = "signet.dev/bundle-ack"
	// ackAnnotation holds the acknowledgement, a base64 protobuf
	// signet.types.v1.BundleAck.
	ackAnnotation = "signet.dev/ack"
	ackPrefix     = "signet-ack-"
)

// LeaseAcks stores bundle acknowledgements as Leases.
type LeaseAcks struct {
	Client    kubernetes.Interface
	Namespace string

	store cache.Store
}

// Start watches the acknowledgement Leases until ctx ends; it returns
// once the first list is in.
func (l *LeaseAcks) Start(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(l.Client, 0, informers.WithNamespace(l.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = AckLabel + "=true" }))
	inf := f.Coordination().V1().Leases().Informer()
	l.store = inf.GetStore()
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("cluster: bundle acknowledgement Leases in %s: not synced", l.Namespace)
	}
	return nil
}

// leaseName is the agent's Lease: a hash of its ID, which is too long
// and has characters a name cannot.
func leaseName(agentID string) string {
	sum := sha256.Sum256([]byte(agentID))
	return ackPrefix + hex.EncodeToString(sum[:12])
}

// ackRefresh is how old a stored acknowledgement may grow before an
// unchanged one is written again: an agent repeats its acknowledgement
// after every reconnect, and a thousand agents moving to another replica
// need not rewrite a thousand Leases to say what they said a moment ago.
const ackRefresh = time.Minute

// PutBundleAck writes an agent's acknowledgement. It updates the Lease
// the informer holds, or creates one when the informer has none, reading
// it from the API server only on a conflict; it leaves a Lease alone that
// already says the same and is recent.
func (l *LeaseAcks) PutBundleAck(ctx context.Context, ack *typesv1.BundleAck) error {
	raw, err := proto.Marshal(ack)
	if err != nil {
		return err
	}
	value := base64.StdEncoding.EncodeToString(raw)
	holder := ack.GetAgentId()
	now := metav1.NewMicroTime(time.Unix(ack.GetAckedAt(), 0))
	leases := l.Client.CoordinationV1().Leases(l.Namespace)
	name := leaseName(ack.GetAgentId())
	create := func() error {
		_, err := leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: l.Namespace,
				Labels:      map[string]string{AckLabel: "true", "app.kubernetes.io/name": "signet"},
				Annotations: map[string]string{ackAnnotation: value}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &now},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return apierrors.NewConflict(coordinationv1.Resource("leases"), name, err)
		}
		return err
	}
	cached, known := l.cached(name)
	if cached != nil && sameAck(cached, ack) {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := cached
		cached = nil
		if cur == nil && known {
			// The informer has no such Lease: a new agent, most likely.
			known = false
			return create()
		}
		if cur == nil {
			got, err := leases.Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return create()
			}
			if err != nil {
				return err
			}
			cur = got
		}
		cur = cur.DeepCopy()
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[ackAnnotation] = value
		cur.Spec.HolderIdentity, cur.Spec.RenewTime = &holder, &now
		_, err = leases.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// cached is the informer's copy of the Lease name (shared: not to be
// changed), or nil; known says whether the informer answered at all.
func (l *LeaseAcks) cached(name string) (lease *coordinationv1.Lease, known bool) {
	if l.store == nil {
		return nil, false
	}
	obj, ok, err := l.store.GetByKey(l.Namespace + "/" + name)
	if err != nil {
		return nil, false
	}
	if !ok {
		return nil, true
	}
	lease, _ = obj.(*coordinationv1.Lease)
	return lease, true
}

// sameAck tells whether lease already holds ack, but for when it was
// acknowledged, from less than ackRefresh before it.
func sameAck(lease *coordinationv1.Lease, ack *typesv1.BundleAck) bool {
	raw, err := base64.StdEncoding.DecodeString(lease.Annotations[ackAnnotation])
	if err != nil {
		return false
	}
	var held typesv1.BundleAck
	if proto.Unmarshal(raw, &held) != nil {
		return false
	}
	age := time.Duration(ack.GetAckedAt()-held.GetAckedAt()) * time.Second
	if age < 0 || age >= ackRefresh {
		return false
	}
	held.AckedAt = ack.GetAckedAt()
	return proto.Equal(&held, ack)
}

// ListBundleAcks returns every acknowledgement the informer holds, by
// agent ID; Leases that do not hold a readable one are left out.
func (l *LeaseAcks) ListBundleAcks(context.Context) ([]*typesv1.BundleAck, error) {
	var out []*typesv1.BundleAck
	for _, obj := range l.store.List() {
		lease, ok := obj.(*coordinationv1.Lease)
		if !ok {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(lease.Annotations[ackAnnotation])
		if err != nil {
			continue
		}
		ack := &typesv1.BundleAck{}
		if proto.Unmarshal(raw, ack) != nil || ack.GetAgentId() == "" || leaseName(ack.GetAgentId()) != lease.Name {
			continue
		}
		out = append(out, ack)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetAgentId() < out[j].GetAgentId() })
	return out, nil
}
