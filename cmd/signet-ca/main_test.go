package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFlagWinsOverFile(t *testing.T) {
	p := writeConfig(t, "trust-domain: file.org\ndata-dir: /tmp/x\nx509-ttl: 20m\nlisten: 127.0.0.1:9000\n")
	cfg, _, err := parse([]string{"--config", p, "--listen", "127.0.0.1:9999"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenAddr != "127.0.0.1:9999" {
		t.Errorf("listen = %q; want the flag's value", cfg.ListenAddr)
	}
	if cfg.TrustDomain.Name() != "file.org" || cfg.X509TTL != 20*time.Minute {
		t.Errorf("trust domain %q, x509 TTL %s; want the file's values", cfg.TrustDomain.Name(), cfg.X509TTL)
	}
	// Flags are applied after the file, wherever --config sits.
	cfg, _, err = parse([]string{"--trust-domain", "flag.org", "--config", p}, io.Discard)
	if err != nil || cfg.TrustDomain.Name() != "flag.org" {
		t.Fatalf("trust domain = %q, %v; want flag.org", cfg.TrustDomain.Name(), err)
	}
}

func TestBadConfigNamesTheKey(t *testing.T) {
	for _, tt := range []struct {
		file string
		args []string
		want string
	}{
		{file: "trust-domain: a.org\ndata-dir: /x\ntrust_domain: b\n", want: `unknown key "trust_domain"`},
		{file: "trust-domain: a.org\ndata-dir: /x\nx509-ttl: soon\n", want: `key "x509-ttl"`},
		{file: "trust-domain: a.org\ndata-dir: /x\nkey-type: dsa\n", want: "key-type"},
		{file: "trust-domain: a.org\ndata-dir: /x\njwt-key-type: ed25519\n", want: "jwt-key-type: \"ed25519\""},
		{file: "trust-domain: a.org\ndata-dir: /x\nkms: cloudkms:projects/p\n", want: "kms: want an awskms: URI"},
		{file: "trust-domain: Not A Domain\ndata-dir: /x\n", want: "trust-domain"},
		{file: "trust-domain: a.org\n", want: "data-dir: required"},
		{file: "trust-domain: a.org\ndata-dir: /x\nlog-level: loud\n", want: "log-level"},
		{file: "trust-domain: a.org\ndata-dir: /x\nintermediate-ttl: 2000h\n", want: "intermediate-ttl"},
		{file: "trust-domain: a.org\ndata-dir: /x\n", args: []string{"--x509-ttl", "nope"}, want: "x509-ttl"},
		{file: "trust-domain: a.org\ndata-dir: /x\n", args: []string{"--admin-id", "spiffe://a.org/admin"}, want: "admin-listen"},
		{file: "trust-domain: a.org\ndata-dir: /x\nx509-ttl: 1s\n", want: "x509-ttl: 1s is shorter than min-svid-ttl (1m0s)"},
		{file: "trust-domain: a.org\ndata-dir: /x\nmin-svid-ttl: 100ms\n", want: "min-svid-ttl"},
		{file: "trust-domain: a.org\ndata-dir: /x\noidc-issuer: http://oidc.a.org\n", want: "oidc-issuer: \"http://oidc.a.org\": an issuer is an https URL"},
		{file: "trust-domain: a.org\ndata-dir: /x\noidc-issuer: https://oidc.a.org/\n", want: "trailing slash"},
		{file: "trust-domain: a.org\ndata-dir: /x\noidc-listen: :8443\n", want: "oidc-issuer: required"},
		{file: "trust-domain: a.org\ndata-dir: /x\npod-certificates: true\n", want: "pod-certificates need kubeconfig or in-cluster"},
		{file: "trust-domain: a.org\ndata-dir: /x\nkubeconfig: /k\ncluster-name: c\nagent-service-account: [a/b]\npod-certificates: true\npod-certificate-signer: kubernetes.io/x\n", want: "pod-certificate-signer"},
		{file: "trust-domain: a.org\ndata-dir: /x\nfederation-tls-cert: /c\n", want: "federation-listen: required"},
		{file: "trust-domain: a.org\ndata-dir: /x\nfederation-listen: :1\nfederation-tls-cert: /c\n", want: "set both"},
		{file: "trust-domain: a.org\ndata-dir: /x\noidc-issuer: https://oidc.a.org\noidc-listen: :8443\n", want: "oidc-tls-cert and oidc-tls-key: required"},
		{file: "trust-domain: a.org\ndata-dir: /x\npprof-addr: 0.0.0.0:6060\n", want: "pprof-addr: \"0.0.0.0:6060\": want a loopback address"},
		{file: "trust-domain: a.org\ndata-dir: /x\npprof-addr: 10.0.0.1:6060\n", want: "pprof-addr"},
		{file: "trust-domain: a.org\ndata-dir: /x\ndatastore: mysql://db/signet\n", want: "datastore: a postgres:// URL or the path of a SQLite file"},
	} {
		p := writeConfig(t, tt.file)
		_, _, err := parse(append([]string{"--config", p}, tt.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parse(%q, %v) error = %v; want %q", tt.file, tt.args, err, tt.want)
		}
	}
}
