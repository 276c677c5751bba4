package api

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

// NewRevocation checks what an operator asked to revoke and fills in the
// rest at now: its ID, issued_before (now unless given, and never later),
// and expires_at, when everything it covers has expired. No SVID lives
// longer than entry.MaxTTL.
func NewRevocation(req *typesv1.Revocation, now time.Time) (*typesv1.Revocation, error) {
	if req == nil {
		return nil, errors.New("required")
	}
	r := proto.CloneOf(req)
	if r.GetId() != "" || r.GetCreatedAt() != 0 || r.GetExpiresAt() != 0 || r.GetRevision() != 0 || r.GetNotBeforeUnder() != 0 {
		return nil, errors.New("id, created_at, expires_at, not_before_under and revision are the CA's to set")
	}
	if len(r.GetReason()) > maxReason {
		return nil, fmt.Errorf("reason: longer than %d bytes", maxReason)
	}
	switch {
	case (r.GetSerial() == "") == (r.GetSpiffeId() == ""):
		return nil, errors.New("give one of serial and spiffe_id")
	case r.GetSerial() != "":
		serial, err := NormalizeSerial(r.GetSerial())
		if err != nil {
			return nil, err
		}
		if r.GetIssuedBefore() != 0 {
			return nil, errors.New("issued_before: only with spiffe_id")
		}
		r.Serial = serial
	default:
		id, err := spiffeid.FromString(r.GetSpiffeId())
		if err != nil {
			return nil, fmt.Errorf("spiffe_id: %v", err)
		}
		r.SpiffeId = id.String()
		switch ib := r.GetIssuedBefore(); {
		case ib == 0:
			r.IssuedBefore = now.Unix()
		case ib > now.Unix():
			return nil, errors.New("issued_before: in the future (SVIDs not issued yet cannot be revoked)")
		}
	}
	if r.GetSpiffeId() != "" {
		// Issued in or before the second T: notBefore (whole seconds, as
		// X.509 writes them) at most T - Backdate. The CA gives the SVIDs
		// it issues for the ID afterwards, in that second too, a later
		// notBefore (NotBeforeFloor).
		r.NotBeforeUnder = r.GetIssuedBefore() - int64(signer.Backdate/time.Second) + 1
	}
	id := make([]byte, 8)
	rand.Read(id)
	r.Id = "rv-" + hex.EncodeToString(id)
	r.CreatedAt = now.Unix()
	from := now.Unix()
	if r.GetIssuedBefore() != 0 {
		from = r.GetIssuedBefore()
	}
	r.ExpiresAt = from + int64(entry.MaxTTL/time.Second)
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

// NotBeforeFloor returns, per SPIFFE ID with a revocation in rs, the
// earliest NotBefore an SVID issued for it now may have not to be covered:
// signer.X509Params.NotBeforeAtLeast.
func NotBeforeFloor(rs []*typesv1.Revocation) map[string]time.Time {
	out := map[string]time.Time{}
	for _, r := range rs {
		if r.GetSpiffeId() == "" {
			continue
		}
		if t := time.Unix(r.GetNotBeforeUnder(), 0); t.After(out[r.GetSpiffeId()]) {
			out[r.GetSpiffeId()] = t
		}
	}
	return out
}
