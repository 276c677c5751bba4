package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/signet-id/signet/ca/store"
)

// secretKey is the Secret data key that holds the CA's keys.
const secretKey = "ca-keys.json"

// SecretKeyStore keeps the CA's keys and certificates in one Secret, shared
// by every CA replica. Writes are conditional on the Secret's
// resourceVersion, so two replicas never overwrite each other's keys: the
// loser gets store.ErrConflict, reloads and tries again.
type SecretKeyStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string

	mu sync.Mutex
	rv string // resourceVersion of the last read or write; "" = absent
}

type secretKeys struct {
	BundleSequence uint64        `json:"bundleSequence"`
	Keys           []store.CAKey `json:"keys"`
}

// LoadCAKeys implements authority.KeyStore.
func (s *SecretKeyStore) LoadCAKeys(ctx context.Context) ([]store.CAKey, uint64, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s.mu.Lock()
		s.rv = ""
		s.mu.Unlock()
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cluster: read secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	var sk secretKeys
	if raw := sec.Data[secretKey]; len(raw) > 0 {
		if err := json.Unmarshal(raw, &sk); err != nil {
			return nil, 0, fmt.Errorf("cluster: secret %s/%s: %s is not valid: %w", s.Namespace, s.Name, secretKey, err)
		}
	}
	s.mu.Lock()
	s.rv = sec.ResourceVersion
	s.mu.Unlock()
	return sk.Keys, sk.BundleSequence, nil
}

// SaveCAKeys implements authority.KeyStore.
func (s *SecretKeyStore) SaveCAKeys(ctx context.Context, keys []store.CAKey, seq uint64) error {
	raw, err := json.Marshal(secretKeys{BundleSequence: seq, Keys: keys})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, ResourceVersion: s.rv,
			Labels: map[string]string{"app.kubernetes.io/name": "signet", "app.kubernetes.io/component": "ca"}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{secretKey: raw},
	}
	var out *corev1.Secret
	if s.rv == "" {
		out, err = s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, sec, metav1.CreateOptions{})
	} else {
		out, err = s.Client.CoreV1().Secrets(s.Namespace).Update(ctx, sec, metav1.UpdateOptions{})
	}
	if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
		return fmt.Errorf("cluster: secret %s/%s changed under us: %w", s.Namespace, s.Name, store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("cluster: write secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	s.rv = out.ResourceVersion
	return nil
}
