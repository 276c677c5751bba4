// Package clustermode is signet-ca's Kubernetes mode, assembled: it
// connects to the API server, builds the shared view of the cluster and
// the parts that read it (pod identities, AccessPolicies, agent pods), the
// keys Secret and the leader Lease, and serves the admission webhook. It
// is kept apart from ca/server so that programs without Kubernetes mode
// (signet dev) link no Kubernetes client; signet-ca sets Build as its
// server.Config.Cluster.
package clustermode

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/signet-id/signet/ca/accesspolicy"
	"github.com/signet-id/signet/ca/agentpod"
	"github.com/signet-id/signet/ca/api"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/cluster"
	"github.com/signet-id/signet/ca/clusterfederation"
	"github.com/signet-id/signet/ca/clusterrevocation"
	"github.com/signet-id/signet/ca/clustertraffic"
	"github.com/signet-id/signet/ca/clusterview"
	"github.com/signet-id/signet/ca/federation"
	"github.com/signet-id/signet/ca/nodeattest"
	"github.com/signet-id/signet/ca/podcert"
	"github.com/signet-id/signet/ca/podidentity"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/ca/webhook"
	"github.com/signet-id/signet/internal/signetid"
	"github.com/signet-id/signet/internal/tasks"
)

// kubeMode is what Kubernetes mode adds to the CA.
type kubeMode struct {
	cfg  server.Config
	log  hclog.Logger
	psat *nodeattest.PSAT
	// view is the cluster's pods, namespaces and nodes, shared by the
	// identities, the policies and the agent pods.
	view      *clusterview.View
	pods      *podidentity.Identities
	policies  *accesspolicy.Set
	revs      *clusterrevocation.Set
	agentPods *agentpod.Pods
	keys      *cluster.SecretKeyStore
	acks      *cluster.LeaseAcks
	traffic   clusterTraffic
	leader    *cluster.Leader
	client    kubernetes.Interface
	requests  prometheus.Collector
	reach     *cluster.Reachability
	bundle    *cluster.BundlePublisher
	// caBundle, with a webhook, keeps the webhook configurations current.
	caBundle *cluster.CABundleKeeper
	// podCerts, if configured, signs PodCertificateRequests (the leader),
	// through the API's configuration.
	podCerts *podcert.Signer
	api      *api.Config
	// feds are the FederatedTrustDomain objects; fetcher, made in
	// Configure, fetches their bundles (the leader).
	feds    *clusterfederation.Store
	fetcher *federation.Fetcher
}

// Build connects to the cluster, starts the shared informers and waits for
// their first list; it is a server.ClusterBuilder. The informers stop when
// ctx ends.
func Build(ctx context.Context, cfg server.Config, log hclog.Logger) (server.Cluster, error) {
	kc := cfg.Kube
	cluster.RouteKlog(log.Named("client-go"))
	clients, err := cluster.NewClients(kc.Kubeconfig, kc.InCluster)
	if err != nil {
		return nil, err
	}
	view, err := clusterview.New(clients.Client, clients.Dynamic)
	if err != nil {
		return nil, err
	}
	pods, err := podidentity.New(podidentity.Config{View: view, Dynamic: clients.Dynamic, TrustDomain: cfg.TrustDomain, Log: log})
	if err != nil {
		return nil, err
	}
	policies, err := accesspolicy.NewSet(view, cfg.TrustDomain, log)
	if err != nil {
		return nil, err
	}
	revs, err := clusterrevocation.NewSet(view, clients.Dynamic, log)
	if err != nil {
		return nil, err
	}
	feds, err := clusterfederation.NewStore(view, clients.Dynamic, log)
	if err != nil {
		return nil, err
	}
	if err := view.Start(ctx); err != nil {
		return nil, err
	}
	pods.Load()
	policies.Load()
	revs.Load()
	feds.Load()
	log.Info("watching pods and IdentityRules", "cluster", kc.ClusterName, "namespace", kc.Namespace)
	evictions := &agentpod.Evictions{Client: clients.Client, Namespace: kc.Namespace, Name: kc.LeaseName + "-evictions"}
	if err := evictions.Start(ctx); err != nil {
		return nil, err
	}
	acks := &cluster.LeaseAcks{Client: clients.Client, Namespace: kc.Namespace}
	if err := acks.Start(ctx); err != nil {
		return nil, err
	}
	m := &kubeMode{
		cfg:       cfg,
		log:       log,
		client:    clients.Client,
		requests:  clients.Requests,
		reach:     clients.Reachability,
		psat:      &nodeattest.PSAT{Client: clients.Client, Audience: kc.Audience, ServiceAccounts: kc.AgentServiceAccounts},
		view:      view,
		pods:      pods,
		policies:  policies,
		revs:      revs,
		feds:      feds,
		agentPods: agentpod.New(view, kc.AgentServiceAccounts, evictions),
		acks:      acks,
		keys:      &cluster.SecretKeyStore{Client: clients.Client, Namespace: kc.Namespace, Name: kc.SecretName},
		bundle:    &cluster.BundlePublisher{Client: clients.Client, Namespace: kc.Namespace, Name: kc.BundleConfigMap, Log: log},
		leader:    &cluster.Leader{Client: clients.Client, Namespace: kc.Namespace, Name: kc.LeaseName, Identity: kc.Identity, Log: log},
	}
	if w := kc.Webhook; w != nil {
		m.caBundle = &cluster.CABundleKeeper{Client: clients.Client, Name: w.ConfigurationName, Log: log}
	}
	m.traffic = clusterTraffic{
		Shards:   &clustertraffic.Shards{Client: clients.Client, Namespace: kc.Namespace, Replica: kc.Identity},
		Profiles: &clustertraffic.Profiles{Client: clients.Client, Dynamic: clients.Dynamic, Namespace: kc.Namespace},
		leader:   m.leader,
	}
	return m, nil
}

// KeyStore implements server.Cluster: the keys Secret.
func (m *kubeMode) KeyStore() authority.KeyStore { return m.keys }

// Traffic implements server.Cluster.
func (m *kubeMode) Traffic() server.ClusterTraffic { return m.traffic }

// clusterTraffic is the detector's state in the cluster: the shards and
// the profiles, and the leader election.
type clusterTraffic struct {
	*clustertraffic.Shards
	*clustertraffic.Profiles
	leader *cluster.Leader
}

func (c clusterTraffic) IsLeader() bool { return c.leader.IsLeader() }

// IsLeader implements server.Cluster.
func (m *kubeMode) IsLeader() bool { return m.leader.IsLeader() }

// Ready is server.Cluster's: the API server answers.
func (m *kubeMode) Ready() error { return m.reach.Err() }

// Collectors is server.Cluster's.
func (m *kubeMode) Collectors() []prometheus.Collector { return []prometheus.Collector{m.requests} }

// Configure implements server.Cluster.
func (m *kubeMode) Configure(c *api.Config) {
	c.PSAT, c.ClusterName = psatAttestor{m.psat}, m.cfg.Kube.ClusterName
	c.Pods, c.AgentPods, c.Policies, c.Revocations, c.Acks = m.pods, m.agentPods, m.policies, m.revs, m.acks
	m.api = c
	m.fetcher = federation.NewFetcher(m.feds, m.log.Named("federation"), c.Audit)
	c.Federations = m.fetcher
	if pc := m.cfg.Kube.PodCertificates; pc != nil {
		m.podCerts = podcert.New(podcert.Config{Client: m.client, SignerName: pc.SignerName, Identities: m.pods,
			Sign: c.SignPodCertificate, Lifetime: m.cfg.X509TTL, RefreshAfter: pc.RefreshAfter, Audit: c.Audit, Log: m.log.Named("podcert")})
	}
}

// Start implements server.Cluster: leader election, and the webhook if
// configured.
func (m *kubeMode) Start(g *tasks.Group, auth *authority.Authority) error {
	if w := m.cfg.Kube.Webhook; w != nil {
		getCert, err := server.ServingCertificate(auth, signetid.Webhook(m.cfg.TrustDomain), w.DNSNames)
		if err != nil {
			return fmt.Errorf("webhook certificate: %w", err)
		}
		hook := webhook.New(webhook.Config{TrustDomain: m.cfg.TrustDomain, SocketDir: w.SocketDir,
			SocketVolume: w.SocketVolume, CSIDriver: w.CSIDriver, ProtectedDirs: []string{w.CSIDir}, AgentServiceAccounts: m.cfg.Kube.AgentServiceAccounts,
			AgentDaemonSet: w.AgentDaemonSet, AgentPodCreators: w.AgentPodCreators, NamespaceLabels: m.view.NamespaceLabels, IsClusterAdmin: m.isClusterAdmin})
		hookSrv := &http.Server{Handler: hook, ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:  m.log.Named("webhook").StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug}),
			TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert}}
		hookLis, err := net.Listen("tcp", w.ListenAddr)
		if err != nil {
			return fmt.Errorf("webhook listen: %w", err)
		}
		g.OnClose(func() { hookLis.Close() })
		g.Add("webhook", func(context.Context) error { return hookSrv.ServeTLS(hookLis, "", "") }, func() { hookSrv.Close() })
		m.log.Info("admission webhook listening", "addr", hookLis.Addr().String())
	}
	// Every replica hands its agents the bundles the objects hold.
	g.Add("federated trust domains", func(ctx context.Context) error {
		for {
			changed := m.feds.Changed()
			m.fetcher.Reload(ctx)
			m.fetcher.Kick()
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			}
		}
	}, nil)
	g.Add("leader election", func(ctx context.Context) error { m.lead(ctx, auth); return nil }, nil)
	return nil
}

// lead takes part in leader election until ctx ends; while this replica
// leads, it publishes auth's bundle (ConfigMap, webhook caBundle) and
// writes the IdentityRules' status.
func (m *kubeMode) lead(ctx context.Context, auth *authority.Authority) {
	m.leader.Run(ctx, func(ctx context.Context) {
		roots := func() ([]*x509.Certificate, <-chan struct{}) {
			b, changed := auth.Bundle()
			return b.X509Roots, changed
		}
		go m.bundle.Run(ctx, roots)
		if m.caBundle != nil {
			go m.caBundle.Run(ctx, roots)
		}
		go m.revs.RunPruning(ctx, time.Hour, m.log)
		go m.fetcher.Run(ctx)
		if m.podCerts != nil {
			go m.podCerts.PublishBundle(ctx, m.cfg.TrustDomain.Name(), m.cfg.Kube.Namespace, roots)
			go m.podCerts.Run(ctx)
		}
		m.pods.RunStatus(ctx)
	})
}

// psatAttestor gives the API the pod a verified agent token is bound to.
type psatAttestor struct{ *nodeattest.PSAT }

func (p psatAttestor) Attest(ctx context.Context, token, node string) (api.AgentPod, error) {
	a, err := p.PSAT.Attest(ctx, token, node)
	return api.AgentPod{Namespace: a.Namespace, Name: a.PodName, UID: a.PodUID}, err
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
