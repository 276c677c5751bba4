package e2e

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestJWTKeyTypeChange restarts signet-ca on its data directory with
// --jwt-key-type rsa-2048: the P-256 key stays active, an RSA key is
// prepared and published at once (`signet ca status`, the bundle's key
// set), and a further restart with the same setting changes nothing.
func TestJWTKeyTypeChange(t *testing.T) {
	dir := t.TempDir()
	stop := func(ca *exec.Cmd) {
		t.Helper()
		if err := ca.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		ca.Wait()
	}
	jwtKeys := func() map[string]string {
		t.Helper()
		keys := map[string]string{}
		for _, k := range readCAStatus(t, dir).Keys {
			if k.Kind == "jwt" {
				keys[k.ID] = k.State + " " + k.KeyType
			}
		}
		return keys
	}
	count := func(keys map[string]string, want string) int {
		n := 0
		for _, v := range keys {
			if v == want {
				n++
			}
		}
		return n
	}

	ca := startCA(t, dir)
	if keys := jwtKeys(); len(keys) != 1 || count(keys, "active ec-p256") != 1 {
		t.Fatalf("JWT keys of a new CA: %v, want one active ec-p256", keys)
	}
	stop(ca)

	ca = startCAWith(t, dir, nil, "--jwt-key-type", "rsa-2048")
	changed := jwtKeys()
	if len(changed) != 2 || count(changed, "active ec-p256") != 1 || count(changed, "prepared rsa-2048") != 1 {
		t.Fatalf("JWT keys after --jwt-key-type rsa-2048: %v, want the P-256 key active and an RSA key prepared", changed)
	}
	if jwks := signet(t, dir, "bundle", "show", "--format", "jwks"); !strings.Contains(jwks, `"kty":"RSA"`) || !strings.Contains(jwks, `"kty":"EC"`) {
		t.Errorf("the bundle's key set lacks the prepared RSA key or the active EC key:\n%s", jwks)
	}
	stop(ca)

	startCAWith(t, dir, nil, "--jwt-key-type", "rsa-2048")
	if again := jwtKeys(); len(again) != 2 || again[firstKey(changed, "prepared rsa-2048")] != "prepared rsa-2048" {
		t.Fatalf("JWT keys after a second start with the same type: %v, want the same as before: %v", again, changed)
	}
}

// firstKey is the ID of a key of keys in state want.
func firstKey(keys map[string]string, want string) string {
	for id, v := range keys {
		if v == want {
			return id
		}
	}
	return ""
}
