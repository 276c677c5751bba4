// Package signetid names Signet's own SPIFFE IDs: the CA's serving
// identity, the admission webhook's, and the agents'. They all live under
// the path /signet, which no entry or IdentityRule may use.
package signetid

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CSIDriver is the name of the agent's CSI driver, which puts the
// Workload API socket into pods: the CSIDriver object's and the pods'
// volumes'.
const CSIDriver = "csi.signet.dev"

// reserved is the path under which Signet's own identities live.
const reserved = "/signet"

// IsReserved reports whether id's path is /signet or below it.
func IsReserved(id spiffeid.ID) bool {
	return id.Path() == reserved || strings.HasPrefix(id.Path(), reserved+"/")
}

// CA is the identity of the CA's serving certificate:
// spiffe://<td>/signet/ca. Agents accept no other server.
func CA(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "signet", "ca")
}

// Webhook is the identity of the admission webhook's serving
// certificate: spiffe://<td>/signet/webhook.
func Webhook(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "signet", "webhook")
}

// AgentAudience is the audience that agents' projected service-account
// tokens carry unless configured otherwise.
const AgentAudience = "signet-ca"

const (
	agentPath = reserved + "/agent/"
	kubePath  = agentPath + "k8s/"
)

// JoinAgent is the identity of an agent attested with a join token:
// spiffe://<td>/signet/agent/join/<node>. It fails when node is not a
// valid path segment.
func JoinAgent(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "signet", "agent", "join", node)
}

// KubeAgent is the identity of an agent attested with a projected
// service-account token: spiffe://<td>/signet/agent/k8s/<cluster>/<node>.
func KubeAgent(td spiffeid.TrustDomain, cluster, node string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "signet", "agent", "k8s", cluster, node)
}

// KubeAgentNode returns the node of a Kubernetes agent ID of cluster, and
// false for any other ID.
func KubeAgentNode(id spiffeid.ID, cluster string) (string, bool) {
	node, ok := strings.CutPrefix(id.Path(), kubePath+cluster+"/")
	if !ok || node == "" || strings.Contains(node, "/") {
		return "", false
	}
	return node, true
}

// IsAgent reports whether id is an agent's identity in td.
func IsAgent(td spiffeid.TrustDomain, id spiffeid.ID) bool {
	return id.TrustDomain() == td && strings.HasPrefix(id.Path(), agentPath)
}
