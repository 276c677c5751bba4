// Package authz decides whether a peer may call a service: deny by
// default, a matching deny rule always wins, else a matching allow rule
// allows. Rules are declared in code (Allow, Deny and the Peer functions)
// or come from central AccessPolicies (PolicyRules), and one Authorizer
// holds both. It knows nothing of transports or audit: the sdk package
// enforces its decisions on TLS handshakes, gRPC calls and HTTP requests,
// and OnDecision lets a caller see every decision made.
package authz

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Authorizer decides whether a peer may call, deny by default: if any
// deny rule matches the peer and the call, the call is denied; else if any
// allow rule matches, it is allowed; else it is denied. Rules declared in
// code and central policies (SetCentral) are one rule set under that
// decision. An Authorizer with no rules denies everyone. It is safe for
// concurrent use, and central rules can change while it serves.
type Authorizer struct {
	td   spiffeid.TrustDomain
	code []Rule
	set  atomic.Pointer[ruleSet]
	// shadow is the code rules with the audit-mode rules (SetShadow), or
	// nil: decisions it would make differently are reported, not made.
	shadow atomic.Pointer[ruleSet]
	// hooks are the OnDecision functions, copied on write.
	hooks atomic.Pointer[[]*hook]
	mu    sync.Mutex // serializes writers of hooks
	// counts of decisions, for Counts.
	allowed, denied, refused atomic.Uint64
	// now is the clock of rules with windows.
	now atomic.Pointer[func() time.Time]
}

// Decision is one decision of Check or CheckConnect.
type Decision struct {
	Peer spiffeid.ID
	// Method is the gRPC method, "VERB /path" for HTTP, or "(handshake)"
	// for a peer refused at the TLS handshake.
	Method  string
	Allowed bool
	// Reason says why a peer was refused at the handshake.
	Reason string
	// Shadow marks a call the audit-mode rules (SetShadow) would deny;
	// Allowed is false, and the call itself was decided by the rules in
	// force, in a decision of its own.
	Shadow bool
}

// ReasonNoCall is the Reason of a handshake refusal.
const ReasonNoCall = "no rule allows any call of this peer"

// HandshakeMethod is the Method of a decision made at the TLS handshake.
const HandshakeMethod = "(handshake)"

// ConnectionMethod is the method under which the SDK counts the traffic
// of a plain TLS connection (sdk.Listen), which carries no calls it can
// see. In a rule's Methods it allows the peer to connect to such a
// listener and no gRPC or HTTP call: no call's method matches it.
const ConnectionMethod = "(connection)"

type hook struct{ fn func(Decision) }

// New returns an Authorizer for a service in trust domain td
// (PeerNamespace and PeerServiceAccount match in td) with rules declared
// in code.
func New(td spiffeid.TrustDomain, rules ...Rule) (*Authorizer, error) {
	if td.IsZero() {
		return nil, errors.New("authz: trust domain is required")
	}
	a := &Authorizer{td: td, code: append([]Rule(nil), rules...)}
	now := time.Now
	a.now.Store(&now)
	set, err := compile(td, a.code, nil)
	if err != nil {
		return nil, err
	}
	a.set.Store(set)
	return a, nil
}

// SetShadow sets the audit-mode rules: with the rules declared in code
// they form a second rule set that decides nothing, but every call it
// would deny is passed to OnDecision's functions as a Shadow decision.
// No rules (nil) turns it off. On error nothing changes.
func (a *Authorizer) SetShadow(rules []Rule) error {
	if len(rules) == 0 {
		a.shadow.Store(nil)
		return nil
	}
	set, err := compile(a.td, a.code, rules)
	if err != nil {
		return err
	}
	a.shadow.Store(set)
	return nil
}

// SetClock makes rules with windows (Rule.When) read the time from now
// (tests inject a clock); the default is time.Now.
func (a *Authorizer) SetClock(now func() time.Time) { a.now.Store(&now) }

// clock returns the current clock.
func (a *Authorizer) clock() func() time.Time { return *a.now.Load() }

// SetCentral replaces the central rules (from AccessPolicies), keeping the
// rules declared in code. On error the rules in force do not change.
func (a *Authorizer) SetCentral(rules []Rule) error {
	set, err := compile(a.td, a.code, rules)
	if err != nil {
		return err
	}
	a.set.Store(set)
	return nil
}

// OnDecision makes fn see every decision of Check and CheckConnect from
// now on, beside the functions added before, until the returned function
// removes it. fn runs on the caller's path: it must be quick and must not
// block.
func (a *Authorizer) OnDecision(fn func(Decision)) (remove func()) {
	h := &hook{fn: fn}
	a.mu.Lock()
	defer a.mu.Unlock()
	var hs []*hook
	if cur := a.hooks.Load(); cur != nil {
		hs = append(hs, *cur...)
	}
	hs = append(hs, h)
	a.hooks.Store(&hs)
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		cur := a.hooks.Load()
		if cur == nil {
			return
		}
		var kept []*hook
		for _, o := range *cur {
			if o != h {
				kept = append(kept, o)
			}
		}
		a.hooks.Store(&kept)
	}
}

func (a *Authorizer) decided(d Decision) {
	switch {
	case d.Allowed:
		a.allowed.Add(1)
	case d.Method == HandshakeMethod:
		a.refused.Add(1)
	default:
		a.denied.Add(1)
	}
	if hs := a.hooks.Load(); hs != nil {
		for _, h := range *hs {
			h.fn(d)
		}
	}
}

// Counts returns how many calls Check allowed and denied, and how many
// peers CheckConnect refused at the handshake, since New: for a service's
// metrics.
func (a *Authorizer) Counts() (allowed, denied, refusedAtHandshake uint64) {
	return a.allowed.Load(), a.denied.Load(), a.refused.Load()
}

// Allowed decides a gRPC call (method is the full method,
// "/pkg.Service/Method"). The decision is not passed to OnDecision.
func (a *Authorizer) Allowed(peer spiffeid.ID, method string) bool {
	return a.set.Load().decide(peer, Attributes{}, "", method, a.clock())
}

// AllowedHTTP decides an HTTP request. The decision is not passed to
// OnDecision.
func (a *Authorizer) AllowedHTTP(peer spiffeid.ID, verb, path string) bool {
	return a.set.Load().decide(peer, Attributes{}, verb, path, a.clock())
}

// Check decides a call as Allowed (verb "") or AllowedHTTP do, and passes
// the decision to OnDecision's function. Servers call it once per call.
func (a *Authorizer) Check(peer spiffeid.ID, verb, path string) bool {
	return a.CheckFrom(peer, Attributes{}, verb, path)
}

// CheckFrom is Check for a peer whose certificate says where it runs
// (AttributesOf), for rules with From; the SDK's servers call it.
func (a *Authorizer) CheckFrom(peer spiffeid.ID, attrs Attributes, verb, path string) bool {
	clock := a.clock()
	ok := a.set.Load().decide(peer, attrs, verb, path, clock)
	m := path
	if verb != "" {
		m = verb + " " + path
	}
	a.decided(Decision{Peer: peer, Method: m, Allowed: ok})
	if sh := a.shadow.Load(); sh != nil && !sh.decide(peer, attrs, verb, path, clock) {
		a.shadowDenied(Decision{Peer: peer, Method: m, Shadow: true})
	}
	return ok
}

// shadowDenied passes a shadow denial to the hooks, without counting it.
func (a *Authorizer) shadowDenied(d Decision) {
	if hs := a.hooks.Load(); hs != nil {
		for _, h := range *hs {
			h.fn(d)
		}
	}
}

// MayConnect reports whether some call of peer could be allowed: no deny
// rule for all methods (or for ConnectionMethod) matches it, and some
// allow rule does. Handshakes of other peers are refused.
func (a *Authorizer) MayConnect(peer spiffeid.ID) bool {
	return a.set.Load().mayConnect(peer, Attributes{}, a.clock())
}

// MayConnectFrom is MayConnect for a peer with attributes.
func (a *Authorizer) MayConnectFrom(peer spiffeid.ID, attrs Attributes) bool {
	return a.set.Load().mayConnect(peer, attrs, a.clock())
}

// CheckConnect decides a TLS handshake as MayConnect does, and passes a
// refusal to OnDecision's function (an accepted handshake is no decision
// yet: each call is checked).
func (a *Authorizer) CheckConnect(peer spiffeid.ID) bool {
	return a.CheckConnectFrom(peer, Attributes{})
}

// CheckConnectFrom is CheckConnect for a peer with attributes.
func (a *Authorizer) CheckConnectFrom(peer spiffeid.ID, attrs Attributes) bool {
	ok := a.MayConnectFrom(peer, attrs)
	if !ok {
		a.decided(Decision{Peer: peer, Method: HandshakeMethod, Allowed: false, Reason: ReasonNoCall})
	}
	return ok
}

// crule is a compiled rule.
type crule struct {
	deny    bool
	methods []methodPattern // none: every method
	when    []cwindow       // none: at any time
	from    []Source        // none: from anywhere
}

// onConnection reports whether the rule names ConnectionMethod: a deny
// rule that does refuses the handshake.
func (r *crule) onConnection() bool {
	for _, m := range r.methods {
		if m.verb == ConnectionMethod {
			return true
		}
	}
	return false
}

// now reads a clock once, and only if asked.
type now struct {
	clock func() time.Time
	t     time.Time
}

func (n *now) get() time.Time {
	if n.t.IsZero() {
		n.t = n.clock()
	}
	return n.t
}

// inWindow reports whether the rule applies at the time of n.
func (r *crule) inWindow(n *now) bool {
	if len(r.when) == 0 {
		return true
	}
	t := n.get()
	for _, w := range r.when {
		if w.contains(t) {
			return true
		}
	}
	return false
}

func (r *crule) matchesCall(verb, path string) bool {
	if len(r.methods) == 0 {
		return true
	}
	for _, m := range r.methods {
		if m.matches(verb, path) {
			return true
		}
	}
	return false
}

// trieNode indexes pattern rules by path segment.
type trieNode struct {
	children map[string]*trieNode
	star     *trieNode
	rest     []*crule // a "**" here: one or more further segments
	end      []*crule // the pattern ends here
}

func (n *trieNode) add(segs []string, r *crule) {
	for i, s := range segs {
		switch {
		case s == "**" && i == len(segs)-1:
			n.rest = append(n.rest, r)
			return
		case s == "*":
			if n.star == nil {
				n.star = &trieNode{}
			}
			n = n.star
		default:
			if n.children == nil {
				n.children = map[string]*trieNode{}
			}
			c := n.children[s]
			if c == nil {
				c = &trieNode{}
				n.children[s] = c
			}
			n = c
		}
	}
	n.end = append(n.end, r)
}

// walk calls visit with every rule list whose pattern matches path
// ("a/b/c", without the leading slash).
func (n *trieNode) walk(path string, visit func([]*crule) bool) bool {
	if path == "" {
		return visit(n.end)
	}
	if len(n.rest) > 0 && !visit(n.rest) {
		return false
	}
	seg, tail, more := strings.Cut(path, "/")
	if !more {
		tail = ""
	}
	if c := n.children[seg]; c != nil && !c.walk(tail, visit) {
		return false
	}
	if n.star != nil && !n.star.walk(tail, visit) {
		return false
	}
	return true
}

// ruleSet is the compiled form of every rule, indexed by what a peer is
// matched on, so that a decision looks at the rules that can match and
// not at all of them.
type ruleSet struct {
	td       string
	exact    map[string][]*crule
	tds      map[string][]*crule
	ns       map[string][]*crule            // namespace in the local trust domain
	sa       map[string]map[string][]*crule // namespace -> account
	patterns map[string]*trieNode           // by trust domain
}

func compile(td spiffeid.TrustDomain, code, central []Rule) (*ruleSet, error) {
	s := &ruleSet{td: td.Name(), exact: map[string][]*crule{}, tds: map[string][]*crule{}, ns: map[string][]*crule{},
		sa: map[string]map[string][]*crule{}, patterns: map[string]*trieNode{}}
	for i, r := range append(append([]Rule(nil), code...), central...) {
		where := fmt.Sprintf("rule %d", i)
		if i >= len(code) {
			where = fmt.Sprintf("central rule %d", i-len(code))
		}
		if r.Action != ActionAllow && r.Action != ActionDeny {
			return nil, fmt.Errorf("authz: %s: action must be allow or deny", where)
		}
		if len(r.Peers) == 0 {
			return nil, fmt.Errorf("authz: %s: no peers", where)
		}
		cr := &crule{deny: r.Action == ActionDeny, from: r.From}
		for _, f := range r.From {
			if err := f.check(); err != nil {
				return nil, fmt.Errorf("authz: %s: %w", where, err)
			}
		}
		for j, w := range r.When {
			cw, err := compileWindow(w)
			if err != nil {
				return nil, fmt.Errorf("authz: %s: when[%d]: %w", where, j, err)
			}
			cr.when = append(cr.when, cw)
		}
		for _, m := range r.Methods {
			mp, err := compileMethod(m)
			if err != nil {
				return nil, fmt.Errorf("authz: %s: %w", where, err)
			}
			cr.methods = append(cr.methods, mp)
		}
		for _, p := range r.Peers {
			if err := p.check(); err != nil {
				return nil, fmt.Errorf("authz: %s: %w", where, err)
			}
			switch p.kind {
			case peerID:
				s.exact[p.id] = append(s.exact[p.id], cr)
			case peerTrustDomain:
				s.tds[p.td] = append(s.tds[p.td], cr)
			case peerNamespace:
				s.ns[p.ns] = append(s.ns[p.ns], cr)
			case peerServiceAccount:
				if s.sa[p.ns] == nil {
					s.sa[p.ns] = map[string][]*crule{}
				}
				s.sa[p.ns][p.sa] = append(s.sa[p.ns][p.sa], cr)
			case peerPattern:
				ptd, path, _ := strings.Cut(strings.TrimPrefix(p.pattern, "spiffe://"), "/")
				root := s.patterns[ptd]
				if root == nil {
					root = &trieNode{}
					s.patterns[ptd] = root
				}
				root.add(strings.Split(path, "/"), cr)
			}
		}
	}
	return s, nil
}

// visitPeer calls visit with each list of rules that match peer, until
// visit returns false.
func (s *ruleSet) visitPeer(peer spiffeid.ID, visit func([]*crule) bool) {
	if peer.IsZero() {
		return
	}
	if rs := s.exact[peer.String()]; len(rs) > 0 && !visit(rs) {
		return
	}
	td := peer.TrustDomain().Name()
	if rs := s.tds[td]; len(rs) > 0 && !visit(rs) {
		return
	}
	path := peer.Path()
	if td == s.td && (len(s.ns) > 0 || len(s.sa) > 0) {
		if ns, sa, ok := nsSA(path); ok {
			if rs := s.ns[ns]; len(rs) > 0 && !visit(rs) {
				return
			}
			if rs := s.sa[ns][sa]; len(rs) > 0 && !visit(rs) {
				return
			}
		}
	}
	if root := s.patterns[td]; root != nil && path != "" {
		root.walk(path[1:], visit)
	}
}

// nsSA reads "/ns/<ns>/sa/<sa>".
func nsSA(path string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(path, "/ns/")
	if !ok {
		return "", "", false
	}
	ns, rest, ok = strings.Cut(rest, "/")
	if !ok {
		return "", "", false
	}
	sa, ok = strings.CutPrefix(rest, "sa/")
	if !ok || sa == "" || strings.Contains(sa, "/") || ns == "" {
		return "", "", false
	}
	return ns, sa, true
}

// trusted returns the attributes of a peer that this trust domain's CA
// marked: a federated trust domain's CA may write anything into its
// SVIDs, so its peers run nowhere a from condition names.
func (s *ruleSet) trusted(peer spiffeid.ID, attrs Attributes) Attributes {
	if peer.TrustDomain().Name() != s.td {
		return Attributes{}
	}
	return attrs
}

func (s *ruleSet) decide(peer spiffeid.ID, attrs Attributes, verb, path string, clock func() time.Time) bool {
	// A path with "." or ".." segments or empty ones names another path
	// than it spells ("/public/../admin"): no rule decides for it, and no
	// "**" reaches past its prefix, nor does it slip past a deny rule.
	if !CanonicalPath(path) {
		return false
	}
	attrs = s.trusted(peer, attrs)
	allow, deny := false, false
	n := now{clock: clock}
	s.visitPeer(peer, func(rs []*crule) bool {
		for _, r := range rs {
			if r.matchesCall(verb, path) && r.inWindow(&n) && fromMatches(r.from, attrs) {
				if r.deny {
					deny = true
					return false
				}
				allow = true
			}
		}
		return true
	})
	return allow && !deny
}

func (s *ruleSet) mayConnect(peer spiffeid.ID, attrs Attributes, clock func() time.Time) bool {
	attrs = s.trusted(peer, attrs)
	allow, deny := false, false
	n := now{clock: clock}
	s.visitPeer(peer, func(rs []*crule) bool {
		for _, r := range rs {
			if !r.inWindow(&n) || !fromMatches(r.from, attrs) {
				continue
			}
			switch {
			case r.deny && (len(r.methods) == 0 || r.onConnection()):
				deny = true
				return false
			case !r.deny:
				allow = true
			}
		}
		return true
	})
	return allow && !deny
}
