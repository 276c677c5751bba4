package nodeattest

import (
	"strings"
	"testing"
)

func TestServiceAccount(t *testing.T) {
	for _, tt := range []struct {
		user, ns, name string
		ok             bool
	}{
		{"system:serviceaccount:signet-system:signet-agent", "signet-system", "signet-agent", true},
		{"system:serviceaccount:ns:", "", "", false},
		{"system:serviceaccount::x", "", "", false},
		{"system:node:n1", "", "", false},
		{"admin", "", "", false},
	} {
		ns, name, ok := serviceAccount(tt.user)
		if ok != tt.ok || ok && (ns != tt.ns || name != tt.name) {
			t.Errorf("serviceAccount(%q) = %q, %q, %v", tt.user, ns, name, ok)
		}
	}
}

// TestSanitize: an API server message that echoes the token does not
// carry it into the refusal (and so not into the audit log).
func TestSanitize(t *testing.T) {
	tok := "eyJhbGciOiJSUzI1NiJ9.payload.signature"
	got := sanitize("invalid bearer token "+tok+" for audience x", tok)
	if strings.Contains(got, tok) || !strings.Contains(got, "[token]") {
		t.Fatalf("sanitize = %q", got)
	}
	if got := sanitize(strings.Repeat("a", 500), tok); len(got) != 200 {
		t.Fatalf("long message kept %d bytes", len(got))
	}
}
