package agentpod

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// Evictions are the agent pods that an operator evicted, kept in one
// ConfigMap that every CA replica watches: an eviction made at one
// replica holds at all of them, and no replica's renewal undoes it. Each
// key is an evicted pod's UID; a pod that is gone needs no entry (its
// agent's SVIDs are refused anyway), so entries of pods that no longer
// exist are dropped on the next eviction.
type Evictions struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string

	store cache.Store
}

// Eviction is one evicted agent pod.
type Eviction struct {
	Agent  string    `json:"agent"`
	Node   string    `json:"node"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// Start watches the ConfigMap until ctx ends; it returns once the first
// list is in.
func (e *Evictions) Start(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(e.Client, 0, informers.WithNamespace(e.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", e.Name).String()
		}))
	inf := f.Core().V1().ConfigMaps().Informer()
	e.store = inf.GetStore()
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("agentpod: evictions ConfigMap %s/%s: not synced", e.Namespace, e.Name)
	}
	return nil
}

// Evicted reports whether the agent pod podUID was evicted.
func (e *Evictions) Evicted(podUID string) (Eviction, bool) {
	obj, ok, _ := e.store.GetByKey(e.Namespace + "/" + e.Name)
	if !ok {
		return Eviction{}, false
	}
	raw, ok := obj.(*corev1.ConfigMap).Data[podUID]
	if !ok {
		return Eviction{}, false
	}
	var ev Eviction
	if err := json.Unmarshal([]byte(raw), &ev); err != nil {
		// An entry the CA did not write: evicted all the same.
		return Eviction{Reason: "unreadable eviction record"}, true
	}
	return ev, true
}

// Evict records the eviction of the agent pods (by UID), and drops the
// entries of pods for which exists reports false.
func (e *Evictions) Evict(ctx context.Context, pods map[string]Eviction, exists func(podUID string) bool) error {
	cms := e.Client.CoreV1().ConfigMaps(e.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, e.Name, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		if create {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: e.Name, Namespace: e.Namespace,
				Labels: map[string]string{"app.kubernetes.io/name": "signet"}}}
		} else if err != nil {
			return err
		}
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		for uid := range cm.Data {
			if exists != nil && !exists(uid) {
				delete(cm.Data, uid)
			}
		}
		for uid, ev := range pods {
			raw, err := json.Marshal(ev)
			if err != nil {
				return err
			}
			cm.Data[uid] = string(raw)
		}
		if create {
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		} else {
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		}
		return err
	})
}

// WaitEvicted waits until this replica's view holds the eviction of
// podUID (or ctx ends), so that an operator's call returns once the
// eviction is in force here.
func (e *Evictions) WaitEvicted(ctx context.Context, podUID string) error {
	for {
		if _, ok := e.Evicted(podUID); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
