// Package revocation decides whether a certificate chain is revoked: the
// rule that the SDK enforces on its peers and by which the agent re-mints
// its workloads' revoked SVIDs, from the revocations the CA distributes
// (signet.types.v1.Revocation).
package revocation

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// ErrRevoked is the error of a chain a revocation covers.
var ErrRevoked = errors.New("certificate is revoked")

// Set is what a list of revocations revokes: certificates by serial (an
// SVID, or a CA certificate and every chain through it), and SVIDs of an
// ID issued before a time. The zero Set, and a nil one, revoke nothing.
//
// A revocation may name when peers start to enforce it (enforce_after): a
// CA key's revocation gives agents time to re-issue first. Check enforces
// from then; Covers says what a revocation covers whatever the time, for
// the agent to re-mint at once.
type Set struct {
	serials map[string]byID // serial (lower-case hex) -> revocation
	keys    map[string]byID // CA key ID (hex subject key identifier) -> revocation
	ids     map[string]byID
	agents  map[string]byID // AgentMark -> revocation
	n       int
	next    []time.Time // enforce_after times, to find the next one
}

// AgentMark is what the CA puts in the subject's organizational units of
// every X.509-SVID an agent mints, so that a revocation of the agent
// covers them: "signet-agent:" and the first 16 bytes of the SHA-256 of
// the agent's SPIFFE ID, in hex.
func AgentMark(agentID string) string {
	sum := sha256.Sum256([]byte(agentID))
	return "signet-agent:" + hex.EncodeToString(sum[:16])
}

type byID struct {
	id string
	// notBeforeUnder: SVIDs whose NotBefore is earlier are revoked.
	notBeforeUnder time.Time
	// enforceAfter: peers refuse from then on.
	enforceAfter time.Time
}

// New returns the set of rs.
func New(rs []*typesv1.Revocation) *Set {
	s := &Set{serials: map[string]byID{}, keys: map[string]byID{}, ids: map[string]byID{}, agents: map[string]byID{}, n: len(rs)}
	add := func(m map[string]byID, key string, r *typesv1.Revocation) {
		b := byID{id: r.GetId(), notBeforeUnder: time.Unix(r.GetNotBeforeUnder(), 0), enforceAfter: time.Unix(r.GetEnforceAfter(), 0)}
		old, ok := m[key]
		if !ok || b.enforceAfter.Before(old.enforceAfter) || (b.enforceAfter.Equal(old.enforceAfter) && b.notBeforeUnder.After(old.notBeforeUnder)) {
			m[key] = b
		}
	}
	for _, r := range rs {
		if r.GetEnforceAfter() != 0 {
			s.next = append(s.next, time.Unix(r.GetEnforceAfter(), 0))
		}
		if r.GetSerial() != "" {
			add(s.serials, r.GetSerial(), r)
		}
		if r.GetCaKey() != "" {
			add(s.keys, r.GetCaKey(), r)
		}
		if r.GetSpiffeId() != "" {
			add(s.ids, r.GetSpiffeId(), r)
		}
		if r.GetAgentId() != "" {
			// The agent's own SVIDs, and those it minted.
			add(s.ids, r.GetAgentId(), r)
			add(s.agents, AgentMark(r.GetAgentId()), r)
		}
	}
	return s
}

// NextEnforcement returns the earliest enforce_after later than now, or
// the zero time: when Check refuses more than it does at now.
func (s *Set) NextEnforcement(now time.Time) time.Time {
	var next time.Time
	if s == nil {
		return next
	}
	for _, t := range s.next {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// Len is the number of revocations in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Check returns an error wrapping ErrRevoked, naming the revocation, if
// one in force covers the chain (leaf first; intermediates and root may
// follow).
func (s *Set) Check(chain []*x509.Certificate) error { return s.CheckAt(chain, time.Now()) }

// Covers is Check whatever the revocations' enforce_after: what the agent
// re-mints at once.
func (s *Set) Covers(chain []*x509.Certificate) error {
	return s.CheckAt(chain, time.Unix(1<<62, 0))
}

// CheckAt is Check at now.
func (s *Set) CheckAt(chain []*x509.Certificate, now time.Time) error {
	if s == nil {
		return nil
	}
	enforced := func(b byID) bool { return !now.Before(b.enforceAfter) }
	for _, c := range chain {
		if r, ok := s.serials[c.SerialNumber.Text(16)]; ok && enforced(r) {
			return fmt.Errorf("%w: certificate %x (%s) by revocation %s", ErrRevoked, c.SerialNumber, c.Subject, r.id)
		}
		// A CA key: its certificate, and what it signed, whether or not the
		// peer sent the certificate (a root never is).
		for _, kid := range [][]byte{c.SubjectKeyId, c.AuthorityKeyId} {
			if len(kid) == 0 {
				continue
			}
			if r, ok := s.keys[hex.EncodeToString(kid)]; ok && enforced(r) {
				return fmt.Errorf("%w: CA key %x by revocation %s", ErrRevoked, kid, r.id)
			}
		}
	}
	if len(chain) == 0 {
		return nil
	}
	leaf := chain[0]
	if len(leaf.URIs) == 1 {
		if r, ok := s.ids[leaf.URIs[0].String()]; ok && enforced(r) && leaf.NotBefore.Before(r.notBeforeUnder) {
			return fmt.Errorf("%w: %s issued at %s by revocation %s", ErrRevoked, leaf.URIs[0], leaf.NotBefore.UTC().Format(time.RFC3339), r.id)
		}
	}
	for _, ou := range leaf.Subject.OrganizationalUnit {
		if r, ok := s.agents[ou]; ok && enforced(r) && leaf.NotBefore.Before(r.notBeforeUnder) {
			return fmt.Errorf("%w: minted by a revoked agent, at %s, by revocation %s", ErrRevoked, leaf.NotBefore.UTC().Format(time.RFC3339), r.id)
		}
	}
	return nil
}
