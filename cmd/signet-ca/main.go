// Command signet-ca is Signet's cluster CA: it attests node agents and signs
// X509-SVIDs and JWT-SVIDs for the entries parented to them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	// Time zones of AccessPolicy windows, checked by the admission webhook
	// and the admin API, whatever the image holds.
	_ "time/tzdata"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/ca/authority/awskms"
	"github.com/signet-id/signet/ca/clustermode"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/ca/webhook"
	"github.com/signet-id/signet/internal/config"
	_ "github.com/signet-id/signet/internal/grpcbuf" // buffers sized for batches of SVIDs
	"github.com/signet-id/signet/internal/logfile"
	"github.com/signet-id/signet/internal/signetid"
	"github.com/signet-id/signet/internal/systemlog"
	"github.com/signet-id/signet/internal/version"
)

// fileConfig holds every setting; its json tags are both the config file
// keys and the flag names.
type fileConfig struct {
	TrustDomain      string            `json:"trust-domain"`
	DataDir          string            `json:"data-dir"`
	Datastore        string            `json:"datastore"`
	Listen           string            `json:"listen"`
	AdminSocket      string            `json:"admin-socket"`
	AdminListen      string            `json:"admin-listen"`
	AdminID          config.StringList `json:"admin-id"`
	HealthAddr       string            `json:"health-addr"`
	MetricsAddr      string            `json:"metrics-addr"`
	PprofAddr        string            `json:"pprof-addr"`
	AuditLog         string            `json:"audit-log"`
	AuditWebhook     config.StringList `json:"audit-webhook"`
	AuditSyslog      config.StringList `json:"audit-syslog"`
	AuditSinkCA      string            `json:"audit-sink-ca"`
	AuditSinkSVID    bool              `json:"audit-sink-svid"`
	AuditSpoolMaxMi  int64             `json:"audit-spool-max-mib"`
	TrafficLearn     config.Duration   `json:"traffic-learn"`
	TrafficDetector  bool              `json:"traffic-detector"`
	RootTTL          config.Duration   `json:"root-ttl"`
	IntermediateTTL  config.Duration   `json:"intermediate-ttl"`
	JWTKeyTTL        config.Duration   `json:"jwt-key-ttl"`
	AgentTTL         config.Duration   `json:"agent-ttl"`
	X509TTL          config.Duration   `json:"x509-ttl"`
	JWTTTL           config.Duration   `json:"jwt-ttl"`
	MinSVIDTTL       config.Duration   `json:"min-svid-ttl"`
	RootActivation   config.Duration   `json:"root-activation-timeout"`
	KeyType          string            `json:"key-type"`
	JWTKeyType       string            `json:"jwt-key-type"`
	KMS              string            `json:"kms"`
	FederationListen string            `json:"federation-listen"`
	FederationCert   string            `json:"federation-tls-cert"`
	FederationKey    string            `json:"federation-tls-key"`
	FederationHint   config.Duration   `json:"federation-refresh-hint"`
	OIDCIssuer       string            `json:"oidc-issuer"`
	OIDCListen       string            `json:"oidc-listen"`
	OIDCTLSCert      string            `json:"oidc-tls-cert"`
	OIDCTLSKey       string            `json:"oidc-tls-key"`
	LogLevel         string            `json:"log-level"`
	LogJSON          bool              `json:"log-json"`

	Kubeconfig          string            `json:"kubeconfig"`
	InCluster           bool              `json:"in-cluster"`
	ClusterName         string            `json:"cluster-name"`
	AgentServiceAccount config.StringList `json:"agent-service-account"`
	AgentAudience       string            `json:"agent-audience"`
	Namespace           string            `json:"namespace"`
	KeysSecret          string            `json:"keys-secret"`
	LeaderLease         string            `json:"leader-lease"`
	ReplicaID           string            `json:"replica-id"`
	WebhookListen       string            `json:"webhook-listen"`
	WebhookDNS          config.StringList `json:"webhook-dns"`
	WebhookConfig       string            `json:"webhook-configuration"`
	AgentSocketDir      string            `json:"agent-socket-dir"`
	AgentCSIDir         string            `json:"agent-csi-dir"`
	SocketVolume        string            `json:"socket-volume"`
	CSIDriver           string            `json:"csi-driver"`
	AgentDaemonSet      string            `json:"agent-daemonset"`
	AgentPodCreator     config.StringList `json:"agent-pod-creator"`
	PodCertificates     bool              `json:"pod-certificates"`
	PodCertSigner       string            `json:"pod-certificate-signer"`
	PodCertRefresh      config.Duration   `json:"pod-certificate-refresh"`
}

func defaults() fileConfig {
	return fileConfig{
		Listen:          "127.0.0.1:8081",
		HealthAddr:      "127.0.0.1:8082",
		RootTTL:         config.Duration(server.DefaultRootTTL),
		IntermediateTTL: config.Duration(server.DefaultIntermediateTTL),
		JWTKeyTTL:       config.Duration(server.DefaultJWTKeyTTL),
		AgentTTL:        config.Duration(server.DefaultAgentTTL),
		X509TTL:         config.Duration(server.DefaultX509TTL),
		JWTTTL:          config.Duration(server.DefaultJWTTTL),
		MinSVIDTTL:      config.Duration(server.DefaultMinSVIDTTL),
		AuditSpoolMaxMi: 256,
		TrafficLearn:    config.Duration(7 * 24 * time.Hour),
		TrafficDetector: true,
		RootActivation:  config.Duration(server.DefaultRootActivationTimeout),
		KeyType:         server.DefaultKeyType,
		JWTKeyType:      server.DefaultKeyType,
		LogLevel:        "info",
		AgentAudience:   signetid.AgentAudience,
		KeysSecret:      server.DefaultSecretName,
		LeaderLease:     server.DefaultLeaseName,
		WebhookConfig:   server.DefaultWebhookConfig,
		AgentSocketDir:  server.DefaultSocketDir,
		AgentCSIDir:     server.DefaultCSIDir,
		SocketVolume:    webhook.SocketVolumeCSI,
		CSIDriver:       signetid.CSIDriver,
		AgentDaemonSet:  server.DefaultAgentDaemonSet,
		PodCertSigner:   server.DefaultPodCertificateSigner,
	}
}

func register(fs *flag.FlagSet, c *fileConfig) {
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "trust domain, e.g. example.org (required)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "directory for everything the CA keeps (required)")
	fs.StringVar(&c.Datastore, "datastore", c.Datastore, "the CA's state: a PostgreSQL URL postgres://… that replicas share (password from PGPASSWORD or ~/.pgpass), or a SQLite file (default DATA-DIR/signet.db)")
	fs.StringVar(&c.Listen, "listen", c.Listen, "address of the agent API (mTLS)")
	fs.StringVar(&c.AdminSocket, "admin-socket", c.AdminSocket, "admin API Unix socket (default DATA-DIR/admin.sock)")
	fs.StringVar(&c.AdminListen, "admin-listen", c.AdminListen, "also serve the admin API over mTLS on this address")
	fs.Var(&c.AdminID, "admin-id", "SPIFFE ID allowed to use the admin API over mTLS (repeatable)")
	fs.StringVar(&c.HealthAddr, "health-addr", c.HealthAddr, "address of /healthz and /readyz")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "address of /metrics (default: the health address)")
	fs.StringVar(&c.PprofAddr, "pprof-addr", c.PprofAddr, "serve Go's /debug/pprof/ profiles on this loopback address, for diagnosis (off by default)")
	fs.StringVar(&c.AuditLog, "audit-log", c.AuditLog, "audit log file, - for stderr (default DATA-DIR/audit.log)")
	fs.Var(&c.AuditWebhook, "audit-webhook", "also send every audit record to this HTTPS URL, in batches of JSON (repeatable)")
	fs.Var(&c.AuditSyslog, "audit-syslog", "also send every audit record to syslog, RFC 5424 at tcp://HOST:PORT or tls://HOST:PORT (repeatable)")
	fs.StringVar(&c.AuditSinkCA, "audit-sink-ca", c.AuditSinkCA, "PEM roots that verify the audit sinks' server certificates (default the system's)")
	fs.BoolVar(&c.AuditSinkSVID, "audit-sink-svid", c.AuditSinkSVID, "present the CA's own SVID as a client certificate to the audit sinks (mutual TLS)")
	fs.BoolVar(&c.TrafficDetector, "traffic-detector", c.TrafficDetector, "learn services' traffic and report anomalies (false: the counts go no further)")
	fs.Var(&c.TrafficLearn, "traffic-learn", "how long the traffic detector only learns a server's traffic before it reports anomalies (0s: at once)")
	fs.Int64Var(&c.AuditSpoolMaxMi, "audit-spool-max-mib", c.AuditSpoolMaxMi, "MiB each audit sink's spool may hold while the sink is away; the oldest records go first past it")
	fs.Var(&c.RootTTL, "root-ttl", "root certificate lifetime")
	fs.Var(&c.IntermediateTTL, "intermediate-ttl", "intermediate certificate lifetime")
	fs.Var(&c.JWTKeyTTL, "jwt-key-ttl", "JWT signing key lifetime")
	fs.Var(&c.AgentTTL, "agent-ttl", "agent SVID lifetime")
	fs.Var(&c.X509TTL, "x509-ttl", "default X509-SVID lifetime")
	fs.Var(&c.JWTTTL, "jwt-ttl", "default JWT-SVID lifetime")
	fs.Var(&c.RootActivation, "root-activation-timeout", "how long a due root activation waits for every live agent to acknowledge the root before it goes ahead (audited with the laggards)")
	fs.Var(&c.MinSVIDTTL, "min-svid-ttl", "shortest SVID lifetime the CA accepts, in its settings and in entries (at least 1s)")
	fs.StringVar(&c.KeyType, "key-type", c.KeyType, "CA key type: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096")
	fs.StringVar(&c.JWTKeyType, "jwt-key-type", c.JWTKeyType, "JWT-SVID signing key type: ec-p256 (ES256), ec-p384 (ES384), rsa-2048, rsa-3072, rsa-4096 (RS256, needed by Microsoft Entra ID); a change applies from the next JWT key")
	fs.StringVar(&c.KMS, "kms", c.KMS, "keep the CA's keys in this KMS, a go.step.sm/crypto/kms URI (awskms:region=REGION); credentials come from the environment")
	fs.StringVar(&c.FederationListen, "federation-listen", c.FederationListen, "serve this trust domain's bundle at a SPIFFE bundle endpoint (HTTPS, public, read-only) on this address")
	fs.StringVar(&c.FederationCert, "federation-tls-cert", c.FederationCert, "PEM certificate of the bundle endpoint for profile https_web (default: https_spiffe, with the CA's SVID spiffe://TD/signet/ca)")
	fs.StringVar(&c.FederationKey, "federation-tls-key", c.FederationKey, "PEM private key of the https_web bundle endpoint's certificate")
	fs.Var(&c.FederationHint, "federation-refresh-hint", "refresh hint of the served bundle: how often federated peers should fetch it (default 5m)")
	fs.StringVar(&c.OIDCIssuer, "oidc-issuer", c.OIDCIssuer, "OIDC issuer URL (https://HOST[/PATH]): the iss of every JWT-SVID, for cloud IAM and the Kubernetes API")
	fs.StringVar(&c.OIDCListen, "oidc-listen", c.OIDCListen, "serve the issuer's discovery document and JWT keys (HTTPS, public, read-only) on this address")
	fs.StringVar(&c.OIDCTLSCert, "oidc-tls-cert", c.OIDCTLSCert, "PEM certificate (chain) of the OIDC endpoint, for the issuer's host; read again when it changes")
	fs.StringVar(&c.OIDCTLSKey, "oidc-tls-key", c.OIDCTLSKey, "PEM private key of the OIDC endpoint's certificate")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "trace, debug, info, warn or error")
	fs.BoolVar(&c.LogJSON, "log-json", c.LogJSON, "log as JSON")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "Kubernetes mode, with this kubeconfig file")
	fs.BoolVar(&c.InCluster, "in-cluster", c.InCluster, "Kubernetes mode, with the pod's service account")
	fs.StringVar(&c.ClusterName, "cluster-name", c.ClusterName, "cluster name in agent IDs (Kubernetes mode; required there)")
	fs.Var(&c.AgentServiceAccount, "agent-service-account", "NAMESPACE/NAME of the agents' service account (Kubernetes mode; repeatable)")
	fs.StringVar(&c.AgentAudience, "agent-audience", c.AgentAudience, "audience of the agents' projected tokens")
	fs.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace of the keys Secret and the Lease (default: the pod's)")
	fs.StringVar(&c.KeysSecret, "keys-secret", c.KeysSecret, "Secret holding the CA's keys (Kubernetes mode)")
	fs.StringVar(&c.LeaderLease, "leader-lease", c.LeaderLease, "Lease for leader election (Kubernetes mode)")
	fs.StringVar(&c.ReplicaID, "replica-id", c.ReplicaID, "this replica's name in the leader Lease and the traffic shards, unique among the replicas (Kubernetes mode; default: the hostname, the pod's name)")
	fs.StringVar(&c.WebhookListen, "webhook-listen", c.WebhookListen, "serve the admission webhook (HTTPS) on this address (Kubernetes mode)")
	fs.Var(&c.WebhookDNS, "webhook-dns", "DNS name of the webhook's Service, for its certificate (repeatable)")
	fs.StringVar(&c.WebhookConfig, "webhook-configuration", c.WebhookConfig, "name of the Mutating/ValidatingWebhookConfiguration whose caBundle the CA keeps current")
	fs.StringVar(&c.AgentSocketDir, "agent-socket-dir", c.AgentSocketDir, "the agents' socket directory on the hosts (injected into pods at the same path)")
	fs.StringVar(&c.AgentCSIDir, "agent-csi-dir", c.AgentCSIDir, "the directory of the agents' CSI plugin socket on the hosts (no pod may reach it by hostPath)")
	fs.StringVar(&c.SocketVolume, "socket-volume", c.SocketVolume, "how the webhook injects the socket: csi (the agent's CSI driver; Pod Security baseline and restricted allow it) or hostPath (clusters without CSI; privileged only)")
	fs.StringVar(&c.CSIDriver, "csi-driver", c.CSIDriver, "the agents' CSI driver name")
	fs.StringVar(&c.AgentDaemonSet, "agent-daemonset", c.AgentDaemonSet, "the agents' DaemonSet, the only one whose pods may use the agent service account")
	fs.BoolVar(&c.PodCertificates, "pod-certificates", c.PodCertificates, "sign PodCertificateRequests of pod-certificate-signer with X509-SVIDs, and publish the bundle as a ClusterTrustBundle (Kubernetes mode)")
	fs.StringVar(&c.PodCertSigner, "pod-certificate-signer", c.PodCertSigner, "the signer name of pod certificates")
	fs.Var(&c.PodCertRefresh, "pod-certificate-refresh", "how long after its NotBefore the kubelet refreshes a pod certificate (default: half its lifetime; at least 10m)")
	fs.Var(&c.AgentPodCreator, "agent-pod-creator", "user that creates the agent DaemonSet's pods (repeatable; default: the DaemonSet controller, "+strings.Join(webhook.DefaultAgentPodCreators, " or ")+")")
}

// parse reads flags and the config file; a flag given on the command line
// wins over the file.
func parse(args []string, stderr io.Writer) (server.Config, hclog.Logger, error) {
	c, err := config.ParseFlags("signet-ca", args, stderr, defaults, register)
	if err != nil {
		return server.Config{}, nil, err
	}
	return validate(c)
}

// validate turns the settings into a server.Config, which checks them.
func validate(c fileConfig) (server.Config, hclog.Logger, error) {
	if c.TrustDomain == "" {
		return server.Config{}, nil, errors.New("trust-domain: required")
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return server.Config{}, nil, fmt.Errorf("trust-domain: %q: %v", c.TrustDomain, err)
	}
	var adminIDs []spiffeid.ID
	for _, s := range c.AdminID {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return server.Config{}, nil, fmt.Errorf("admin-id: %q: %v", s, err)
		}
		adminIDs = append(adminIDs, id)
	}
	// A lifetime of zero would mean "the default" to the server: here it
	// is a mistake.
	for key, d := range map[string]config.Duration{"root-ttl": c.RootTTL, "intermediate-ttl": c.IntermediateTTL,
		"jwt-key-ttl": c.JWTKeyTTL, "agent-ttl": c.AgentTTL, "x509-ttl": c.X509TTL, "jwt-ttl": c.JWTTTL, "min-svid-ttl": c.MinSVIDTTL, "root-activation-timeout": c.RootActivation} {
		if d <= 0 {
			return server.Config{}, nil, fmt.Errorf("%s: must be positive", key)
		}
	}
	var kube *server.KubeConfig
	if c.Kubeconfig != "" || c.InCluster {
		kube = &server.KubeConfig{Kubeconfig: c.Kubeconfig, InCluster: c.InCluster, ClusterName: c.ClusterName,
			AgentServiceAccounts: c.AgentServiceAccount, Audience: c.AgentAudience, Namespace: c.Namespace,
			SecretName: c.KeysSecret, LeaseName: c.LeaderLease, Identity: c.ReplicaID}
		if c.WebhookListen != "" {
			kube.Webhook = &server.WebhookConfig{ListenAddr: c.WebhookListen, DNSNames: c.WebhookDNS, SocketDir: c.AgentSocketDir,
				SocketVolume: c.SocketVolume, CSIDriver: c.CSIDriver, CSIDir: c.AgentCSIDir,
				AgentDaemonSet: c.AgentDaemonSet, AgentPodCreators: c.AgentPodCreator, ConfigurationName: c.WebhookConfig}
		}
		if c.PodCertificates {
			kube.PodCertificates = &server.PodCertificateConfig{SignerName: c.PodCertSigner, RefreshAfter: time.Duration(c.PodCertRefresh)}
		}
	} else if c.ClusterName != "" || len(c.AgentServiceAccount) > 0 || c.PodCertificates {
		return server.Config{}, nil, errors.New("cluster-name, agent-service-account and pod-certificates need kubeconfig or in-cluster")
	}
	var sinks []server.AuditSink
	for _, u := range append(append([]string(nil), c.AuditWebhook...), c.AuditSyslog...) {
		sinks = append(sinks, server.AuditSink{URL: u, CAFile: c.AuditSinkCA, PresentSVID: c.AuditSinkSVID})
	}
	if c.AuditSpoolMaxMi <= 0 {
		return server.Config{}, nil, errors.New("audit-spool-max-mib: must be positive")
	}
	cfg := server.Config{
		AuditSinks: sinks, AuditSpoolMax: c.AuditSpoolMaxMi << 20, TrafficLearn: time.Duration(c.TrafficLearn), NoTrafficDetector: !c.TrafficDetector,
		TrustDomain: td, DataDir: c.DataDir, Datastore: c.Datastore, ListenAddr: c.Listen, AdminSocket: c.AdminSocket,
		AdminListenAddr: c.AdminListen, AdminIDs: adminIDs, HealthAddr: c.HealthAddr, MetricsAddr: c.MetricsAddr, PprofAddr: c.PprofAddr,
		AuditLog: c.AuditLog, RootTTL: time.Duration(c.RootTTL), IntermediateTTL: time.Duration(c.IntermediateTTL),
		JWTKeyTTL: time.Duration(c.JWTKeyTTL), AgentTTL: time.Duration(c.AgentTTL), X509TTL: time.Duration(c.X509TTL),
		JWTTTL: time.Duration(c.JWTTTL), MinSVIDTTL: time.Duration(c.MinSVIDTTL), RootActivationTimeout: time.Duration(c.RootActivation), KeyType: c.KeyType, JWTKeyType: c.JWTKeyType, KMS: c.KMS, Kube: kube,
		Cluster: clustermode.Build, OpenKMS: awskms.Open,
	}
	if c.OIDCIssuer != "" || c.OIDCListen != "" || c.OIDCTLSCert != "" || c.OIDCTLSKey != "" {
		cfg.OIDC = &server.OIDCConfig{Issuer: c.OIDCIssuer, ListenAddr: c.OIDCListen, CertFile: c.OIDCTLSCert, KeyFile: c.OIDCTLSKey}
	}
	if c.FederationListen != "" || c.FederationCert != "" || c.FederationKey != "" || c.FederationHint != 0 {
		cfg.Federation = &server.FederationConfig{ListenAddr: c.FederationListen, CertFile: c.FederationCert, KeyFile: c.FederationKey,
			RefreshHint: time.Duration(c.FederationHint)}
	}
	if err := cfg.Validate(); err != nil {
		return server.Config{}, nil, err
	}
	log, err := systemlog.New("signet-ca", c.LogLevel, c.LogJSON, os.Stderr)
	if err != nil {
		return server.Config{}, nil, err
	}
	cfg.Log = log
	return cfg, log, nil
}

func main() {
	cfg, log, err := parse(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if errors.Is(err, config.ErrVersion) {
		fmt.Println(version.String("signet-ca"))
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "signet-ca:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.ReopenLogs = logfile.OnSIGHUP(ctx)
	if err := server.Run(ctx, cfg); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}
