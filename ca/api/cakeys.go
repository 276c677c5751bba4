package api

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/revocations"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// RevokedKeys returns the CA keys that the revocations in force name, by
// key ID, each with the time peers start to refuse it: by ca_key, or by
// the serial of a key's certificate (a Revocation object that names an
// intermediate by serial). The authority stops signing with them.
func (c *Config) RevokedKeys(ctx context.Context) (map[string]time.Time, error) {
	revs, err := c.InForce(ctx, c.Now())
	if err != nil {
		return nil, err
	}
	return c.revokedKeys(revs), nil
}

func (c *Config) revokedKeys(revs []*typesv1.Revocation) map[string]time.Time {
	var bySerial map[string]string
	out := map[string]time.Time{}
	for _, r := range revs {
		id := r.GetCaKey()
		if id == "" && r.GetSerial() != "" {
			if bySerial == nil {
				bySerial = map[string]string{}
				for _, k := range c.Authority.Keys() {
					if k.Serial != "" {
						bySerial[k.Serial] = k.ID
					}
				}
			}
			id = bySerial[r.GetSerial()]
		}
		if id == "" {
			continue
		}
		at := time.Unix(max(r.GetEnforceAfter(), r.GetCreatedAt()), 0)
		if old, ok := out[id]; !ok || at.Before(old) {
			out[id] = at
		}
	}
	return out
}

// signing returns the keys to sign with, none of them revoked; while a
// revoked key's successor is on its way the caller is told to retry.
func (c *Config) signing(ctx context.Context, revs []*typesv1.Revocation) (*authority.X509CA, authority.JWTKey, error) {
	ca, jk, err := c.Authority.Signing(ctx, c.revokedKeys(revs))
	if errors.Is(err, authority.ErrSigningKeyRevoked) {
		return nil, jk, status.Error(codes.Unavailable, "the CA's signing key was revoked and the next one is on its way; try again")
	}
	if err != nil {
		return nil, jk, c.internal(ctx, "signing keys", err)
	}
	return ca, jk, nil
}

// resolveCAKey completes a revocation that names a key of the CA, by
// ca_key or by its certificate's serial: both are filled in, it expires
// with the key (when all the key signed has expired), and peers enforce
// it after grace (revocations.DefaultCAKeyGrace unless given), which
// also applies to other revocations when given.
func (c *Config) resolveCAKey(r *typesv1.Revocation, grace *int64, now time.Time) (*audit.KeyInfo, error) {
	var key *authority.KeyInfo
	for _, k := range c.Authority.Keys() {
		if (r.GetCaKey() != "" && k.ID == r.GetCaKey()) || (r.GetSerial() != "" && k.Serial == r.GetSerial()) {
			key = &k
			break
		}
	}
	if r.GetCaKey() != "" && key == nil {
		return nil, status.Errorf(codes.NotFound, "revocation: the CA holds no key %q (signet ca status lists them)", r.GetCaKey())
	}
	d := time.Duration(0)
	if key != nil {
		r.CaKey, r.Serial = key.ID, key.Serial
		r.ExpiresAt = max(r.GetExpiresAt(), key.NotAfter.Unix())
		d = revocations.DefaultCAKeyGrace
	}
	if grace != nil {
		if *grace < 0 || time.Duration(*grace)*time.Second > revocations.MaxGrace {
			return nil, status.Errorf(codes.InvalidArgument, "revocation: grace %ds is not between 0 and %s", *grace, revocations.MaxGrace)
		}
		d = time.Duration(*grace) * time.Second
	}
	if d > 0 {
		r.EnforceAfter = now.Add(d).Unix()
	}
	if key == nil {
		return nil, nil
	}
	return &audit.KeyInfo{Kind: key.Kind, ID: key.ID, State: "revoked", NotAfter: key.NotAfter}, nil
}
