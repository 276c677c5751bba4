// Package revocations holds the CA's rules for revocations: what an
// operator may ask to revoke, and the times the CA fills in (when it
// expires, the notBefore mark peers check), whether the request comes
// through the admin API or a Revocation object of the cluster.
package revocations

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/internal/entry"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// maxReason bounds a revocation's reason.
const maxReason = 512

// DefaultCAKeyGrace is how long after a CA key's revocation peers start to
// refuse it, unless the operator says otherwise: agents re-issue
// everything under the key first, so that peers that are not revoked
// never refuse each other (taint, then revoke).
const DefaultCAKeyGrace = 10 * time.Second

// MaxGrace bounds the grace an operator may give a revocation.
const MaxGrace = time.Hour

// New checks what an operator asked to revoke through the admin API
// and fills in the rest at now: a new ID, and what Complete sets.
func New(req *typesv1.Revocation, now time.Time) (*typesv1.Revocation, error) {
	if req == nil {
		return nil, errors.New("required")
	}
	if req.GetId() != "" || req.GetCreatedAt() != 0 || req.GetExpiresAt() != 0 || req.GetRevision() != 0 || req.GetNotBeforeUnder() != 0 || req.GetEnforceAfter() != 0 {
		return nil, errors.New("id, created_at, expires_at, enforce_after, not_before_under and revision are the CA's to set")
	}
	id := make([]byte, 8)
	rand.Read(id)
	r := proto.CloneOf(req)
	r.Id = "rv-" + hex.EncodeToString(id)
	return Complete(r, now)
}

// Complete checks a revocation made at created (what it names, its
// reason) and returns it with issued_before (created unless given, and
// never later), created_at, expires_at (when everything it covers has
// expired: no SVID lives longer than entry.MaxTTL; a CA key's revocation
// may already hold a later one, its key's expiry) and not_before_under.
// A CA key's revocation names ca_key, and serial too once the CA knows it.
func Complete(req *typesv1.Revocation, created time.Time) (*typesv1.Revocation, error) {
	r := proto.CloneOf(req)
	if len(r.GetReason()) > maxReason {
		return nil, fmt.Errorf("reason: longer than %d bytes", maxReason)
	}
	named := 0
	for _, v := range []string{r.GetSerial(), r.GetSpiffeId(), r.GetAgentId(), r.GetCaKey()} {
		if v != "" {
			named++
		}
	}
	if named != 1 && (named != 2 || r.GetSerial() == "" || r.GetCaKey() == "") {
		return nil, errors.New("give one of serial, spiffe_id, agent_id and ca_key")
	}
	if k := r.GetCaKey(); k != "" {
		if len(k) > 128 || strings.Trim(strings.ToLower(k), "0123456789abcdef") != "" {
			return nil, fmt.Errorf("ca_key: %q is not a key ID (hex, as signet ca status shows it)", k)
		}
		r.CaKey = strings.ToLower(k)
	}
	if r.GetEnforceAfter() < 0 {
		return nil, errors.New("enforce_after: negative")
	}
	if r.GetCaKey() != "" {
		if r.GetIssuedBefore() != 0 {
			return nil, errors.New("issued_before: only with spiffe_id or agent_id")
		}
	}
	if r.GetSerial() != "" {
		serial, err := NormalizeSerial(r.GetSerial())
		if err != nil {
			return nil, err
		}
		if r.GetIssuedBefore() != 0 {
			return nil, errors.New("issued_before: only with spiffe_id or agent_id")
		}
		r.Serial = serial
	} else if r.GetCaKey() == "" {
		field, value := "spiffe_id", r.GetSpiffeId()
		if r.GetAgentId() != "" {
			field, value = "agent_id", r.GetAgentId()
		}
		id, err := spiffeid.FromString(value)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", field, err)
		}
		if field == "agent_id" {
			if !strings.HasPrefix(id.Path(), "/signet/agent/") {
				return nil, fmt.Errorf("agent_id: %s is not an agent's ID (spiffe://<trust domain>/signet/agent/...)", id)
			}
			r.AgentId = id.String()
		} else {
			r.SpiffeId = id.String()
		}
		switch ib := r.GetIssuedBefore(); {
		case ib == 0:
			r.IssuedBefore = created.Unix()
		case ib > created.Unix():
			return nil, errors.New("issued_before: in the future (SVIDs not issued yet cannot be revoked)")
		}
		// Issued in or before the second T: notBefore (whole seconds, as
		// X.509 writes them) at most T - Backdate. The CA gives the SVIDs
		// it issues for the ID (or the agent) afterwards, in that second
		// too, a later notBefore (NotBeforeFloor).
		r.NotBeforeUnder = r.GetIssuedBefore() - int64(signer.Backdate/time.Second) + 1
	}
	r.CreatedAt = created.Unix()
	from := created.Unix()
	if r.GetIssuedBefore() != 0 {
		from = r.GetIssuedBefore()
	}
	r.ExpiresAt = max(r.GetExpiresAt(), from+int64(entry.MaxTTL/time.Second))
	return r, nil
}

// NormalizeSerial writes an X.509 serial number as revocations hold it:
// lower-case hex without leading zeros. It takes hex, with or without
// colons or a 0x prefix (as openssl and browsers print serials).
func NormalizeSerial(s string) (string, error) {
	h := strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(strings.ReplaceAll(strings.TrimSpace(s), ":", ""), "0x"), "0X"))
	n, ok := new(big.Int).SetString(h, 16)
	if !ok || h == "" || n.Sign() <= 0 || n.BitLen() > 160 {
		return "", fmt.Errorf("serial: %q is not a positive serial number in hex of at most 20 bytes", s)
	}
	return n.Text(16), nil
}

// NotBeforeFloor returns, per SPIFFE ID with a revocation in rs (of the
// ID, or of the agent), the earliest NotBefore an SVID issued for it now
// may have not to be covered: signer.X509Params.NotBeforeAtLeast. For an
// agent it also holds for the SVIDs the agent mints.
func NotBeforeFloor(rs []*typesv1.Revocation) map[string]time.Time {
	out := map[string]time.Time{}
	for _, r := range rs {
		id := r.GetSpiffeId() + r.GetAgentId()
		if id == "" {
			continue
		}
		if t := time.Unix(r.GetNotBeforeUnder(), 0); t.After(out[id]) {
			out[id] = t
		}
	}
	return out
}
