package publicweb

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir, cn string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	tmpl.Subject.CommonName = cn
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	// Written beside and renamed, as cert-manager replaces them.
	for f, b := range map[string][]byte{certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})} {
		if err := os.WriteFile(f+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f+".new", f); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, cert
}

func serve(t *testing.T, docs map[string]Document) (*Server, *KeyPair, string) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, _ := selfSigned(t, dir, "first")
	kp, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Listen("127.0.0.1:0", &tls.Config{GetCertificate: kp.GetCertificate}, Handler(docs, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(s.Close)
	return s, kp, dir
}

func client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
}

func TestOnlyTheDocuments(t *testing.T) {
	failing := errors.New("store: database is locked at /secret/path")
	s, _, _ := serve(t, map[string]Document{
		"/doc":    func() ([]byte, string, error) { return []byte(`{"a":1}`), "application/json", nil },
		"/broken": func() ([]byte, string, error) { return nil, "", failing },
	})
	base := "https://" + s.Addr()
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/doc", 200, `{"a":1}`}, {"HEAD", "/doc", 200, ""},
		{"POST", "/doc", 405, ""}, {"PUT", "/doc", 405, ""}, {"DELETE", "/doc", 405, ""},
		{"GET", "/doc/", 404, ""}, {"GET", "/", 404, ""}, {"GET", "/doc?debug=1", 404, ""}, {"GET", "/../doc", 404, ""},
		{"GET", "/broken", 503, "unavailable\n"},
	} {
		req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader("x"))
		resp, err := client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.code)
		}
		if c.body != "" && string(body) != c.body {
			t.Errorf("%s %s: body %q, want %q", c.method, c.path, body, c.body)
		}
		if c.code == 200 && resp.Header.Get("Cache-Control") != "public, max-age=60" {
			t.Errorf("%s %s: Cache-Control %q", c.method, c.path, resp.Header.Get("Cache-Control"))
		}
	}
}

// TestSlowClientIsCut holds a connection open with half a request header:
// the server closes it at ReadHeaderTimeout.
func TestSlowClientIsCut(t *testing.T) {
	s, _, _ := serve(t, map[string]Document{})
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /doc HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(4 * ReadHeaderTimeout))
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept a slow client's connection for %s", time.Since(start))
	}
}

// TestKeyPairFollowsTheFiles replaces the certificate files: new
// handshakes get the new certificate; an unreadable replacement keeps the
// old one.
func TestKeyPairFollowsTheFiles(t *testing.T) {
	s, kp, dir := serve(t, map[string]Document{})
	served := func() string {
		conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("served %q", got)
	}
	// Modification times of the new files differ from the old ones'.
	later := time.Now().Add(2 * time.Second)
	_, _, _ = selfSigned(t, dir, "second")
	for _, f := range []string{"tls.crt", "tls.key"} {
		os.Chtimes(filepath.Join(dir, f), later, later)
	}
	kp.mu.Lock()
	kp.checked = time.Time{}
	kp.mu.Unlock()
	if got := served(); got != "second" {
		t.Fatalf("after the files changed, served %q, want second", got)
	}
	os.WriteFile(filepath.Join(dir, "tls.crt"), []byte("garbage"), 0o600)
	later = later.Add(2 * time.Second)
	os.Chtimes(filepath.Join(dir, "tls.crt"), later, later)
	kp.mu.Lock()
	kp.checked = time.Time{}
	kp.mu.Unlock()
	if got := served(); got != "second" {
		t.Fatalf("after a broken certificate file, served %q, want the last good one", got)
	}
}
