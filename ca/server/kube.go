package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/k8s"
	"github.com/signet-id/signet/ca/nodeattest"
)

// kubeMode is what Kubernetes mode adds to the CA.
type kubeMode struct {
	psat *nodeattest.PSAT
	pods *k8s.Identities
	// evictions are the agent pods operators evicted, shared by the
	// replicas.
	evictions *k8s.Evictions
	keys      *k8s.SecretKeyStore
	leader    *k8s.Leader
	client    kubernetes.Interface
	bundle    *k8s.BundlePublisher
	// caBundle, with a webhook, keeps the webhook configurations current.
	caBundle *k8s.CABundleKeeper
	// auth is set once the authority exists (it needs the key store
	// first); the leader publishes its bundle.
	auth *authority.Authority
}

const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func startKube(ctx context.Context, cfg Config, log hclog.Logger) (*kubeMode, error) {
	kc := cfg.Kube
	if kc.ClusterName == "" {
		return nil, errors.New("kubernetes mode needs --cluster-name")
	}
	if len(kc.AgentServiceAccounts) == 0 {
		return nil, errors.New("kubernetes mode needs at least one --agent-service-account NAMESPACE/NAME")
	}
	for _, sa := range kc.AgentServiceAccounts {
		if ns, name, ok := strings.Cut(sa, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return nil, errors.New("--agent-service-account " + sa + ": want NAMESPACE/NAME")
		}
	}
	ns := kc.Namespace
	if ns == "" {
		if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil {
			ns = strings.TrimSpace(string(b))
		}
	}
	if ns == "" {
		ns = "signet"
	}
	secret, lease, bundleCM := kc.SecretName, kc.LeaseName, kc.BundleConfigMap
	if bundleCM == "" {
		bundleCM = "signet-bundle"
	}
	if secret == "" {
		secret = "signet-ca-keys"
	}
	if lease == "" {
		lease = "signet-ca"
	}
	k8s.RouteKlog(log.Named("client-go"))
	clients, err := k8s.NewClients(kc.Kubeconfig, kc.InCluster)
	if err != nil {
		return nil, err
	}
	pods, err := k8s.New(k8s.Config{
		Client: clients.Client, Dynamic: clients.Dynamic, TrustDomain: cfg.TrustDomain,
		AgentServiceAccounts: kc.AgentServiceAccounts, Log: log,
	})
	if err != nil {
		return nil, err
	}
	if err := pods.Start(ctx); err != nil {
		return nil, err
	}
	log.Info("watching pods and IdentityRules", "cluster", kc.ClusterName, "namespace", ns)
	evictions := &k8s.Evictions{Client: clients.Client, Namespace: ns, Name: lease + "-evictions"}
	if err := evictions.Start(ctx); err != nil {
		return nil, err
	}
	m := &kubeMode{
		client: clients.Client,
		psat:   &nodeattest.PSAT{Client: clients.Client, Audience: kc.Audience, ServiceAccounts: kc.AgentServiceAccounts},
		pods:   pods, evictions: evictions,
		keys: &k8s.SecretKeyStore{Client: clients.Client, Namespace: ns, Name: secret},
	}
	if w := kc.Webhook; w != nil {
		name := w.ConfigurationName
		if name == "" {
			name = "signet"
		}
		m.caBundle = &k8s.CABundleKeeper{Client: clients.Client, Name: name, Log: log}
	}
	m.bundle = &k8s.BundlePublisher{Client: clients.Client, Namespace: ns, Name: bundleCM, Log: log}
	m.leader = &k8s.Leader{Client: clients.Client, Namespace: ns, Name: lease, Identity: kc.Identity, Log: log,
		OnStart: func(ctx context.Context) {
			roots := func() ([]*x509.Certificate, <-chan struct{}) {
				b, changed := m.auth.Bundle()
				return b.X509Roots, changed
			}
			go m.bundle.Run(ctx, roots)
			if m.caBundle != nil {
				go m.caBundle.Run(ctx, roots)
			}
			pods.RunStatus(ctx)
		}}
	return m, nil
}

// isClusterAdmin asks the API server whether user may do everything, as
// the cluster-admin role allows.
func (m *kubeMode) isClusterAdmin(user authnv1.UserInfo) (bool, error) {
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range user.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sar, err := m.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: user.Username, Groups: user.Groups, UID: user.UID, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{Verb: "*", Group: "*", Resource: "*"},
	}}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return sar.Status.Allowed, nil
}

// agentPods is the cluster's view of agent pods for the API: the pod
// informer, and the evictions all replicas share.
type agentPods struct {
	*k8s.Identities
	evictions *k8s.Evictions
}

func (a *agentPods) AgentEvicted(uid string) (string, bool) {
	ev, ok := a.evictions.Evicted(uid)
	if !ok {
		return "", false
	}
	return fmt.Sprintf("%s (at %s)", ev.Reason, ev.At.Format(time.RFC3339)), true
}

func (a *agentPods) EvictAgentPods(ctx context.Context, node, agentID, reason string) ([]string, error) {
	uids := a.AgentPodsOn(node)
	if len(uids) == 0 {
		return nil, nil
	}
	evs := map[string]k8s.Eviction{}
	for _, uid := range uids {
		evs[uid] = k8s.Eviction{Agent: agentID, Node: node, At: time.Now().UTC(), Reason: reason}
	}
	if err := a.evictions.Evict(ctx, evs, a.PodExists); err != nil {
		return nil, err
	}
	// In force at this replica before the operator hears back.
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, uid := range uids {
		if err := a.evictions.WaitEvicted(wait, uid); err != nil {
			return nil, fmt.Errorf("eviction of pod %s recorded, not yet seen: %w", uid, err)
		}
	}
	return uids, nil
}
