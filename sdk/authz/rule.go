package authz

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Action is what a rule does to the peers it matches.
type Action int

// Actions. A deny always wins over an allow.
const (
	ActionAllow Action = iota + 1
	ActionDeny
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Rule allows or denies peers, for every method or only some.
type Rule struct {
	Action Action
	// Peers the rule applies to; a peer that any of them matches.
	Peers []Peer
	// Methods limits the rule to some calls: gRPC full methods
	// ("/shop.v1.Cart/Add", or "/shop.v1.Cart/*" for a whole service) or
	// HTTP requests ("GET /items", "POST /items/*", "* /admin/**"). A path
	// segment "*" matches one segment and a final "**" any number.
	// ConnectionMethod ("(connection)") stands for the connections of a
	// plain TLS listener: it matches no call. Empty: every method.
	Methods []string
	// When limits the rule to weekly windows of time: it applies to calls
	// made in one of them, by the Authorizer's clock, and to no other.
	// None: at any time.
	When []Window
	// From limits the rule to peers that run in one of these places, as
	// their SVIDs say (Attributes); a call decided without attributes
	// (Check rather than CheckFrom) matches no rule with From.
	From []Source
}

// Allow returns a rule that allows peers.
func Allow(peers ...Peer) Rule { return Rule{Action: ActionAllow, Peers: peers} }

// Deny returns a rule that denies peers.
func Deny(peers ...Peer) Rule { return Rule{Action: ActionDeny, Peers: peers} }

// During returns r limited to the windows (see Rule.When).
func (r Rule) During(windows ...Window) Rule {
	r.When = append(append([]Window(nil), r.When...), windows...)
	return r
}

// FromSources returns r limited to peers from the sources (see Rule.From).
func (r Rule) FromSources(sources ...Source) Rule {
	r.From = append(append([]Source(nil), r.From...), sources...)
	return r
}

// OnMethods returns r limited to methods (see Rule.Methods).
func (r Rule) OnMethods(methods ...string) Rule {
	r.Methods = append(append([]string(nil), r.Methods...), methods...)
	return r
}

// Peer selects peers by their SPIFFE ID.
type Peer struct {
	kind peerKind
	// td is empty for namespace and service-account matchers that take the
	// trust domain of the service that enforces the rule.
	td      string
	id      string // exact ID
	pattern string
	ns, sa  string
}

type peerKind int

const (
	peerID peerKind = iota + 1
	peerPattern
	peerTrustDomain
	peerNamespace
	peerServiceAccount
)

// PeerID matches one SPIFFE ID exactly.
func PeerID(id string) Peer { return Peer{kind: peerID, id: id} }

// PeerPattern matches SPIFFE IDs by path: "*" matches one path segment,
// and a final "**" any number of trailing segments, at least one:
// "spiffe://example.org/ns/payments/**". The trust domain is literal.
func PeerPattern(pattern string) Peer { return Peer{kind: peerPattern, pattern: pattern} }

// PeerTrustDomain matches every ID of a trust domain.
func PeerTrustDomain(td string) Peer { return Peer{kind: peerTrustDomain, td: td} }

// PeerNamespace matches the Kubernetes workloads of a namespace: IDs of
// the shape spiffe://<td>/ns/<namespace>/sa/<account> in the trust domain
// of the service enforcing the rule.
func PeerNamespace(ns string) Peer { return Peer{kind: peerNamespace, ns: ns} }

// PeerServiceAccount matches spiffe://<td>/ns/<namespace>/sa/<account> in
// the trust domain of the service enforcing the rule.
func PeerServiceAccount(ns, account string) Peer {
	return Peer{kind: peerServiceAccount, ns: ns, sa: account}
}

func (p Peer) String() string {
	switch p.kind {
	case peerID:
		return "id " + p.id
	case peerPattern:
		return "pattern " + p.pattern
	case peerTrustDomain:
		return "trust domain " + p.td
	case peerNamespace:
		return "namespace " + p.ns
	case peerServiceAccount:
		return "service account " + p.ns + "/" + p.sa
	}
	return "invalid peer"
}

// segments splits a SPIFFE ID path ("/a/b") into its segments; "" has none.
func segments(path string) []string {
	if path == "" {
		return nil
	}
	return strings.Split(path[1:], "/")
}

func validSegment(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// check validates p.
func (p Peer) check() error {
	switch p.kind {
	case peerID:
		_, err := spiffeid.FromString(p.id)
		return err
	case peerPattern:
		td, path, ok := strings.Cut(strings.TrimPrefix(p.pattern, "spiffe://"), "/")
		if !strings.HasPrefix(p.pattern, "spiffe://") || !ok {
			return fmt.Errorf("pattern %q: want spiffe://<trust domain>/<path>", p.pattern)
		}
		if _, err := spiffeid.TrustDomainFromString(td); err != nil {
			return fmt.Errorf("pattern %q: %w", p.pattern, err)
		}
		segs := strings.Split(path, "/")
		for i, s := range segs {
			if s == "**" && i == len(segs)-1 || s == "*" {
				continue
			}
			if !validSegment(s) {
				return fmt.Errorf("pattern %q: segment %q: want letters, digits, '-', '.', '_', or '*', or a final '**'", p.pattern, s)
			}
		}
		return nil
	case peerTrustDomain:
		_, err := spiffeid.TrustDomainFromString(p.td)
		return err
	case peerNamespace:
		if !validSegment(p.ns) {
			return fmt.Errorf("namespace %q is not a path segment", p.ns)
		}
		return nil
	case peerServiceAccount:
		if !validSegment(p.ns) || !validSegment(p.sa) {
			return fmt.Errorf("service account %q/%q is not two path segments", p.ns, p.sa)
		}
		return nil
	}
	return errors.New("empty peer: use PeerID, PeerPattern, PeerTrustDomain, PeerNamespace or PeerServiceAccount")
}

// methodPattern is a compiled Rule.Methods entry.
type methodPattern struct {
	verb string   // HTTP method, "*" for any; "" for gRPC
	segs []string // path segments with "*" and a final "**"
}

func compileMethod(m string) (methodPattern, error) {
	if m == ConnectionMethod {
		// No call has this verb: HTTP methods are tokens, which
		// exclude parentheses, and gRPC calls have none.
		return methodPattern{verb: ConnectionMethod}, nil
	}
	verb, path, isHTTP := strings.Cut(m, " ")
	if !isHTTP {
		verb, path = "", m
	}
	if !strings.HasPrefix(path, "/") {
		return methodPattern{}, fmt.Errorf("method %q: want \"/package.Service/Method\" or \"VERB /path\"", m)
	}
	if isHTTP && verb == "" {
		return methodPattern{}, fmt.Errorf("method %q: empty HTTP method", m)
	}
	segs := segments(path)
	for i, s := range segs {
		if s == "" && i != len(segs)-1 {
			return methodPattern{}, fmt.Errorf("method %q: empty path segment", m)
		}
		if s == "**" && i != len(segs)-1 {
			return methodPattern{}, fmt.Errorf("method %q: \"**\" only at the end", m)
		}
	}
	return methodPattern{verb: verb, segs: segs}, nil
}

// matches reports whether the call "verb path" (verb "" for gRPC)
// matches.
func (m methodPattern) matches(verb, path string) bool {
	if m.verb != "*" && m.verb != verb {
		return false
	}
	return matchSegments(m.segs, path)
}

// CanonicalPath reports whether path is absolute and has no "." or ".."
// segment and no empty segment except a final one ("/a/" is canonical,
// "/a//b" and "/a/./b" are not): the form in which every router reads the
// same path.
func CanonicalPath(path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	rest := path[1:]
	for {
		seg, tail, more := strings.Cut(rest, "/")
		if seg == "." || seg == ".." || seg == "" && more {
			return false
		}
		if !more {
			return true
		}
		rest = tail
	}
}

// matchSegments matches a path ("/a/b") against pattern segments without
// allocating.
func matchSegments(pattern []string, path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	rest := path[1:]
	for i, p := range pattern {
		if p == "**" {
			return rest != ""
		}
		seg, tail, more := strings.Cut(rest, "/")
		if p != "*" && p != seg || p == "*" && seg == "" {
			return false
		}
		if i == len(pattern)-1 {
			return !more
		}
		if !more {
			return false
		}
		rest = tail
	}
	return false
}
