package k8s

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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

// Run updates the configurations now, when the roots change, and every
// minute (configurations applied later, or edited), until ctx ends.
func (k *CABundleKeeper) Run(ctx context.Context, roots func() ([]*x509.Certificate, <-chan struct{})) {
	for {
		rs, changed := roots()
		var pemRoots []byte
		for _, r := range rs {
			pemRoots = append(pemRoots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
		}
		if err := k.update(ctx, pemRoots); err != nil && ctx.Err() == nil {
			k.Log.Warn("updating the webhook caBundle failed", "name", k.Name, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-time.After(time.Minute):
		}
	}
}

func (k *CABundleKeeper) update(ctx context.Context, ca []byte) error {
	adm := k.Client.AdmissionregistrationV1()
	m, err := adm.MutatingWebhookConfigurations().Get(ctx, k.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("mutating: %w", err)
	default:
		changed := false
		for i := range m.Webhooks {
			if !bytes.Equal(m.Webhooks[i].ClientConfig.CABundle, ca) {
				m.Webhooks[i].ClientConfig.CABundle, changed = ca, true
			}
		}
		if changed {
			if _, err := adm.MutatingWebhookConfigurations().Update(ctx, m, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("mutating: %w", err)
			}
		}
	}
	v, err := adm.ValidatingWebhookConfigurations().Get(ctx, k.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("validating: %w", err)
	}
	changed := false
	for i := range v.Webhooks {
		if !bytes.Equal(v.Webhooks[i].ClientConfig.CABundle, ca) {
			v.Webhooks[i].ClientConfig.CABundle, changed = ca, true
		}
	}
	if changed {
		if _, err := adm.ValidatingWebhookConfigurations().Update(ctx, v, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("validating: %w", err)
		}
	}
	return nil
}
