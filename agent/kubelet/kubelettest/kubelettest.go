// Package kubelettest stands in for a kubelet's secure port in tests: a TLS
// server, a CA file that verifies it and a token file, as the kubelet
// client is configured in production.
package kubelettest

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// Server is a TLS server answering as a kubelet.
type Server struct {
	*httptest.Server
	// CAFile holds the server's certificate; TokenFile the token a client
	// sends.
	CAFile, TokenFile string
}

// Start serves h over TLS until the test ends and writes the CA and token
// files (token as given) into a temporary directory.
func Start(t testing.TB, h http.Handler, token string) *Server {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	s := &Server{Server: srv, CAFile: filepath.Join(dir, "ca.pem"), TokenFile: filepath.Join(dir, "token")}
	if err := os.WriteFile(s.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.TokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// RecordedPods is what a real kubelet 1.37 answered on /pods
// (agent/kubelet/testdata/pods-recorded-kubelet-1.37.json).
func RecordedPods(t testing.TB) []byte {
	t.Helper()
	_, src, _, _ := runtime.Caller(0)
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(src), "..", "testdata", "pods-recorded-kubelet-1.37.json"))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// StartRecorded serves RecordedPods on every path.
func StartRecorded(t testing.TB) *Server {
	t.Helper()
	raw := RecordedPods(t)
	return Start(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(raw) }), "t")
}
