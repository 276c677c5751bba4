package config

import (
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	TrustDomain string     `json:"trust-domain"`
	TTL         Duration   `json:"x509-ttl"`
	Port        int        `json:"port"`
	AdminIDs    StringList `json:"admin-id"`
}

func TestLoad(t *testing.T) {
	var c testConfig
	err := Load([]byte("trust-domain: example.org\nx509-ttl: 30m\nport: 8081\nadmin-id: [spiffe://a/b]\n"), &c)
	if err != nil {
		t.Fatal(err)
	}
	if c.TrustDomain != "example.org" || time.Duration(c.TTL) != 30*time.Minute || c.Port != 8081 || len(c.AdminIDs) != 1 {
		t.Fatalf("Load = %+v", c)
	}
}

func TestLoadRefusals(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"trust-domian: x\n", `unknown key "trust-domian"`},
		{"x509-ttl: forever\n", `key "x509-ttl": invalid duration "forever"`},
		{"x509-ttl: -5m\n", `key "x509-ttl": negative duration`},
		{"x509-ttl: 5\n", `key "x509-ttl": want a duration`},
		{"port: eighty\n", `key "port"`},
		{"- a\n- b\n", "want a mapping"},
		{"a: [\n", "not valid YAML"},
	} {
		var c testConfig
		err := Load([]byte(tt.in), &c)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%q) error = %v; want %q", tt.in, err, tt.want)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add([]byte("trust-domain: example.org\nx509-ttl: 30m\n"))
	f.Add([]byte("port: [1, 2]\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c testConfig
		_ = Load(b, &c) // must not panic
	})
}
