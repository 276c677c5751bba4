package federation

import (
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/internal/publicweb"
)

// EndpointPath is where the bundle endpoint serves the bundle.
const EndpointPath = "/"

// DefaultRefreshHint is the refresh hint the bundle endpoint gives when
// none is configured. A root is published at least this long before it
// signs anything (see docs/federation.md), so peers that follow the hint
// hold it in time.
const DefaultRefreshHint = 5 * time.Minute

// EndpointDocuments returns the bundle endpoint's one document for
// publicweb.Handler: this trust domain's bundle in the SPIFFE bundle
// format (X.509 roots, JWT keys, refresh hint, sequence number), encoded
// again only when the bundle changes.
func EndpointDocuments(bundle func() authority.Bundle, refreshHint time.Duration) map[string]publicweb.Document {
	encode := func(b authority.Bundle) ([]byte, error) {
		sb := spiffebundle.New(b.TrustDomain)
		for _, r := range b.X509Roots {
			sb.AddX509Authority(r)
		}
		for _, k := range b.JWTKeys {
			if err := sb.AddJWTAuthority(k.ID, k.PublicKey); err != nil {
				return nil, err
			}
		}
		sb.SetRefreshHint(refreshHint)
		sb.SetSequenceNumber(b.Sequence)
		return sb.Marshal()
	}
	doc := publicweb.Versioned(func() (authority.Bundle, uint64) { b := bundle(); return b, b.Sequence }, encode, "application/json")
	return map[string]publicweb.Document{EndpointPath: doc}
}
