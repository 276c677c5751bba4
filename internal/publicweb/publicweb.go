// Package publicweb serves the CA's public HTTPS endpoints: the OIDC
// discovery document with its key set, and the SPIFFE bundle endpoint.
// Anyone may reach them, so they are served as a public endpoint must be:
// read-only documents at fixed paths, small request limits, timeouts on
// every phase of a connection, a bounded number of connections, and
// nothing else.
package publicweb

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/net/netutil"
)

// Limits of every public server.
const (
	// MaxConns is how many connections are served at once; more wait in
	// the kernel's backlog.
	MaxConns = 256
	// MaxHeaderBytes bounds a request's header: the documents need none.
	MaxHeaderBytes = 8 << 10
	// ReadHeaderTimeout closes a connection whose request header has not
	// arrived in time (slow clients holding connections).
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 10 * time.Second
	IdleTimeout       = 60 * time.Second
)

// Document is one read-only document: its current body and content type.
// It is called for every request, so it should return bytes it keeps.
type Document func() (body []byte, contentType string, err error)

// Versioned is a Document of a value that changes now and then: get
// returns the value and its version, and encode runs only when the version
// changes (every request reads the current value; most reuse the bytes).
func Versioned[T any](get func() (T, uint64), encode func(T) ([]byte, error), contentType string) Document {
	var (
		mu      sync.Mutex
		version uint64
		body    []byte
	)
	return func() ([]byte, string, error) {
		v, ver := get()
		mu.Lock()
		defer mu.Unlock()
		if body == nil || ver != version {
			b, err := encode(v)
			if err != nil {
				return nil, "", err
			}
			body, version = b, ver
		}
		return body, contentType, nil
	}
}

// Handler serves docs by exact path, GET and HEAD only; every other path
// is 404 and every other method 405. Responses may be cached for maxAge.
func Handler(docs map[string]Document, maxAge time.Duration) http.Handler {
	cache := fmt.Sprintf("public, max-age=%d", int(maxAge/time.Second))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		doc, ok := docs[r.URL.Path]
		if !ok || r.URL.RawQuery != "" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, ctype, err := doc()
		if err != nil {
			// Never the error itself: it is the server's business.
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		h.Set("Content-Type", ctype)
		h.Set("Cache-Control", cache)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	})
}

// Server is one public HTTPS listener.
type Server struct {
	srv *http.Server
	lis net.Listener
}

// Listen binds addr for h, with TLS from tlsCfg (TLS 1.2 at least).
func Listen(addr string, tlsCfg *tls.Config, h http.Handler) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	tlsCfg = tlsCfg.Clone()
	if tlsCfg.MinVersion < tls.VersionTLS12 {
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	srv := &http.Server{
		Handler: h, TLSConfig: tlsCfg, MaxHeaderBytes: MaxHeaderBytes,
		ReadHeaderTimeout: ReadHeaderTimeout, ReadTimeout: ReadTimeout, WriteTimeout: WriteTimeout, IdleTimeout: IdleTimeout,
		// A handshake or request that fails is the client's problem, not
		// the CA's log's.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	return &Server{srv: srv, lis: tls.NewListener(netutil.LimitListener(lis, MaxConns), tlsCfg)}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting a few seconds for requests in flight.
func (s *Server) Shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.srv.Shutdown(ctx) != nil {
		s.srv.Close()
	}
}

// Close closes the listener and every connection (after Shutdown, or
// when Serve never ran).
func (s *Server) Close() {
	s.srv.Close()
	s.lis.Close()
}

// KeyPair is a certificate and key read from files, read again when
// either file changes (cert-manager and ACME clients replace them in
// place), at most once per second. A file that cannot be read or parsed
// keeps the pair that was served.
type KeyPair struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]time.Time
	checked time.Time
}

// LoadKeyPair reads the pair; it fails if the files do not hold one.
func LoadKeyPair(certFile, keyFile string) (*KeyPair, error) {
	kp := &KeyPair{certFile: certFile, keyFile: keyFile}
	if err := kp.reload(); err != nil {
		return nil, err
	}
	return kp, nil
}

func (kp *KeyPair) reload() error {
	var stamp [2]time.Time
	for i, f := range []string{kp.certFile, kp.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			return err
		}
		stamp[i] = st.ModTime()
	}
	if kp.cert != nil && stamp == kp.stamp {
		return nil
	}
	c, err := tls.LoadX509KeyPair(kp.certFile, kp.keyFile)
	if err != nil {
		// The error names the files, never their content.
		return fmt.Errorf("key pair %s, %s: %w", kp.certFile, kp.keyFile, err)
	}
	kp.cert, kp.stamp = &c, stamp
	return nil
}

// GetCertificate is for tls.Config.
func (kp *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if now := time.Now(); now.Sub(kp.checked) >= time.Second {
		kp.checked = now
		kp.reload() // on failure, the pair served so far stays
	}
	return kp.cert, nil
}
