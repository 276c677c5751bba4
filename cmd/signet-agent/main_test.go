package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAgentConfig(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfgFile, []byte("trust-domain: example.org\ndata-dir: "+dir+"\nca-address: 10.0.0.1:8081\nsocket: /tmp/a.sock\n"), 0o600)
	cfg, err := parse([]string{"--config", cfgFile, "--socket", "/tmp/b.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.SocketPath != "/tmp/b.sock" || cfg.CAAddress != "10.0.0.1:8081" || cfg.DataDir != dir {
		t.Fatalf("parse = %+v; want the flag's socket and the file's address", cfg)
	}
	for _, tt := range []struct{ file, want string }{
		{"data-dir: /x\nsokcet: /a\n", `unknown key "sokcet"`},
		{"ca-address: a:1\n", "data-dir: required"},
		{"data-dir: /x\ntrust-domain: 'not valid!'\n", "trust-domain"},
		{"data-dir: /x\njoin-token: a\njoin-token-file: /b\n", "not both"},
		{"data-dir: /x\ntrust-bundle: /does/not/exist\n", "trust-bundle"},
		{"data-dir: /x\nlog-level: chatty\n", "log-level"},
		{"data-dir: [1, 2]\n", `key "data-dir"`},
		{"data-dir: /x\nkubelet-url: https://10.0.0.1:10250\n", "kubelet-ca: required"},
	} {
		os.WriteFile(cfgFile, []byte(tt.file), 0o600)
		_, err := parse([]string{"--config", cfgFile}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config %q: error %v; want %q", tt.file, err, tt.want)
		}
	}
}

// writeRoot writes a PEM root that names trust domain td, as Signet's
// roots do (URI SAN spiffe://<td>).
func writeRoot(t *testing.T, path, td string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://" + td)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestAgentTrustDomain: the trust domain comes from the trust bundle when
// not given; given, it must be the bundle's; with neither, it is required.
func TestAgentTrustDomain(t *testing.T) {
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.pem")
	writeRoot(t, bundle, "prod.test")
	base := []string{"--data-dir", filepath.Join(dir, "data"), "--ca-address", "10.0.0.1:8081"}
	cfg, err := parse(append(base, "--trust-bundle", bundle), io.Discard)
	if err != nil || cfg.TrustDomain.Name() != "prod.test" {
		t.Fatalf("from the bundle: trust domain %q, %v; want prod.test", cfg.TrustDomain.Name(), err)
	}
	if _, err := parse(append(base, "--trust-bundle", bundle, "--trust-domain", "example.org"), io.Discard); err == nil ||
		!strings.Contains(err.Error(), "example.org") || !strings.Contains(err.Error(), "prod.test") {
		t.Fatalf("a trust domain the bundle does not name: %v; want an error naming both", err)
	}
	if _, err := parse(base, io.Discard); err == nil || !strings.Contains(err.Error(), "trust-domain: required") {
		t.Fatalf("neither: %v; want trust-domain: required", err)
	}
	if cfg, err := parse(append(base, "--trust-domain", "example.org"), io.Discard); err != nil || cfg.TrustDomain.Name() != "example.org" {
		t.Fatalf("the flag alone: %q, %v", cfg.TrustDomain.Name(), err)
	}
}
