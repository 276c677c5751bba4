package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/ca/api"
	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/federation"
	"github.com/signet-id/signet/ca/oidc"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/ca/traffic"
	"github.com/signet-id/signet/internal/signetid"
	"github.com/signet-id/signet/internal/tasks"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Defaults of the Config fields that have one.
const (
	DefaultRootTTL         = 365 * 24 * time.Hour
	DefaultIntermediateTTL = 24 * time.Hour
	DefaultJWTKeyTTL       = 24 * time.Hour
	DefaultAgentTTL        = time.Hour
	DefaultX509TTL         = time.Hour
	DefaultJWTTTL          = 5 * time.Minute
	DefaultKeyType         = "ec-p256"
	DefaultRotateInterval  = 10 * time.Second
	DefaultMinSVIDTTL      = time.Minute
	// DefaultRootActivationTimeout bounds how long a due root activation
	// waits for agents to acknowledge the root.
	DefaultRootActivationTimeout = 24 * time.Hour

	DefaultNamespace       = "signet"
	DefaultSecretName      = "signet-ca-keys"
	DefaultLeaseName       = "signet-ca"
	DefaultBundleConfigMap = "signet-bundle"
	DefaultSocketDir       = "/run/signet"
	DefaultCSIDir          = "/run/signet-csi"
	DefaultAgentDaemonSet  = "signet-agent"
	DefaultWebhookConfig   = "signet"
	// DefaultPodCertificateSigner is the signer name of pod certificates.
	DefaultPodCertificateSigner = "signet.dev/x509-svid"
)

// Config is everything signet-ca needs; cmd/signet-ca fills it from flags
// and the config file. Validate fills in the defaults the fields name and
// checks the rest; Run calls it.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	// DataDir holds the database and, by default, the admin socket and the
	// audit log.
	DataDir string
	// Datastore is where the CA keeps its state: a PostgreSQL URL
	// (postgres://…), which several replicas may share, or the path of a
	// SQLite file. If empty, DataDir/signet.db.
	Datastore string
	// ListenAddr serves the agent API (mTLS).
	ListenAddr string
	// AdminSocket is the admin API's Unix socket. If empty, DataDir/admin.sock.
	AdminSocket string
	// AdminListenAddr, if set, serves the admin API over mTLS to AdminIDs.
	AdminListenAddr string
	AdminIDs        []spiffeid.ID
	// HealthAddr serves /healthz and /readyz (and /metrics when
	// MetricsAddr is empty).
	HealthAddr  string
	MetricsAddr string
	// PprofAddr, if set, serves Go's /debug/pprof/ profiles; it must be a
	// loopback address (the profiles show the process's memory).
	PprofAddr string
	// AuditLog is the audit file; "-" is stderr. If empty, DataDir/audit.log.
	AuditLog string
	// AuditSinks are external systems that get every audit record written
	// from when they are configured, through a spool of their own under
	// DataDir/audit-spool (at most AuditSpoolMax bytes each; if zero,
	// 256 MiB).
	AuditSinks    []AuditSink
	AuditSpoolMax int64
	// TrafficLearn is how long the traffic detector only learns a new
	// server's traffic before it reports anomalies; 0: not at all.
	TrafficLearn time.Duration
	// NoTrafficDetector turns the traffic detector off: services' traffic
	// counts are checked and counted, and go no further.
	NoTrafficDetector bool
	// RootTTL, IntermediateTTL, JWTKeyTTL, AgentTTL, X509TTL and JWTTTL
	// are the lifetimes of what the CA makes; each has a Default above.
	// An intermediate lives at most a sixth of a root, and X.509-SVIDs
	// (agents' too) at most half an intermediate.
	RootTTL         time.Duration
	IntermediateTTL time.Duration
	JWTKeyTTL       time.Duration
	AgentTTL        time.Duration
	X509TTL         time.Duration
	JWTTTL          time.Duration
	// MinSVIDTTL is the shortest SVID lifetime the CA accepts, in its own
	// settings and in entries: an SVID that lives seconds has its agent
	// re-mint it every few seconds. At least one second; if zero, one
	// minute. IdentityRules have a floor of one minute of their own.
	MinSVIDTTL time.Duration
	// KeyType of the CA's keys: ec-p256 (default), ec-p384, rsa-2048,
	// rsa-3072 or rsa-4096.
	KeyType string
	// JWTKeyType of the JWT-SVID signing keys, from the same set:
	// ec-p256 (ES256, default), ec-p384 (ES384), rsa-* (RS256, which
	// Microsoft Entra ID requires). A change takes effect from the next
	// JWT key, prepared at once and activated on the usual schedule.
	JWTKeyType string
	// KMS is the go.step.sm/crypto/kms URI of an external KMS holding the
	// CA's keys (awskms:region=...), which OpenKMS opens
	// (ca/authority/awskms.Open); empty keeps them in the store.
	KMS     string
	OpenKMS authority.KMSOpener
	// RotateInterval is how often keys are checked for rotation. If zero,
	// ten seconds.
	RotateInterval time.Duration
	// RootActivationTimeout bounds how long a due root activation waits
	// for every live agent to acknowledge the root. If zero, 24 hours.
	RootActivationTimeout time.Duration
	// OIDC, if set, gives JWT-SVIDs an issuer and may publish their keys
	// for relying parties outside SPIFFE.
	OIDC *OIDCConfig
	// Federation, if set, serves this trust domain's bundle at a SPIFFE
	// bundle endpoint. The CA fetches federated trust domains' bundles
	// whether or not it is set.
	Federation *FederationConfig
	// Log receives the CA's log. If nil, it is discarded.
	Log hclog.Logger
	// ReopenLogs, when it receives, reopens the audit log (after a
	// rotation; signet-ca sends on SIGHUP).
	ReopenLogs <-chan struct{}
	// Ready, if set, is called once every listener is up, with the agent
	// API's address.
	Ready func(agentAddr string)
	// Kube, if set, runs the CA in Kubernetes mode, which Cluster builds.
	Kube    *KubeConfig
	Cluster ClusterBuilder
}

// Cluster is Kubernetes mode as the CA's assembly uses it
// (ca/clustermode builds it). It is kept out of this package so that a
// program without it (signet dev) links no Kubernetes client.
type Cluster interface {
	// KeyStore keeps the CA's keys, shared by the replicas.
	KeyStore() authority.KeyStore
	// IsLeader says whether this replica rotates the keys.
	IsLeader() bool
	// Configure gives the APIs what Kubernetes mode adds: PSAT
	// attestation, pod identities, agent pods, AccessPolicies.
	Configure(*api.Config)
	// Start adds Kubernetes mode's tasks (leader election and what the
	// leader does with auth's bundle; the admission webhook) to g.
	Start(g *tasks.Group, auth *authority.Authority) error
	// Traffic is where the traffic detector keeps its state, shared by
	// the replicas (ca/clustertraffic).
	Traffic() ClusterTraffic
	// Collectors are Kubernetes mode's metrics (the requests sent to the
	// API server).
	Collectors() []prometheus.Collector
	// Ready is why the replica is not ready in the cluster (the API server
	// fails every request), or nil.
	Ready() error
}

// ClusterTraffic is the traffic detector's state in the cluster: the
// replicas hand their traffic counts to the leader (Publish; the leader's
// Start callback gets them), and the leader keeps the profiles and
// records anomalies.
type ClusterTraffic interface {
	IsLeader() bool
	Start(ctx context.Context, onShard func([]*typesv1.TrafficCount)) error
	// Current returns the counts every replica handed the leader (this
	// one's too), as they are now, and marks them taken (for a new
	// leader, which may have handed them to a leader that lost the lead
	// before it learned them).
	Current() []*typesv1.TrafficCount
	Publish(ctx context.Context, counts []*typesv1.TrafficCount) (dropped int, err error)
	Save(ctx context.Context, p *traffic.Profile) error
	LoadAll(ctx context.Context) ([]*traffic.Profile, error)
	Event(ctx context.Context, a traffic.Anomaly) error
}

// ClusterBuilder connects Kubernetes mode for cfg.Kube; what it starts
// stops when ctx ends.
type ClusterBuilder func(ctx context.Context, cfg Config, log hclog.Logger) (Cluster, error)

// AuditSink is one external audit sink: an HTTPS webhook
// (https://...) or syslog (tcp://host:port, tls://host:port).
type AuditSink struct {
	URL string
	// CAFile holds the PEM roots that verify the sink's server
	// certificate; if empty, the system's. CAFile and PresentSVID apply
	// to TLS sinks only (not tcp://).
	CAFile string
	// PresentSVID makes the CA present its own SVID
	// (spiffe://<td>/signet/ca) as a client certificate (webhook, and
	// syslog over TLS).
	PresentSVID bool
}

// OIDCConfig makes the CA an OpenID Connect issuer of its JWT-SVIDs.
type OIDCConfig struct {
	// Issuer is every JWT-SVID's iss, an https URL. Required.
	Issuer string
	// ListenAddr, if set, serves the discovery document and the key set
	// there over HTTPS, with the certificate and key in CertFile and
	// KeyFile (read again when they change). Without it, something else
	// must publish them at the issuer (signet bundle show --format jwks).
	ListenAddr        string
	CertFile, KeyFile string
}

func (o *OIDCConfig) validate() error {
	if o.Issuer == "" {
		return errors.New("oidc-issuer: required with oidc-listen")
	}
	if _, err := oidc.ParseIssuer(o.Issuer); err != nil {
		return fmt.Errorf("oidc-issuer: %w", err)
	}
	if o.ListenAddr != "" && (o.CertFile == "" || o.KeyFile == "") {
		return errors.New("oidc-tls-cert and oidc-tls-key: required with oidc-listen (the endpoint is HTTPS)")
	}
	if o.ListenAddr == "" && (o.CertFile != "" || o.KeyFile != "") {
		return errors.New("oidc-tls-cert and oidc-tls-key: set, but oidc-listen is not")
	}
	return nil
}

// FederationConfig serves the SPIFFE bundle endpoint.
type FederationConfig struct {
	// ListenAddr serves the bundle over HTTPS. Required.
	ListenAddr string
	// CertFile and KeyFile, if set, make the endpoint https_web with that
	// certificate (read again when it changes); else it is https_spiffe,
	// with the CA's own SVID (spiffe://<td>/signet/ca).
	CertFile, KeyFile string
	// RefreshHint is the bundle's refresh hint. If zero, five minutes.
	RefreshHint time.Duration
}

func (f *FederationConfig) validate() error {
	if f.ListenAddr == "" {
		return errors.New("federation-listen: required with federation-tls-cert, federation-tls-key or federation-refresh-hint")
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return errors.New("federation-tls-cert and federation-tls-key: set both (https_web) or neither (https_spiffe)")
	}
	if f.RefreshHint < 0 || f.RefreshHint > 24*time.Hour {
		return errors.New("federation-refresh-hint: between 1s and 24h")
	}
	return nil
}

// KubeConfig configures Kubernetes mode: PSAT node attestation, identities
// derived from pods and IdentityRules, the CA's keys in a Secret shared by
// replicas, and leader election on a Lease.
type KubeConfig struct {
	// Kubeconfig is a kubeconfig file; InCluster uses the pod's account.
	// Exactly one is required.
	Kubeconfig string
	InCluster  bool
	// ClusterName goes into agent IDs: spiffe://<td>/signet/agent/k8s/<cluster>/<node>.
	// Required.
	ClusterName string
	// AgentServiceAccounts ("namespace/name") may attest as agents. At
	// least one is required.
	AgentServiceAccounts []string
	// Audience agent tokens must carry. If empty, "signet-ca".
	Audience string
	// Namespace holds the keys Secret and the Lease. If empty, the pod's
	// namespace, else "signet".
	Namespace string
	// SecretName, LeaseName and BundleConfigMap default to
	// "signet-ca-keys", "signet-ca" and "signet-bundle" (the ConfigMap the
	// leader keeps the trust bundle's roots in, key bundle.pem, for agents
	// to mount at first start).
	SecretName, LeaseName, BundleConfigMap string
	// Identity names this replica in the Lease. If empty, the hostname.
	Identity string
	// Webhook, if set, serves admission control.
	Webhook *WebhookConfig
	// PodCertificates, if set, makes the CA the signer of
	// PodCertificateRequests for a signer name, with the trust bundle
	// published as a ClusterTrustBundle.
	PodCertificates *PodCertificateConfig
}

// PodCertificateConfig configures the pod certificate signer.
type PodCertificateConfig struct {
	// SignerName; if empty, signet.dev/x509-svid.
	SignerName string
	// RefreshAfter is how long after a certificate's NotBefore the kubelet
	// should start refreshing it; if zero, half its lifetime. The API
	// keeps it at least 10 minutes from either end.
	RefreshAfter time.Duration
}

// WebhookConfig configures the admission webhook server.
type WebhookConfig struct {
	// ListenAddr serves HTTPS for the API server.
	ListenAddr string
	// DNSNames go into the serving certificate (the Service's names, e.g.
	// signet-ca-webhook.signet-system.svc). At least one is required.
	DNSNames []string
	// SocketDir is the agent's socket directory on the hosts. If empty,
	// /run/signet.
	SocketDir string
	// SocketVolume is how the socket is injected into pods: "csi" (the
	// agent's CSI driver, the default) or "hostPath".
	SocketVolume string
	// CSIDriver is the agent's CSI driver; if empty, csi.signet.dev.
	CSIDriver string
	// CSIDir is the directory of the agent's CSI plugin socket on the
	// hosts, which no pod may reach by hostPath. If empty,
	// /run/signet-csi.
	CSIDir string
	// AgentDaemonSet is the agent's DaemonSet, in the namespace of the
	// first agent service account. If empty, signet-agent.
	AgentDaemonSet string
	// AgentPodCreators are the users allowed to create pods with the agent
	// service account; if empty, webhook.DefaultAgentPodCreators.
	AgentPodCreators []string
	// ConfigurationName names the Mutating- and ValidatingWebhookConfiguration
	// whose caBundle the leader keeps current. If empty, "signet".
	ConfigurationName string
}

// serviceAccountNamespaceFile names the pod's namespace in a cluster.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Validate fills in the defaults of the fields left empty and checks the
// configuration. Errors name the setting by its flag.
func (c *Config) Validate() error {
	if c.TrustDomain.IsZero() {
		return errors.New("trust-domain: required")
	}
	if c.DataDir == "" {
		return errors.New("data-dir: required")
	}
	if c.PprofAddr != "" {
		host, _, err := net.SplitHostPort(c.PprofAddr)
		if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
			return fmt.Errorf("pprof-addr: %q: want a loopback address such as 127.0.0.1:6060 (the profiles show the process's memory)", c.PprofAddr)
		}
	}
	if c.Log == nil {
		c.Log = hclog.NewNullLogger()
	}
	if c.Datastore == "" {
		c.Datastore = filepath.Join(c.DataDir, "signet.db")
	} else if strings.Contains(c.Datastore, "://") && !store.IsPostgres(c.Datastore) {
		return errors.New("datastore: a postgres:// URL or the path of a SQLite file")
	}
	if c.AdminSocket == "" {
		c.AdminSocket = filepath.Join(c.DataDir, "admin.sock")
	}
	if c.AuditSpoolMax == 0 {
		c.AuditSpoolMax = 256 << 20
	}
	for _, sk := range c.AuditSinks {
		if err := sk.check(); err != nil {
			return err
		}
	}
	if c.AuditLog == "" {
		c.AuditLog = filepath.Join(c.DataDir, "audit.log")
	}
	if len(c.AdminIDs) > 0 && c.AdminListenAddr == "" {
		return errors.New("admin-id: set, but admin-listen is not")
	}
	for _, d := range []struct {
		key string
		v   *time.Duration
		def time.Duration
	}{
		{"root-ttl", &c.RootTTL, DefaultRootTTL}, {"intermediate-ttl", &c.IntermediateTTL, DefaultIntermediateTTL},
		{"jwt-key-ttl", &c.JWTKeyTTL, DefaultJWTKeyTTL}, {"agent-ttl", &c.AgentTTL, DefaultAgentTTL},
		{"x509-ttl", &c.X509TTL, DefaultX509TTL}, {"jwt-ttl", &c.JWTTTL, DefaultJWTTTL},
		{"rotate-interval", &c.RotateInterval, DefaultRotateInterval}, {"min-svid-ttl", &c.MinSVIDTTL, DefaultMinSVIDTTL},
		{"root-activation-timeout", &c.RootActivationTimeout, DefaultRootActivationTimeout},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < 0 {
			return fmt.Errorf("%s: must be positive", d.key)
		}
	}
	if c.MinSVIDTTL < time.Second {
		return fmt.Errorf("min-svid-ttl: %s is shorter than one second", c.MinSVIDTTL)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"x509-ttl", c.X509TTL}, {"jwt-ttl", c.JWTTTL}, {"agent-ttl", c.AgentTTL}} {
		if d.v < c.MinSVIDTTL {
			return fmt.Errorf("%s: %s is shorter than min-svid-ttl (%s)", d.key, d.v, c.MinSVIDTTL)
		}
	}
	if c.IntermediateTTL > c.RootTTL/6 {
		return fmt.Errorf("intermediate-ttl: %s must be at most a sixth of root-ttl (%s)", c.IntermediateTTL, c.RootTTL)
	}
	if c.X509TTL > c.IntermediateTTL/2 || c.AgentTTL > c.IntermediateTTL/2 {
		return fmt.Errorf("x509-ttl and agent-ttl must be at most half of intermediate-ttl (%s)", c.IntermediateTTL)
	}
	if c.KeyType == "" {
		c.KeyType = DefaultKeyType
	}
	if c.JWTKeyType == "" {
		c.JWTKeyType = DefaultKeyType
	}
	for _, kt := range []struct{ flag, value string }{{"key-type", c.KeyType}, {"jwt-key-type", c.JWTKeyType}} {
		switch kt.value {
		case "ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096":
		default:
			return fmt.Errorf("%s: %q: want ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096", kt.flag, kt.value)
		}
	}
	if c.KMS != "" && !strings.HasPrefix(c.KMS, "awskms:") {
		return errors.New("kms: want an awskms: URI, such as awskms:region=eu-west-1 (the only external KMS this build supports)")
	}
	if c.Federation != nil {
		if err := c.Federation.validate(); err != nil {
			return err
		}
		if c.Federation.RefreshHint == 0 {
			c.Federation.RefreshHint = federation.DefaultRefreshHint
		}
	}
	if c.OIDC != nil {
		if err := c.OIDC.validate(); err != nil {
			return err
		}
	}
	if c.Kube != nil {
		return c.Kube.validate(c.TrustDomain)
	}
	return nil
}

func (k *KubeConfig) validate(td spiffeid.TrustDomain) error {
	switch {
	case k.Kubeconfig != "" && k.InCluster:
		return errors.New("kubeconfig and in-cluster: choose one")
	case k.Kubeconfig == "" && !k.InCluster:
		return errors.New("kubernetes mode needs kubeconfig or in-cluster")
	case k.ClusterName == "":
		return errors.New("cluster-name: required in Kubernetes mode")
	case len(k.AgentServiceAccounts) == 0:
		return errors.New("agent-service-account: at least one is required in Kubernetes mode")
	}
	if _, err := spiffeid.FromSegments(td, k.ClusterName); err != nil {
		return fmt.Errorf("cluster-name: %q: %v", k.ClusterName, err)
	}
	for _, sa := range k.AgentServiceAccounts {
		if ns, name, ok := strings.Cut(sa, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("agent-service-account: %q: want NAMESPACE/NAME", sa)
		}
	}
	if k.Audience == "" {
		k.Audience = signetid.AgentAudience
	}
	if k.Namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil {
			k.Namespace = strings.TrimSpace(string(b))
		}
	}
	if k.Namespace == "" {
		k.Namespace = DefaultNamespace
	}
	for _, d := range []struct {
		v   *string
		def string
	}{
		{&k.SecretName, DefaultSecretName}, {&k.LeaseName, DefaultLeaseName}, {&k.BundleConfigMap, DefaultBundleConfigMap},
	} {
		if *d.v == "" {
			*d.v = d.def
		}
	}
	if pc := k.PodCertificates; pc != nil {
		if pc.SignerName == "" {
			pc.SignerName = DefaultPodCertificateSigner
		}
		if d, n, ok := strings.Cut(pc.SignerName, "/"); !ok || d == "" || n == "" || strings.Contains(n, "/") || strings.HasPrefix(d, "kubernetes.io") {
			return fmt.Errorf("pod-certificate-signer: %q: want DOMAIN/NAME, outside kubernetes.io", pc.SignerName)
		}
		if pc.RefreshAfter < 0 {
			return errors.New("pod-certificate-refresh: must be positive")
		}
	}
	if w := k.Webhook; w != nil {
		if len(w.DNSNames) == 0 {
			return errors.New("webhook-dns: at least one name is required with webhook-listen")
		}
		for _, d := range []struct {
			v   *string
			def string
		}{
			{&w.SocketDir, DefaultSocketDir}, {&w.AgentDaemonSet, DefaultAgentDaemonSet}, {&w.ConfigurationName, DefaultWebhookConfig},
			{&w.SocketVolume, "csi"}, {&w.CSIDriver, signetid.CSIDriver}, {&w.CSIDir, DefaultCSIDir},
		} {
			if *d.v == "" {
				*d.v = d.def
			}
		}
		// webhook.SocketVolumeCSI and SocketVolumeHostPath (this package
		// stays free of the webhook's Kubernetes clients).
		if w.SocketVolume != "csi" && w.SocketVolume != "hostPath" {
			return fmt.Errorf("socket-volume: %q: want csi or hostPath", w.SocketVolume)
		}
	}
	return nil
}

func (s AuditSink) check() error {
	if strings.HasPrefix(s.URL, "https://") || strings.HasPrefix(s.URL, "http://") {
		u, err := url.Parse(s.URL)
		if err != nil || u.Host == "" {
			return fmt.Errorf("audit-webhook: %q is not a URL", s.URL)
		}
		if u.Scheme == "http" && !isLoopback(u.Hostname()) {
			return fmt.Errorf("audit-webhook: %q: audit records leave only over https (http is for a receiver on this host)", s.URL)
		}
		return nil
	}
	if _, _, err := audit.ParseSyslogAddr(s.URL); err != nil {
		return fmt.Errorf("audit-syslog: %w", err)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
