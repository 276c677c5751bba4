package clusterview

import (
	"sync"

	"github.com/hashicorp/go-hclog"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// Objects is the objects of one custom resource that pass a check, each
// read as a T: the view's informer keeps them, Load and every event read
// them all again, and readers take the current list and a channel closed
// at its next change (Sync streams wake on it).
type Objects[T any] struct {
	informer cache.SharedIndexInformer
	read     func(*unstructured.Unstructured) (T, error)
	sort     func([]T)
	what     string
	log      hclog.Logger

	mu      sync.Mutex
	valid   []T
	changed chan struct{}
}

// NewObjects registers the informer of gvr with the view; read turns an
// object into a T or says why it is ignored (logged as what), and sort
// orders the list. The view's Start runs the informer; call Load then.
func NewObjects[T any](view *View, gvr schema.GroupVersionResource, what string, read func(*unstructured.Unstructured) (T, error), sort func([]T), log hclog.Logger) (*Objects[T], error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	o := &Objects[T]{informer: view.Resource(gvr), read: read, sort: sort, what: what, log: log, changed: make(chan struct{})}
	if _, err := o.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { o.Load() }, UpdateFunc: func(any, any) { o.Load() }, DeleteFunc: func(any) { o.Load() },
	}); err != nil {
		return nil, err
	}
	return o, nil
}

// Load reads every object again (after the view's first sync, an event,
// or a change of what read depends on).
func (o *Objects[T]) Load() {
	var out []T
	for _, obj := range o.informer.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		v, err := o.read(u)
		if err != nil {
			name := u.GetName()
			if ns := u.GetNamespace(); ns != "" {
				name = ns + "/" + name
			}
			o.log.Warn(o.what+" ignored", "name", name, "error", err)
			continue
		}
		out = append(out, v)
	}
	o.sort(out)
	o.mu.Lock()
	o.valid = out
	close(o.changed)
	o.changed = make(chan struct{})
	o.mu.Unlock()
}

// List returns the objects that passed, in order.
func (o *Objects[T]) List() []T {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.valid
}

// Changed returns a channel closed at the next change of List.
func (o *Objects[T]) Changed() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}
