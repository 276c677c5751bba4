package authority_test

import (
	"fmt"

	"go.step.sm/crypto/jose"

	"github.com/signet-id/signet/ca/authority"
)

// verifyJWT checks tok's signature with the bundle key its kid names.
func verifyJWT(b authority.Bundle, tok string) error {
	jws, err := jose.ParseSigned(tok)
	if err != nil {
		return err
	}
	if len(jws.Headers) != 1 {
		return fmt.Errorf("%d headers", len(jws.Headers))
	}
	kid := jws.Headers[0].KeyID
	for _, k := range b.JWTKeys {
		if k.ID == kid {
			var claims jose.Claims
			return jws.Claims(k.PublicKey, &claims)
		}
	}
	return fmt.Errorf("kid %q not in bundle", kid)
}
