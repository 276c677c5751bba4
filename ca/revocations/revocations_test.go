package revocations

import (
	"math/big"
	"strings"
	"testing"
	"time"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

func TestNew(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r, err := New(&typesv1.Revocation{SpiffeId: "spiffe://example.org/front", Reason: "leaked"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.GetId(), "rv-") || r.GetIssuedBefore() != now.Unix() || r.GetCreatedAt() != now.Unix() ||
		r.GetExpiresAt() != now.Add(24*time.Hour).Unix() || r.GetNotBeforeUnder() != now.Unix()-9 {
		t.Errorf("by ID: %+v", r)
	}
	r, err = New(&typesv1.Revocation{AgentId: "spiffe://example.org/signet/agent/join/n1"}, now)
	if err != nil || r.GetNotBeforeUnder() != now.Unix()-9 || NotBeforeFloor([]*typesv1.Revocation{r})["spiffe://example.org/signet/agent/join/n1"].Unix() != now.Unix()-9 {
		t.Errorf("by agent: %+v, %v", r, err)
	}
	r, err = New(&typesv1.Revocation{Serial: "00:1F:aB"}, now)
	if err != nil || r.GetSerial() != "1fab" || r.GetNotBeforeUnder() != 0 {
		t.Errorf("by serial: %+v, %v", r, err)
	}
	r, err = New(&typesv1.Revocation{CaKey: "ABcd01"}, now)
	if err != nil || r.GetCaKey() != "abcd01" || r.GetSerial() != "" || r.GetExpiresAt() != now.Add(24*time.Hour).Unix() {
		t.Errorf("by CA key: %+v, %v", r, err)
	}
	// The CA fills in the key's serial and expiry.
	r, err = Complete(&typesv1.Revocation{CaKey: "abcd01", Serial: "1f", ExpiresAt: now.Add(300 * 24 * time.Hour).Unix(), EnforceAfter: now.Unix() + 10}, now)
	if err != nil || r.GetExpiresAt() != now.Add(300*24*time.Hour).Unix() || r.GetEnforceAfter() != now.Unix()+10 {
		t.Errorf("CA key completed: %+v, %v", r, err)
	}
	for name, c := range map[string]struct {
		r    *typesv1.Revocation
		want string
	}{
		"nothing":              {&typesv1.Revocation{}, "one of serial, spiffe_id, agent_id and ca_key"},
		"both":                 {&typesv1.Revocation{Serial: "1", SpiffeId: "spiffe://example.org/x"}, "one of serial, spiffe_id, agent_id and ca_key"},
		"bad serial":           {&typesv1.Revocation{Serial: "xyz"}, "not a positive serial"},
		"zero serial":          {&typesv1.Revocation{Serial: "0"}, "not a positive serial"},
		"long serial":          {&typesv1.Revocation{Serial: strings.Repeat("f", 41)}, "at most 20 bytes"},
		"not an agent":         {&typesv1.Revocation{AgentId: "spiffe://example.org/ns/a/sa/b"}, "not an agent's ID"},
		"bad id":               {&typesv1.Revocation{SpiffeId: "https://x"}, "spiffe_id"},
		"future":               {&typesv1.Revocation{SpiffeId: "spiffe://example.org/x", IssuedBefore: now.Unix() + 60}, "in the future"},
		"issued_before+serial": {&typesv1.Revocation{Serial: "1", IssuedBefore: 5}, "only with spiffe_id or agent_id"},
		"id set":               {&typesv1.Revocation{Serial: "1", Id: "mine"}, "CA's to set"},
		"bad key":              {&typesv1.Revocation{CaKey: "not-hex"}, "not a key ID"},
		"key and ID":           {&typesv1.Revocation{CaKey: "ab", SpiffeId: "spiffe://example.org/x"}, "one of serial"},
		"key issued_before":    {&typesv1.Revocation{CaKey: "ab", IssuedBefore: 5}, "only with spiffe_id or agent_id"},
		"enforce set":          {&typesv1.Revocation{CaKey: "ab", EnforceAfter: 5}, "CA's to set"},
		"long reason":          {&typesv1.Revocation{Serial: "1", Reason: strings.Repeat("r", 600)}, "reason"},
	} {
		if _, err := New(c.r, now); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

// FuzzNormalizeSerial: any input gives a clear error or the serial's
// canonical hex, which reads back as itself.
func FuzzNormalizeSerial(f *testing.F) {
	for _, s := range []string{"1f", "00:1F:AB", "0x7fffffff", "", "-1", "1:2:3", "ffffffffffffffffffffffffffffffffffffffff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := NormalizeSerial(s)
		if err != nil {
			return
		}
		n, ok := new(big.Int).SetString(out, 16)
		if !ok || n.Sign() <= 0 || n.Text(16) != out {
			t.Fatalf("%q -> %q", s, out)
		}
		if again, err := NormalizeSerial(out); err != nil || again != out {
			t.Fatalf("%q -> %q -> %q, %v", s, out, again, err)
		}
	})
}
