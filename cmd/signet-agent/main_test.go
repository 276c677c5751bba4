package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAgentConfig(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfgFile, []byte("data-dir: "+dir+"\nca-address: 10.0.0.1:8081\nsocket: /tmp/a.sock\n"), 0o600)
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
