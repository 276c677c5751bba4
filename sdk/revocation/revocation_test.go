package revocation_test

import (
	"crypto/x509"
	"errors"
	"math/big"
	"net/url"
	"testing"
	"time"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/revocation"
)

func cert(serial int64, id string, notBefore time.Time) *x509.Certificate {
	c := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: notBefore}
	if id != "" {
		u, _ := url.Parse(id)
		c.URIs = []*url.URL{u}
	}
	return c
}

func TestCheck(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	set := revocation.New([]*typesv1.Revocation{
		{Id: "a", Serial: "1f"},
		{Id: "b", SpiffeId: "spiffe://example.org/front", NotBeforeUnder: t0.Unix()},
		{Id: "c", SpiffeId: "spiffe://example.org/front", NotBeforeUnder: t0.Add(-time.Hour).Unix()},
		{Id: "d", AgentId: "spiffe://example.org/signet/agent/join/n1", NotBeforeUnder: t0.Unix()},
	})
	minted := func(agent string, notBefore time.Time) *x509.Certificate {
		c := cert(9, "spiffe://example.org/cart", notBefore)
		c.Subject.OrganizationalUnit = []string{revocation.AgentMark(agent)}
		return c
	}
	root := cert(1, "", t0.Add(-24*time.Hour))
	for name, c := range map[string]struct {
		chain   []*x509.Certificate
		revoked bool
	}{
		"leaf by serial":             {[]*x509.Certificate{cert(0x1f, "spiffe://example.org/x", t0), root}, true},
		"intermediate by serial":     {[]*x509.Certificate{cert(2, "spiffe://example.org/x", t0), cert(0x1f, "", t0), root}, true},
		"front issued before":        {[]*x509.Certificate{cert(3, "spiffe://example.org/front", t0.Add(-time.Second)), root}, true},
		"front issued at the mark":   {[]*x509.Certificate{cert(3, "spiffe://example.org/front", t0), root}, false},
		"another ID":                 {[]*x509.Certificate{cert(3, "spiffe://example.org/other", t0.Add(-time.Minute)), root}, false},
		"no chain":                   {nil, false},
		"minted by the agent before": {[]*x509.Certificate{minted("spiffe://example.org/signet/agent/join/n1", t0.Add(-time.Second)), root}, true},
		"minted by the agent after":  {[]*x509.Certificate{minted("spiffe://example.org/signet/agent/join/n1", t0), root}, false},
		"minted by another agent":    {[]*x509.Certificate{minted("spiffe://example.org/signet/agent/join/n2", t0.Add(-time.Second)), root}, false},
		"the agent's own SVID":       {[]*x509.Certificate{cert(10, "spiffe://example.org/signet/agent/join/n1", t0.Add(-time.Minute)), root}, true},
	} {
		err := set.Check(c.chain)
		if got := errors.Is(err, revocation.ErrRevoked); got != c.revoked {
			t.Errorf("%s: %v, want revoked %v", name, err, c.revoked)
		}
	}
	// A CA key, named by key ID: its certificate and whatever it signed,
	// enforced only from enforce_after; Covers ignores the time.
	keySet := revocation.New([]*typesv1.Revocation{{Id: "k", CaKey: "abcd", EnforceAfter: t0.Unix()}})
	signed := cert(20, "spiffe://example.org/x", t0)
	signed.AuthorityKeyId = []byte{0xab, 0xcd}
	other := cert(21, "spiffe://example.org/x", t0)
	other.AuthorityKeyId = []byte{0xab, 0xce}
	if err := keySet.CheckAt([]*x509.Certificate{signed}, t0.Add(-time.Second)); err != nil {
		t.Errorf("enforced before enforce_after: %v", err)
	}
	if err := keySet.CheckAt([]*x509.Certificate{signed}, t0); !errors.Is(err, revocation.ErrRevoked) {
		t.Errorf("signed by the revoked key at enforce_after: %v", err)
	}
	if err := keySet.Covers([]*x509.Certificate{signed}); !errors.Is(err, revocation.ErrRevoked) {
		t.Errorf("Covers: %v", err)
	}
	if err := keySet.CheckAt([]*x509.Certificate{other}, t0); err != nil {
		t.Errorf("signed by another key: %v", err)
	}
	if next := keySet.NextEnforcement(t0.Add(-time.Second)); !next.Equal(t0) {
		t.Errorf("next enforcement %v, want %v", next, t0)
	}
	if next := keySet.NextEnforcement(t0); !next.IsZero() {
		t.Errorf("next enforcement after it: %v", next)
	}
	var none *revocation.Set
	if none.Check([]*x509.Certificate{root}) != nil || none.Len() != 0 || set.Len() != 4 {
		t.Error("a nil set revokes, or Len is wrong")
	}
}
