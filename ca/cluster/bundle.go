package cluster

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// BundleKey is the ConfigMap key of the trust bundle's X.509 roots (PEM).
const BundleKey = "bundle.pem"

// BundlePublisher keeps a ConfigMap holding the trust bundle's roots, so
// that agents (and anything else) can mount it for their first start.
type BundlePublisher struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	Log       hclog.Logger
}

// Run publishes the roots now, each time they change, and every minute
// (repairing edits by others), until ctx ends. Only the leader runs it.
func (p *BundlePublisher) Run(ctx context.Context, roots RootsFunc) {
	FollowRoots(ctx, roots, nil, p.publish, func(err error) {
		p.Log.Warn("publishing the trust bundle failed; retrying", "configmap", p.Namespace+"/"+p.Name, "error", err)
	})
}

// RootsFunc returns the trust bundle's roots and a channel closed when
// they change (authority.Authority's Bundle, narrowed).
type RootsFunc func() ([]*x509.Certificate, <-chan struct{})

// FollowRoots calls apply with the roots as PEM now, when they change,
// when nudged, and every minute; a failure is reported and tried again
// after 5 s.
func FollowRoots(ctx context.Context, roots RootsFunc, nudge <-chan struct{}, apply func(context.Context, []byte) error, report func(error)) {
	for {
		rs, changed := roots()
		var pemRoots []byte
		for _, r := range rs {
			pemRoots = append(pemRoots, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
		}
		wait, retry := changed, time.Minute
		if err := apply(ctx, pemRoots); err != nil && ctx.Err() == nil {
			report(err)
			wait, retry = nil, 5*time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
		case <-nudge:
		case <-time.After(retry):
		}
	}
}

func (p *BundlePublisher) publish(ctx context.Context, buf []byte) error {
	cms := p.Client.CoreV1().ConfigMaps(p.Namespace)
	cm, err := cms.Get(ctx, p.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: map[string]string{"app.kubernetes.io/name": "signet"}},
			Data:       map[string]string{BundleKey: string(buf)},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if cm.Data[BundleKey] == string(buf) {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[BundleKey] = string(buf)
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
