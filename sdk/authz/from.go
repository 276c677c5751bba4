package authz

import (
	"crypto/x509"
	"errors"
	"strings"
)

// Organizational units the CA writes into every X.509-SVID an agent
// mints, with where the workload runs as the CA attested it: the node,
// and a pod's Kubernetes namespace. The CA signs them; a workload cannot
// choose them.
const (
	NodeUnit      = "signet-node:"
	NamespaceUnit = "signet-ns:"
)

// Attributes are what a peer's certificate says of where it runs.
type Attributes struct {
	Node, Namespace string
}

// AttributesOf reads the attributes of a peer's leaf certificate.
func AttributesOf(leaf *x509.Certificate) Attributes {
	var a Attributes
	if leaf == nil {
		return a
	}
	for _, u := range leaf.Subject.OrganizationalUnit {
		if v, ok := strings.CutPrefix(u, NodeUnit); ok {
			a.Node = v
		} else if v, ok := strings.CutPrefix(u, NamespaceUnit); ok {
			a.Namespace = v
		}
	}
	return a
}

// Source is where a rule's peers must call from (Rule.From): exactly one
// of a Kubernetes namespace and a node, as the CA marked the peer's SVID.
type Source struct {
	Namespace, Node string
}

func (s Source) check() error {
	if (s.Namespace == "") == (s.Node == "") {
		return errors.New("from: set exactly one of namespace and node")
	}
	return nil
}

// fromMatches reports whether a peer with attributes a calls from one of
// the sources; a rule without sources matches any.
func fromMatches(from []Source, a Attributes) bool {
	if len(from) == 0 {
		return true
	}
	for _, s := range from {
		if (s.Namespace != "" && s.Namespace == a.Namespace) || (s.Node != "" && s.Node == a.Node) {
			return true
		}
	}
	return false
}
