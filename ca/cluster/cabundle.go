package cluster

import (
	"bytes"
	"context"
	"fmt"

	"github.com/hashicorp/go-hclog"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// CABundleKeeper keeps the caBundle of Signet's webhook configurations
// equal to the trust bundle's roots, which sign the webhook's serving
// certificate. Only the leader runs it.
type CABundleKeeper struct {
	Client kubernetes.Interface
	// Name of the MutatingWebhookConfiguration and the
	// ValidatingWebhookConfiguration.
	Name string
	Log  hclog.Logger
}

// Run updates the configurations now, when the roots change, when one of
// them is created or changed (applied after the CA started, or edited:
// until its caBundle is set, the API server cannot call the webhook and
// refuses what it guards), and every minute, until ctx ends.
func (k *CABundleKeeper) Run(ctx context.Context, roots RootsFunc) {
	nudge := make(chan struct{}, 1)
	poke := func() {
		select {
		case nudge <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }}
	// Only the two objects: the CA may list and watch them by name.
	f := informers.NewSharedInformerFactoryWithOptions(k.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.Name).String()
	}))
	adm := f.Admissionregistration().V1()
	adm.MutatingWebhookConfigurations().Informer().AddEventHandler(h)
	adm.ValidatingWebhookConfigurations().Informer().AddEventHandler(h)
	f.Start(ctx.Done())
	defer f.Shutdown()
	FollowRoots(ctx, roots, nudge, k.update, func(err error) {
		k.Log.Warn("updating the webhook caBundle failed", "name", k.Name, "error", err)
	})
}

// setCABundle points every client configuration at ca and reports whether
// one changed.
func setCABundle(ca []byte, configs ...*admissionregv1.WebhookClientConfig) bool {
	changed := false
	for _, c := range configs {
		if !bytes.Equal(c.CABundle, ca) {
			c.CABundle, changed = ca, true
		}
	}
	return changed
}

func (k *CABundleKeeper) update(ctx context.Context, ca []byte) error {
	adm := k.Client.AdmissionregistrationV1()
	m, err := adm.MutatingWebhookConfigurations().Get(ctx, k.Name, metav1.GetOptions{})
	if err == nil {
		var cfgs []*admissionregv1.WebhookClientConfig
		for i := range m.Webhooks {
			cfgs = append(cfgs, &m.Webhooks[i].ClientConfig)
		}
		if setCABundle(ca, cfgs...) {
			_, err = adm.MutatingWebhookConfigurations().Update(ctx, m, metav1.UpdateOptions{})
		}
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("mutating: %w", err)
	}
	v, err := adm.ValidatingWebhookConfigurations().Get(ctx, k.Name, metav1.GetOptions{})
	if err == nil {
		var cfgs []*admissionregv1.WebhookClientConfig
		for i := range v.Webhooks {
			cfgs = append(cfgs, &v.Webhooks[i].ClientConfig)
		}
		if setCABundle(ca, cfgs...) {
			_, err = adm.ValidatingWebhookConfigurations().Update(ctx, v, metav1.UpdateOptions{})
		}
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("validating: %w", err)
	}
	return nil
}
