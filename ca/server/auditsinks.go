package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/internal/signetid"
	"github.com/signet-id/signet/internal/tasks"
)

// auditSinks are the external audit sinks with their spools.
type auditSinks struct {
	sinks  []AuditSink
	spools []*audit.Spool
}

// openAuditSinks opens a spool per sink, under DataDir/audit-spool/ (by a
// hash of the sink's URL, so that a sink keeps its spool across
// restarts), and hands it every line the log writes.
func openAuditSinks(cfg Config, log *audit.Log) (*auditSinks, error) {
	a := &auditSinks{sinks: cfg.AuditSinks}
	for _, sk := range cfg.AuditSinks {
		sum := sha256.Sum256([]byte(sk.URL))
		sp, err := audit.OpenSpool(filepath.Join(cfg.DataDir, "audit-spool", hex.EncodeToString(sum[:8])), cfg.AuditSpoolMax)
		if err != nil {
			return nil, err
		}
		a.spools = append(a.spools, sp)
		log.AddSink(sp)
	}
	return a, nil
}

// start adds a task per sink that delivers its spool, and the sinks'
// metrics.
func (a *auditSinks) start(g *tasks.Group, auth *authority.Authority, cfg Config, reg prometheus.Registerer, log hclog.Logger) error {
	if len(a.sinks) == 0 {
		return nil
	}
	delivered := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "signet_ca_audit_sink_delivered_total", Help: "Audit records delivered to an external sink (at least once)."}, []string{"sink"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "signet_ca_audit_sink_failures_total", Help: "Failed deliveries to an external audit sink (retried)."}, []string{"sink"})
	reg.MustRegister(delivered, failures)
	for i, sk := range a.sinks {
		sender, err := newSender(sk, auth, cfg)
		if err != nil {
			return err
		}
		sp := a.spools[i]
		name := sender.Name()
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_ca_audit_sink_pending_bytes", Help: "Bytes of audit records an external sink has not taken yet.",
				ConstLabels: prometheus.Labels{"sink": name}}, func() float64 { return float64(sp.Pending()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "signet_ca_audit_sink_dropped_total", Help: "Audit records dropped from a full spool before the sink took them.",
				ConstLabels: prometheus.Labels{"sink": name}}, func() float64 { return float64(sp.Dropped()) }),
		)
		d := audit.Delivery{Delivered: func(n int) { delivered.WithLabelValues(name).Add(float64(n)) }, Errors: func(n int) { failures.WithLabelValues(name).Add(float64(n)) }}
		g.Add("audit sink "+name, func(ctx context.Context) error { audit.Deliver(ctx, sp, sender, d, log.Named("audit")); return nil }, nil)
		g.OnClose(func() { sp.Close() })
		log.Info("audit records go to an external sink too", "sink", name)
	}
	return nil
}

func newSender(sk AuditSink, auth *authority.Authority, cfg Config) (audit.Sender, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if sk.CAFile != "" {
		raw, err := os.ReadFile(sk.CAFile)
		if err != nil {
			return nil, fmt.Errorf("audit sink %s: %w", sk.URL, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(raw) {
			return nil, fmt.Errorf("audit sink %s: %s holds no PEM certificate", sk.URL, sk.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	if sk.PresentSVID {
		get, err := ServingCertificate(auth, signetid.CA(cfg.TrustDomain), nil)
		if err != nil {
			return nil, err
		}
		tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return get(nil) }
	}
	if addr, useTLS, err := audit.ParseSyslogAddr(sk.URL); err == nil {
		s := &audit.Syslog{Addr: addr}
		if useTLS {
			s.TLS = tlsCfg
		}
		return s, nil
	}
	if sk.URL == "" {
		return nil, errors.New("audit sink without a URL")
	}
	return &audit.Webhook{URL: sk.URL, Client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}}}, nil
}
