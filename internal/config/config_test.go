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

func TestDurations(t *testing.T) {
	for in, want := range map[string]time.Duration{"90s": 90 * time.Second, "1h30m": 90 * time.Minute, "7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "0s": 0} {
		if d, err := ParseDuration(in); err != nil || d != want {
			t.Errorf("ParseDuration(%q) = %s, %v; want %s", in, d, err, want)
		}
	}
	for _, bad := range []string{"", "d", "7", "xd", "-1d", "1d-5h", "soon", "1.5d"} {
		if d, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) = %s; want an error", bad, d)
		}
	}
	for d, want := range map[time.Duration]string{time.Hour: "1h", 30 * time.Minute: "30m", 90 * time.Minute: "1h30m",
		1000 * time.Hour: "1000h", 90 * time.Second: "1m30s", 5 * time.Second: "5s"} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%s) = %q; want %q", d, got, want)
		}
		if back, err := ParseDuration(FormatDuration(d)); err != nil || back != d {
			t.Errorf("round trip of %s: %s, %v", d, back, err)
		}
	}
}
