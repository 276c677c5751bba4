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
type Set struct {
	serials map[string]string // serial (lower-case hex) -> revocation ID
	ids     map[string]byID
	agents  map[string]byID // AgentMark -> revocation
	n       int
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
}

// New returns the set of rs.
func New(rs []*typesv1.Revocation) *Set {
	s := &Set{serials: map[string]string{}, ids: map[string]byID{}, agents: map[string]byID{}, n: len(rs)}
	add := func(m map[string]byID, key string, r *typesv1.Revocation) {
		t := time.Unix(r.GetNotBeforeUnder(), 0)
		if old, ok := m[key]; !ok || t.After(old.notBeforeUnder) {
			m[key] = byID{id: r.GetId(), notBeforeUnder: t}
		}
	}
	for _, r := range rs {
		if r.GetSerial() != "" {
			s.serials[r.GetSerial()] = r.GetId()
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

// Len is the number of revocations in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return s.n
}

// Check returns an error wrapping ErrRevoked, naming the revocation, if
// one covers the chain (leaf first; intermediates and root may follow).
func (s *Set) Check(chain []*x509.Certificate) error {
	if s == nil {
		return nil
	}
	for _, c := range chain {
		if rid, ok := s.serials[c.SerialNumber.Text(16)]; ok {
			return fmt.Errorf("%w: certificate %x (%s) by revocation %s", ErrRevoked, c.SerialNumber, c.Subject, rid)
		}
	}
	if len(chain) == 0 {
		return nil
	}
	leaf := chain[0]
	if len(leaf.URIs) == 1 {
		if r, ok := s.ids[leaf.URIs[0].String()]; ok && leaf.NotBefore.Before(r.notBeforeUnder) {
			return fmt.Errorf("%w: %s issued at %s by revocation %s", ErrRevoked, leaf.URIs[0], leaf.NotBefore.UTC().Format(time.RFC3339), r.id)
		}
	}
	for _, ou := range leaf.Subject.OrganizationalUnit {
		if r, ok := s.agents[ou]; ok && leaf.NotBefore.Before(r.notBeforeUnder) {
			return fmt.Errorf("%w: minted by a revoked agent, at %s, by revocation %s", ErrRevoked, leaf.NotBefore.UTC().Format(time.RFC3339), r.id)
		}
	}
	return nil
}
