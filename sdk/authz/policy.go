package authz

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// PolicyRules turns central AccessPolicies into rules, checking each;
// audit-mode policies are left out (ShadowRules takes them).
func PolicyRules(policies []*typesv1.AccessPolicy) ([]Rule, error) {
	return modeRules(policies, false)
}

// ShadowRules turns the audit-mode AccessPolicies into rules
// (Authorizer.SetShadow).
func ShadowRules(policies []*typesv1.AccessPolicy) ([]Rule, error) {
	return modeRules(policies, true)
}

// Audit reports whether a policy is in audit mode.
func Audit(p *typesv1.AccessPolicy) bool { return p.GetMode() == "audit" }

func modeRules(policies []*typesv1.AccessPolicy, audit bool) ([]Rule, error) {
	var out []Rule
	for _, p := range policies {
		if Audit(p) != audit {
			continue
		}
		rules, err := policyRules(p)
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.GetName(), err)
		}
		out = append(out, rules...)
	}
	return out, nil
}

func policyRules(p *typesv1.AccessPolicy) ([]Rule, error) {
	var out []Rule
	for i, pr := range p.GetRules() {
		var r Rule
		switch pr.GetAction() {
		case "allow":
			r.Action = ActionAllow
		case "deny":
			r.Action = ActionDeny
		default:
			return nil, fmt.Errorf("rules[%d].action: %q: want allow or deny", i, pr.GetAction())
		}
		for j, pp := range pr.GetPeers() {
			peer, err := policyPeer(pp)
			if err != nil {
				return nil, fmt.Errorf("rules[%d].peers[%d]: %w", i, j, err)
			}
			r.Peers = append(r.Peers, peer)
		}
		r.Methods = pr.GetMethods()
		for j, src := range pr.GetFrom() {
			f := Source{Namespace: src.GetNamespace(), Node: src.GetNode()}
			if err := f.check(); err != nil {
				return nil, fmt.Errorf("rules[%d].from[%d]: %w", i, j, err)
			}
			r.From = append(r.From, f)
		}
		for j, tw := range pr.GetWhen() {
			w, err := policyWindow(tw)
			if err != nil {
				return nil, fmt.Errorf("rules[%d].when[%d]: %w", i, j, err)
			}
			r.When = append(r.When, w)
		}
		out = append(out, r)
	}
	return out, nil
}

// policyWindow reads a TimeWindow; its time zone must be in the
// service's zone database (a scratch image needs time/tzdata).
func policyWindow(tw *typesv1.TimeWindow) (Window, error) {
	w := Window{Start: tw.GetStart(), End: tw.GetEnd()}
	for _, d := range tw.GetDays() {
		day, err := parseDay(d)
		if err != nil {
			return Window{}, err
		}
		w.Days = append(w.Days, day)
	}
	if z := tw.GetTimeZone(); z != "" {
		loc, err := time.LoadLocation(z)
		if err != nil {
			return Window{}, fmt.Errorf("timeZone %q: %v", z, err)
		}
		w.Location = loc
	}
	if _, err := compileWindow(w); err != nil {
		return Window{}, err
	}
	return w, nil
}

func policyPeer(pp *typesv1.PolicyPeer) (Peer, error) {
	var peers []Peer
	if pp.GetId() != "" {
		peers = append(peers, PeerID(pp.GetId()))
	}
	if pp.GetPattern() != "" {
		peers = append(peers, PeerPattern(pp.GetPattern()))
	}
	if pp.GetTrustDomain() != "" {
		peers = append(peers, PeerTrustDomain(pp.GetTrustDomain()))
	}
	if pp.GetNamespace() != "" {
		peers = append(peers, PeerNamespace(pp.GetNamespace()))
	}
	if sa := pp.GetServiceAccount(); sa != "" {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok {
			return Peer{}, fmt.Errorf("serviceAccount %q: want namespace/name", sa)
		}
		peers = append(peers, PeerServiceAccount(ns, name))
	}
	if len(peers) != 1 {
		return Peer{}, errors.New("set exactly one of id, pattern, trustDomain, namespace, serviceAccount")
	}
	return peers[0], peers[0].check()
}

// CheckPolicy validates an AccessPolicy for a server in trust domain td.
func CheckPolicy(td spiffeid.TrustDomain, p *typesv1.AccessPolicy) error {
	if p.GetName() == "" || len(p.GetName()) > 253 {
		return errors.New("name: want 1 to 253 characters")
	}
	if err := CheckTarget(p.GetTarget()); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	// Servers of other trust domains never see these policies.
	if tdName, _, _ := strings.Cut(strings.TrimPrefix(p.GetTarget(), "spiffe://"), "/"); tdName != td.Name() {
		return fmt.Errorf("target: %q is in trust domain %s, not in %s", p.GetTarget(), tdName, td.Name())
	}
	if len(p.GetRules()) == 0 {
		return errors.New("rules: at least one")
	}
	if m := p.GetMode(); m != "" && m != "enforce" && m != "audit" {
		return fmt.Errorf("mode: %q: want enforce or audit", m)
	}
	rules, err := policyRules(p)
	if err != nil {
		return err
	}
	_, err = compile(td, nil, rules)
	return err
}

// CheckTarget validates a policy target: a SPIFFE ID or a pattern.
func CheckTarget(target string) error {
	if strings.Contains(target, "*") {
		return PeerPattern(target).check()
	}
	_, err := spiffeid.FromString(target)
	return err
}

// TargetMatches reports whether a policy target (a SPIFFE ID or a
// pattern, already checked) names id.
func TargetMatches(target string, id spiffeid.ID) bool {
	if !strings.Contains(target, "*") {
		return target == id.String()
	}
	td, path, _ := strings.Cut(strings.TrimPrefix(target, "spiffe://"), "/")
	if td != id.TrustDomain().Name() {
		return false
	}
	return matchSegments(strings.Split(path, "/"), id.Path())
}
