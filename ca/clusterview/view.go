// Package clusterview is the CA's one read-only view of the cluster's
// pods, namespaces and nodes: shared informers, trimmed to what the CA
// reads and indexed by node and pod UID, with change callbacks. The parts
// that derive pod identities, check access policies and track agent pods
// all read this one view instead of watching the API server each.
package clusterview

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// DeletedTTL is how long a deleted pod is remembered (PodDeleted): a
// listing or a read racing the deletion must not bring it back.
const DeletedTTL = 2 * time.Minute

const (
	byNode = "node"
	byUID  = "uid"
)

// View watches pods, namespaces and nodes, and the custom resources its
// users ask for (Resource). Register callbacks and resources before Start.
type View struct {
	client     kubernetes.Interface
	factory    informers.SharedInformerFactory
	dyn        dynamicinformer.DynamicSharedInformerFactory
	pods       cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	nodes      cache.SharedIndexInformer
	resources  []cache.SharedIndexInformer

	onPods       []func(node string)
	onPodDeleted []func(uid string)
	onNodes      []func()
	onNamespaces []func()

	mu sync.Mutex
	// gone holds pods the informer saw deleted (by UID, with the time).
	gone       map[string]time.Time
	gonePruned time.Time
}

// New sets up the informers; Start runs them.
func New(client kubernetes.Interface, dyn dynamic.Interface) (*View, error) {
	v := &View{client: client, gone: map[string]time.Time{}}
	v.factory = informers.NewSharedInformerFactory(client, 0)
	v.dyn = dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	v.pods = v.factory.Core().V1().Pods().Informer()
	if err := v.pods.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			return Trim(p), nil
		}
		return obj, nil
	}); err != nil {
		return nil, err
	}
	if err := v.pods.AddIndexers(cache.Indexers{
		byNode: func(obj any) ([]string, error) { return []string{obj.(*corev1.Pod).Spec.NodeName}, nil },
		byUID:  func(obj any) ([]string, error) { return []string{string(obj.(*corev1.Pod).UID)}, nil },
	}); err != nil {
		return nil, err
	}
	v.namespaces = v.factory.Core().V1().Namespaces().Informer()
	v.nodes = v.factory.Core().V1().Nodes().Informer()
	if err := v.nodes.SetTransform(trimNode); err != nil {
		return nil, err
	}
	// Node status updates (heartbeats) do not matter: only a node's coming
	// and going does. A namespace matters through its labels.
	nodesChanged := func(any) {
		for _, fn := range v.onNodes {
			fn()
		}
	}
	if _, err := v.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: nodesChanged, DeleteFunc: nodesChanged}); err != nil {
		return nil, err
	}
	namespacesChanged := func() {
		for _, fn := range v.onNamespaces {
			fn()
		}
	}
	if _, err := v.namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { namespacesChanged() },
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Namespace)
			n, ok2 := obj.(*corev1.Namespace)
			if !ok1 || !ok2 || !maps.Equal(o.Labels, n.Labels) {
				namespacesChanged()
			}
		},
		DeleteFunc: func(any) { namespacesChanged() },
	}); err != nil {
		return nil, err
	}
	// A pod change concerns the node it is (or was) bound to; a pod not
	// bound to a node concerns none yet.
	podsChanged := func(node string) {
		if node == "" {
			return
		}
		for _, fn := range v.onPods {
			fn(node)
		}
	}
	if _, err := v.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { podsChanged(podNode(obj)) },
		UpdateFunc: func(old, obj any) {
			if n := podNode(old); n != podNode(obj) {
				podsChanged(n)
			}
			podsChanged(podNode(obj))
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				v.deleted(string(p.UID))
				for _, fn := range v.onPodDeleted {
					fn(string(p.UID))
				}
			}
			podsChanged(podNode(obj))
		},
	}); err != nil {
		return nil, err
	}
	return v, nil
}

func podNode(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		return p.Spec.NodeName
	}
	return ""
}

// Trim keeps only what the CA reads of a pod (derivation and liveness
// checks), so that a large cluster's pods cost little memory.
func Trim(p *corev1.Pod) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, Annotations: p.Annotations, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
}

func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion}}, nil
}

// Finished reports whether a pod's containers have all ended for good.
func Finished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// OnPodsChange calls fn with a node's name whenever a pod bound to it (or
// that was) changes.
func (v *View) OnPodsChange(fn func(node string)) { v.onPods = append(v.onPods, fn) }

// OnPodDeleted calls fn with the UID of every pod deleted.
func (v *View) OnPodDeleted(fn func(uid string)) { v.onPodDeleted = append(v.onPodDeleted, fn) }

// OnNodesChange calls fn when a node comes or goes.
func (v *View) OnNodesChange(fn func()) { v.onNodes = append(v.onNodes, fn) }

// OnNamespacesChange calls fn when a namespace comes or goes, or its
// labels change.
func (v *View) OnNamespacesChange(fn func()) { v.onNamespaces = append(v.onNamespaces, fn) }

// Resource returns a shared informer of a custom resource (unstructured
// objects), which Start runs and waits for.
func (v *View) Resource(gvr schema.GroupVersionResource) cache.SharedIndexInformer {
	inf := v.dyn.ForResource(gvr).Informer()
	v.resources = append(v.resources, inf)
	return inf
}

// Start runs the informers until ctx ends and waits for their first list.
func (v *View) Start(ctx context.Context) error {
	v.factory.Start(ctx.Done())
	v.dyn.Start(ctx.Done())
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	synced := []cache.InformerSynced{v.pods.HasSynced, v.namespaces.HasSynced, v.nodes.HasSynced}
	for _, r := range v.resources {
		synced = append(synced, r.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return errors.New("clusterview: informers did not sync (are the IdentityRule, AccessPolicy and Revocation CRDs installed, and may the CA list pods, namespaces, nodes and all three? Helm installs CRDs but never upgrades them: apply deploy/helm/signet/crds/ after an upgrade)")
	}
	return nil
}

// Client is the API client the view reads with, for what the informers
// do not hold.
func (v *View) Client() kubernetes.Interface { return v.client }

// Pod returns the pod with UID uid.
func (v *View) Pod(uid string) (*corev1.Pod, bool) {
	objs, _ := v.pods.GetIndexer().ByIndex(byUID, uid)
	if len(objs) != 1 {
		return nil, false
	}
	return objs[0].(*corev1.Pod), true
}

// PodsOnNode returns the pods bound to node.
func (v *View) PodsOnNode(node string) []*corev1.Pod {
	objs, _ := v.pods.GetIndexer().ByIndex(byNode, node)
	out := make([]*corev1.Pod, len(objs))
	for i, o := range objs {
		out[i] = o.(*corev1.Pod)
	}
	return out
}

// Pods returns every pod.
func (v *View) Pods() []*corev1.Pod {
	objs := v.pods.GetStore().List()
	out := make([]*corev1.Pod, len(objs))
	for i, o := range objs {
		out[i] = o.(*corev1.Pod)
	}
	return out
}

// PodDeleted reports whether the pod with UID uid was deleted within
// DeletedTTL.
func (v *View) PodDeleted(uid string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	at, ok := v.gone[uid]
	return ok && time.Since(at) <= DeletedTTL
}

func (v *View) deleted(uid string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	// Pruned now and then, not on every deletion: many pods may go at
	// once.
	if now.Sub(v.gonePruned) > DeletedTTL/4 {
		for k, at := range v.gone {
			if now.Sub(at) > DeletedTTL {
				delete(v.gone, k)
			}
		}
		v.gonePruned = now
	}
	v.gone[uid] = now
}

// NodeExists reports whether the node named name exists.
func (v *View) NodeExists(name string) bool {
	_, ok, _ := v.nodes.GetStore().GetByKey(name)
	return ok
}

// NamespaceLabels returns a namespace's labels. A namespace not (yet)
// known has the one label the API server gives every namespace.
func (v *View) NamespaceLabels(ns string) map[string]string {
	if obj, ok, _ := v.namespaces.GetStore().GetByKey(ns); ok {
		if l := obj.(*corev1.Namespace).Labels; l != nil {
			return l
		}
	}
	return map[string]string{corev1.LabelMetadataName: ns}
}
