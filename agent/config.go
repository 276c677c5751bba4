package agent

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/agent/caclient"
	"github.com/signet-id/signet/agent/kubelet"
	"github.com/signet-id/signet/agent/workloadapi"
	"github.com/signet-id/signet/internal/clock"
)

// DefaultSocket is the Workload API socket unless configured.
const DefaultSocket = "/run/signet/agent.sock"

// DefaultCSISocket is the CSI plugin's socket unless configured: beside
// the Workload API socket's directory, never in it (every pod sees that
// directory's contents).
const DefaultCSISocket = "/run/signet-csi/csi.sock"

// CSIConfig enables the CSI node plugin (agent/csi).
type CSIConfig struct {
	// KubeletRootDir is the kubelet's --root-dir. Required.
	KubeletRootDir string
	// Socket is the plugin's socket; if empty, DefaultCSISocket.
	Socket string
	// Driver is the driver's name; if empty, csi.DefaultDriverName.
	Driver string
}

// Config is everything signet-agent needs; cmd/signet-agent fills it
// from flags and the config file. Validate fills in the defaults the
// fields name and checks the rest; Run calls it.
type Config struct {
	// TrustDomain is the agent's trust domain. If zero, the one that the
	// roots of TrustBundle name (or, after the first start, of the bundle
	// the agent keeps in DataDir); when both are known they must agree.
	TrustDomain spiffeid.TrustDomain
	// Clock is the time the agent decides by (rotation, renewal). If nil,
	// the system clock.
	Clock clock.Clock
	// CAAddress is the host:port of the CA's agent API, or a comma-separated
	// list of the host:ports of replicas sharing one store: the agent uses
	// one (picked at random) and moves to another when it fails. Required.
	CAAddress string
	// DataDir keeps the agent SVID, its key and the last trust bundle.
	// Required.
	DataDir string
	// JoinToken, or the contents of JoinTokenFile (not both), attests the
	// node when the data directory holds no valid agent SVID.
	JoinToken     string
	JoinTokenFile string
	// PSATTokenFile, when set, attests the node with the projected
	// service-account token in this file (node attestor k8s_psat) as node
	// NodeName (then required). It must not be the kubelet's token.
	PSATTokenFile string
	NodeName      string
	// TrustBundle holds the CA roots to trust at first start.
	TrustBundle []*x509.Certificate
	// SocketPath is the Workload API socket. If empty, DefaultSocket.
	SocketPath string
	// HealthAddr serves /healthz, /readyz (and /metrics unless MetricsAddr
	// is set); empty disables them.
	HealthAddr  string
	MetricsAddr string
	// AuditLog is the file for Workload API audit records; "-" is stderr.
	// If empty, DataDir/audit.log.
	AuditLog string
	// Log receives the agent's log. If nil, it is discarded.
	Log hclog.Logger
	// Kubelet, if set, adds the Kubernetes workload attestor: processes in
	// pods also get k8s: selectors from the kubelet's view of their pod.
	// Its CAFile is required unless InsecureSkipVerify.
	Kubelet *kubelet.Config
	// KubeletCgroupRoot is the kubelet's pod cgroup root on the host (its
	// --cgroup-root with the driver's naming, e.g. /kubepods.slice); if
	// empty, /kubepods and /kubepods.slice. Processes whose cgroups lie
	// elsewhere are not attested as pods.
	KubeletCgroupRoot string
	// DenyListFile, if set, is kept holding the CA's signed deny list (a
	// compact JWS of the revocations in force), for peers on this node
	// that check revocations without Signet's SDK.
	DenyListFile string
	// CSI, if set, serves the CSI node plugin that puts the Workload API
	// socket into pods (NodeName required).
	CSI *CSIConfig
	// WorkloadLimits bound the Workload API's connections per caller and
	// in all; zero values take the defaults.
	WorkloadLimits workloadapi.Limits
	// ReopenLogs, when it receives, reopens the audit log (after a
	// rotation; signet-agent sends on SIGHUP).
	ReopenLogs <-chan struct{}
	// Ready, if set, is called once the Workload API socket is up.
	Ready func(agentID spiffeid.ID)
}

// Validate fills in the defaults of the fields left empty and checks the
// configuration. Errors name the setting by its flag.
func (c *Config) Validate() error {
	switch {
	case c.DataDir == "":
		return errors.New("data-dir: required")
	case c.CAAddress == "":
		return errors.New("ca-address: required")
	}
	for _, a := range strings.Split(c.CAAddress, ",") {
		if _, _, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil {
			return fmt.Errorf("ca-address: %q: %w", a, err)
		}
	}
	switch {
	case c.JoinToken != "" && c.JoinTokenFile != "":
		return errors.New("join-token and join-token-file: give one, not both")
	}
	if c.PSATTokenFile != "" {
		switch {
		case c.NodeName == "":
			return errors.New("node-name: required with node-attestor k8s_psat (or set NODE_NAME)")
		case c.JoinToken != "" || c.JoinTokenFile != "":
			return errors.New("join-token: not used with node-attestor k8s_psat")
		case c.Kubelet != nil && c.PSATTokenFile == c.Kubelet.TokenFile:
			// The CA's token must never reach the kubelet, nor the
			// kubelet's the CA.
			return errors.New("token-file and kubelet-token-file: must be different tokens (the CA's audience vs the API server's)")
		}
	}
	if c.Kubelet != nil && c.Kubelet.CAFile == "" && !c.Kubelet.InsecureSkipVerify {
		return errors.New("kubelet-ca: required with kubelet-url (or, unsafely, kubelet-insecure-skip-verify)")
	}
	if err := c.trustDomain(); err != nil {
		return err
	}
	if c.Log == nil {
		c.Log = hclog.NewNullLogger()
	}
	if c.SocketPath == "" {
		c.SocketPath = DefaultSocket
	}
	if c.CSI != nil {
		if c.CSI.Socket == "" {
			c.CSI.Socket = DefaultCSISocket
		}
		if c.NodeName == "" {
			return errors.New("node-name: required with kubelet-root-dir (the CSI plugin's node; or set NODE_NAME)")
		}
	}
	if c.AuditLog == "" {
		c.AuditLog = filepath.Join(c.DataDir, "audit.log")
	}
	return nil
}

// trustDomain takes the trust domain from the trust bundle when it is not
// given, and checks that the two agree when it is: an agent of another
// trust domain than its CA's would only ever fail to verify it.
func (c *Config) trustDomain() error {
	roots, src := c.TrustBundle, "trust-bundle"
	if stored, err := caclient.StoredBundle(c.DataDir); err == nil {
		roots, src = stored, "the bundle stored in "+c.DataDir
	}
	td, err := caclient.BundleTrustDomain(roots)
	if err != nil {
		return fmt.Errorf("%s: %v", src, err)
	}
	switch {
	case c.TrustDomain.IsZero() && td.IsZero():
		return errors.New("trust-domain: required, since no trust bundle names it (pass --trust-bundle with the PEM of `signet bundle show`, or --trust-domain)")
	case c.TrustDomain.IsZero():
		c.TrustDomain = td
	case !td.IsZero() && td != c.TrustDomain:
		return fmt.Errorf("trust-domain: %s, but %s holds the roots of trust domain %s: this agent could never verify its CA", c.TrustDomain, src, td)
	}
	return nil
}
