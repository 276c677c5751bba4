// Package health serves a component's /healthz, /readyz and /metrics.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config says where to serve and what ready means.
type Config struct {
	// HealthAddr serves /healthz and /readyz, and /metrics too when
	// MetricsAddr is empty or the same. Empty disables all three.
	HealthAddr  string
	MetricsAddr string
	// Ready returns nil when the component can do its work, else why not.
	Ready    func(*http.Request) error
	Registry *prometheus.Registry
}

// Server is the HTTP side of a component.
type Server struct {
	servers   []*http.Server
	listeners []net.Listener
	done      chan struct{}
	once      sync.Once
}

// Listen binds the configured addresses.
func Listen(cfg Config) (*Server, error) {
	s := &Server{done: make(chan struct{})}
	if cfg.HealthAddr == "" {
		return s, nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := cfg.Ready(r); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// A collector that fails (one that reads a store that is away) costs
	// its own metrics, not the page: the others say what is wrong.
	metrics := promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	if cfg.MetricsAddr == "" || cfg.MetricsAddr == cfg.HealthAddr {
		mux.Handle("/metrics", metrics)
	} else {
		m := http.NewServeMux()
		m.Handle("/metrics", metrics)
		s.servers = append(s.servers, &http.Server{Addr: cfg.MetricsAddr, Handler: m, ReadHeaderTimeout: 10 * time.Second})
	}
	s.servers = append(s.servers, &http.Server{Addr: cfg.HealthAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second})
	for _, hs := range s.servers {
		l, err := net.Listen("tcp", hs.Addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("http %s: %w", hs.Addr, err)
		}
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

// Addrs returns the bound addresses.
func (s *Server) Addrs() []string {
	var out []string
	for _, l := range s.listeners {
		out = append(out, l.Addr().String())
	}
	return out
}

// Serve serves until Shutdown (even with nothing to serve); it returns the
// first failure.
func (s *Server) Serve() error {
	if len(s.servers) == 0 {
		<-s.done
		return nil
	}
	errc := make(chan error, len(s.servers))
	for i, hs := range s.servers {
		go func() { errc <- hs.Serve(s.listeners[i]) }()
	}
	var first error
	for range s.servers {
		if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) && first == nil {
			first = err
		}
	}
	return first
}

// Shutdown stops serving, waiting up to two seconds for requests in flight.
func (s *Server) Shutdown() {
	s.once.Do(func() { close(s.done) })
	for _, hs := range s.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		hs.Shutdown(ctx)
		cancel()
	}
}

// Close releases the listeners of a Server that is not serving.
func (s *Server) Close() {
	for _, l := range s.listeners {
		l.Close()
	}
}
