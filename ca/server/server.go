// Package server assembles signet-ca: the store, the authority, the agent
// and admin APIs, health and metrics, and the background tasks.
package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/signet-id/signet/ca/api"
	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/federation"
	"github.com/signet-id/signet/ca/oidc"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/ca/store"
	"github.com/signet-id/signet/internal/datadir"
	"github.com/signet-id/signet/internal/health"
	"github.com/signet-id/signet/internal/peercred"
	"github.com/signet-id/signet/internal/publicweb"
	"github.com/signet-id/signet/internal/signetid"
	"github.com/signet-id/signet/internal/tasks"
	"github.com/signet-id/signet/internal/unixsock"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// auditDiskFree reports the free space of the audit log's filesystem, so
// that an alert fires before a full disk stops the CA (every request
// fails when its audit record cannot be written).
func auditDiskFree(path string) prometheus.Collector {
	if path == "-" {
		path = os.TempDir()
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_ca_audit_disk_free_ratio",
		Help: "Fraction of the audit log's filesystem that is free (for unprivileged users); alert well before 0."}, func() float64 {
		var st unix.Statfs_t
		if err := unix.Statfs(filepath.Dir(path), &st); err != nil || st.Blocks == 0 {
			return math.NaN()
		}
		return float64(st.Bavail) / float64(st.Blocks)
	})
}

// minFree is the room the CA needs on the filesystems of its data
// directory and audit log to take requests.
const minFree = 1 << 20

// diskRoom is an error naming the filesystem of the data directory or the
// audit log that is (all but) full: every request that must be stored or
// audited fails there.
func diskRoom(cfg Config) error {
	paths := []string{cfg.DataDir}
	if cfg.AuditLog != "-" {
		paths = append(paths, filepath.Dir(cfg.AuditLog))
	}
	for _, p := range paths {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err != nil {
			continue
		}
		if free := st.Bavail * uint64(st.Bsize); free < minFree {
			return fmt.Errorf("the filesystem of %s is full (%d bytes free; no space left on device): requests that must be stored or audited fail", p, free)
		}
	}
	return nil
}

// Run starts signet-ca and blocks until ctx is done or a part fails.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	return tasks.Run(ctx, func(ctx context.Context, g *tasks.Group) (func(), error) { return build(ctx, g, cfg) })
}

// build makes every part of the CA, binds every listener and adds the
// tasks that run them to g; ready is to be called once they run. Nothing
// serves yet. On an error, closing g closes what was made.
func build(ctx context.Context, g *tasks.Group, cfg Config) (ready func(), err error) {
	log := cfg.Log
	p := g
	changed, err := datadir.Prepare(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if len(changed) > 0 {
		log.Warn("the data directory holds the CA's private keys: tightened what group or others could reach", "paths", changed)
	}
	unlock, err := datadir.Lock(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	p.OnClose(unlock)
	st, err := store.Open(ctx, cfg.Datastore)
	if err != nil {
		return nil, err
	}
	p.OnClose(func() { st.Close() })
	auditLog, err := audit.Open(cfg.AuditLog)
	if err != nil {
		return nil, err
	}
	p.OnClose(func() { auditLog.Close() })
	// The sinks take every record from now on: the spools exist before
	// the first record (the keys the authority makes below).
	sinks, err := openAuditSinks(cfg, auditLog)
	if err != nil {
		return nil, err
	}
	authCfg := authority.Config{
		TrustDomain: cfg.TrustDomain, Store: st, RootTTL: cfg.RootTTL, IntermediateTTL: cfg.IntermediateTTL,
		JWTKeyTTL: cfg.JWTKeyTTL, KeyType: cfg.KeyType, JWTKeyType: cfg.JWTKeyType, KMS: cfg.KMS, OpenKMS: cfg.OpenKMS, Log: log.Named("authority"),
		OnKeyChange: func(c authority.KeyChange) {
			event := map[string]string{"create": audit.KeyCreate, "state": audit.KeyState, "retire": audit.KeyRetire}[c.Change]
			rec := audit.Record{Event: event, Actor: "signet-ca", Result: audit.Success,
				Key: &audit.KeyInfo{Kind: c.Kind, ID: c.ID, State: c.State, NotAfter: c.NotAfter, KMSName: c.KMSName}}
			if err := auditLog.Write(rec); err != nil {
				// The change is stored and in use; losing its record is
				// logged loudly rather than undone.
				log.Error("could not write the audit record of a CA key change", "event", event, "id", c.ID, "error", err)
			}
		},
	}
	// The revocations in force name the keys the authority must not sign
	// with; they are read through the API's config, made below.
	var apiCfg api.Config
	authCfg.Revoked = func() map[string]time.Time {
		if apiCfg.Store == nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		revoked, err := apiCfg.RevokedKeys(ctx)
		if err != nil {
			log.Error("could not read the revocations of CA keys", "error", err)
		}
		return revoked
	}
	// A due root activation waits for every live agent to hold the root.
	authCfg.Laggards = func(ctx context.Context, id string) ([]string, error) {
		if apiCfg.Store == nil {
			return nil, errors.New("not serving yet")
		}
		return apiCfg.Laggards(ctx, id)
	}
	authCfg.ActivationTimeout = cfg.RootActivationTimeout
	authCfg.OnUnacknowledged = func(id string, laggards []string, why string) {
		rec := audit.Record{Event: audit.KeyActivateUnacknowledged, Actor: "signet-ca", Result: audit.Success, Reason: why, Laggards: laggards,
			Key: &audit.KeyInfo{Kind: authority.KindRoot, ID: id, State: authority.StateActive}}
		if err := auditLog.Write(rec); err != nil {
			log.Error("could not write the audit record of an unacknowledged root activation", "id", id, "error", err)
		}
	}
	var cluster Cluster
	if cfg.Kube != nil {
		if cfg.Cluster == nil {
			return nil, errors.New("this program has no Kubernetes mode: run signet-ca")
		}
		if cluster, err = cfg.Cluster(ctx, cfg, log.Named("k8s")); err != nil {
			return nil, err
		}
		authCfg.Store, authCfg.IsLeader = cluster.KeyStore(), cluster.IsLeader
	}
	// Replicas sharing a PostgreSQL store: the one holding its leader lock
	// rotates the keys; the others adopt what it stored.
	shared := cluster == nil && st.Shared()
	replica := newReplicaState()
	if shared {
		authCfg.IsLeader = replica.leading.Load
	}
	auth, err := authority.New(ctx, authCfg)
	if err != nil {
		return nil, err
	}
	b, _ := auth.Bundle()
	log.Info("CA ready", "trust_domain", cfg.TrustDomain.Name(), "roots", len(b.X509Roots), "intermediate_expires", auth.X509CA().Certificate.NotAfter)

	reg := metrics(auth, cfg.AuditLog)
	if cluster != nil {
		reg.MustRegister(cluster.Collectors()...)
	}
	apiCfg = api.Config{
		TrustDomain: cfg.TrustDomain, Store: st, Authority: auth, Audit: auditLog, Metrics: api.NewMetrics(reg),
		Changes: api.NewNotifier(), AgentTTL: cfg.AgentTTL, X509TTL: cfg.X509TTL, JWTTTL: cfg.JWTTTL, MinTTL: cfg.MinSVIDTTL, Log: log.Named("api"),
		Stopping: ctx.Done(),
	}
	if cfg.OIDC != nil {
		apiCfg.JWTIssuer = cfg.OIDC.Issuer
	}
	if shared {
		apiCfg.Deaf = replica.deaf
	}
	// Refusals of callers that proved no identity: limited per source, so
	// that anyone who reaches the port cannot fill the audit log's disk.
	suppressed := prometheus.NewCounter(prometheus.CounterOpts{Name: "signet_ca_audit_unauthenticated_suppressed_total",
		Help: "Refusals of unauthenticated calls counted in an aggregate audit record instead of one record each."})
	reg.MustRegister(suppressed)
	apiCfg.Unauthenticated = &audit.Unauthenticated{Log: auditLog, Suppressed: suppressed.Inc}
	p.Add("audit limiter", func(ctx context.Context) error { apiCfg.Unauthenticated.Run(ctx); return nil }, nil)
	if cluster != nil {
		cluster.Configure(&apiCfg)
	} else {
		fetcher := federation.NewFetcher(st, log.Named("federation"), auditLog)
		if err := fetcher.Load(ctx); err != nil {
			return nil, err
		}
		apiCfg.Federations = fetcher
		if shared {
			replica.fetcher = fetcher
		} else {
			p.Add("federation", func(ctx context.Context) error { fetcher.Run(ctx); return nil }, nil)
		}
	}
	if !cfg.NoTrafficDetector {
		var ct ClusterTraffic
		switch {
		case cluster != nil:
			ct = cluster.Traffic()
		case shared:
			replica.traffic = newStoreTraffic(replica.leading.Load, st, log.Named("traffic"))
			ct = replica.traffic
		}
		det, err := newDetector(ctx, cfg, st, ct, auditLog, reg, log.Named("traffic"))
		if err != nil {
			return nil, err
		}
		apiCfg.Traffic = det
		p.Add("traffic detector", func(ctx context.Context) error { det.run(ctx); return nil }, nil)
	}
	apiCfg.SetDefaults()
	reg.MustRegister(api.NewStatusCollector(&apiCfg))
	if err := sinks.start(p, auth, cfg, reg, log); err != nil {
		return nil, err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signet_ca_revocations",
		Help: "Revocations in force (of the store, and the cluster's Revocation objects)."}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rs, err := apiCfg.InForce(ctx, time.Now())
		if err != nil {
			return -1
		}
		return float64(len(rs))
	}))

	certs := &servingCert{auth: auth, id: signetid.CA(cfg.TrustDomain)}
	if _, err := certs.get(); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get() },
		// Agents attest before they have an SVID, so a client certificate
		// is optional at the handshake; when one is sent it must verify, and
		// every method but AttestNode requires one.
		ClientAuth: tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			b, _ := auth.Bundle()
			_, _, err := x509svid.ParseAndVerify(raw, x509bundle.FromX509Authorities(b.TrustDomain, b.X509Roots))
			return err
		},
	}

	nodeSrv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
	agentv1.RegisterNodeServer(nodeSrv, api.NewNodeServer(apiCfg))
	nodeLis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("agent API: %w", err)
	}
	p.ServeGRPC("agent API", nodeSrv, nodeLis)
	log.Info("agent API listening", "addr", nodeLis.Addr().String())

	authz := api.NewAdminAuthorizer(apiCfg, cfg.AdminIDs)
	adminImpl := api.NewAdminServer(apiCfg)
	adminSrv := grpc.NewServer(grpc.Creds(peercred.TransportCredentials(false)),
		grpc.UnaryInterceptor(authz.UnaryInterceptor), grpc.StreamInterceptor(authz.StreamInterceptor))
	adminv1.RegisterAdminServer(adminSrv, adminImpl)
	adminLis, err := unixsock.Listen(cfg.AdminSocket, 0o700, 0o600)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	p.ServeGRPC("admin API", adminSrv, adminLis)
	p.OnClose(func() { os.Remove(cfg.AdminSocket) })
	log.Info("admin API listening", "socket", cfg.AdminSocket)

	if cfg.AdminListenAddr != "" {
		adminTLS := tlsCfg.Clone()
		adminTLS.ClientAuth = tls.RequireAnyClientCert
		adminTLSSrv := grpc.NewServer(grpc.Creds(credentials.NewTLS(adminTLS)),
			grpc.UnaryInterceptor(authz.UnaryInterceptor), grpc.StreamInterceptor(authz.StreamInterceptor))
		adminv1.RegisterAdminServer(adminTLSSrv, adminImpl)
		adminTLSLis, err := net.Listen("tcp", cfg.AdminListenAddr)
		if err != nil {
			return nil, fmt.Errorf("admin listen: %w", err)
		}
		p.ServeGRPC("admin API (mTLS)", adminTLSSrv, adminTLSLis)
		log.Info("admin API listening (mTLS)", "addr", adminTLSLis.Addr().String())
	}

	web, err := health.Listen(health.Config{
		HealthAddr: cfg.HealthAddr, MetricsAddr: cfg.MetricsAddr, Registry: reg,
		Ready: func(r *http.Request) error {
			if _, err := st.Revision(r.Context()); err != nil {
				return fmt.Errorf("store: %w", err)
			}
			if shared {
				if err := replica.listenErr(); err != nil {
					return fmt.Errorf("store: not hearing the other replicas' changes: %w", err)
				}
			}
			if time.Until(auth.X509CA().Certificate.NotAfter) <= 0 {
				return errors.New("signing CA expired")
			}
			if cluster != nil {
				if err := cluster.Ready(); err != nil {
					return err
				}
			}
			if err := diskRoom(cfg); err != nil {
				return err
			}
			if err := auditLog.Err(); err != nil {
				return fmt.Errorf("the last audit record could not be written, so requests are refused: %w", err)
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	p.OnClose(web.Close)
	p.Add("http", func(context.Context) error { return web.Serve() }, web.Shutdown)
	for _, a := range web.Addrs() {
		log.Info("health/metrics listening", "addr", a)
	}

	if cfg.PprofAddr != "" {
		if err := servePprof(p, cfg.PprofAddr, log); err != nil {
			return nil, err
		}
	}
	if err := serveOIDC(p, cfg, auth, log); err != nil {
		return nil, err
	}
	if err := serveBundleEndpoint(p, cfg, auth, certs, log); err != nil {
		return nil, err
	}

	if cluster != nil {
		if err := cluster.Start(p, auth); err != nil {
			return nil, err
		}
	}
	if shared {
		replica.start(p, st, auth, &apiCfg, reg, log)
	}
	p.Add("rotation", func(ctx context.Context) error { return auth.Run(ctx, cfg.RotateInterval) }, nil)
	p.Add("CA key revocations", func(ctx context.Context) error { followKeyRevocations(ctx, &apiCfg, auth); return nil }, nil)
	p.Add("housekeeping", func(ctx context.Context) error { housekeeping(ctx, st, log); return nil }, nil)
	p.Add("log reopen", func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-cfg.ReopenLogs:
				if err := auditLog.Reopen(); err != nil {
					log.Error("reopening the audit log failed; still writing the old file", "error", err)
				} else {
					log.Info("reopened the audit log")
				}
			}
		}
	}, nil)
	p.Add("shutdown", func(ctx context.Context) error {
		<-ctx.Done()
		log.Info("shutting down")
		return nil
	}, nil)
	addr := nodeLis.Addr().String()
	return func() {
		if cfg.Ready != nil {
			cfg.Ready(addr)
		}
	}, nil
}

// serveOIDC serves the OIDC discovery document and key set, when
// configured.
func serveOIDC(p *tasks.Group, cfg Config, auth *authority.Authority, log hclog.Logger) error {
	if cfg.OIDC == nil || cfg.OIDC.ListenAddr == "" {
		return nil
	}
	iss, err := oidc.ParseIssuer(cfg.OIDC.Issuer)
	if err != nil {
		return err
	}
	docs, err := oidc.Documents(iss, func() authority.Bundle { b, _ := auth.Bundle(); return b })
	if err != nil {
		return err
	}
	kp, err := publicweb.LoadKeyPair(cfg.OIDC.CertFile, cfg.OIDC.KeyFile)
	if err != nil {
		return fmt.Errorf("oidc-tls-cert: %w", err)
	}
	srv, err := publicweb.Listen(cfg.OIDC.ListenAddr, &tls.Config{GetCertificate: kp.GetCertificate}, publicweb.Handler(docs, oidc.MaxAge))
	if err != nil {
		return fmt.Errorf("oidc-listen: %w", err)
	}
	p.OnClose(srv.Close)
	p.Add("OIDC discovery", func(context.Context) error { return srv.Serve() }, srv.Shutdown)
	log.Info("OIDC discovery listening", "addr", srv.Addr(), "issuer", iss.String())
	return nil
}

// serveBundleEndpoint serves this trust domain's bundle at its SPIFFE
// bundle endpoint, when configured: https_web with the configured
// certificate, else https_spiffe with the CA's own SVID.
func serveBundleEndpoint(p *tasks.Group, cfg Config, auth *authority.Authority, certs *servingCert, log hclog.Logger) error {
	fc := cfg.Federation
	if fc == nil {
		return nil
	}
	tlsCfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get() }}
	profile := federation.ProfileSPIFFE
	if fc.CertFile != "" {
		kp, err := publicweb.LoadKeyPair(fc.CertFile, fc.KeyFile)
		if err != nil {
			return fmt.Errorf("federation-tls-cert: %w", err)
		}
		tlsCfg, profile = &tls.Config{GetCertificate: kp.GetCertificate}, federation.ProfileWeb
	}
	docs := federation.EndpointDocuments(func() authority.Bundle { b, _ := auth.Bundle(); return b }, fc.RefreshHint)
	srv, err := publicweb.Listen(fc.ListenAddr, tlsCfg, publicweb.Handler(docs, 0))
	if err != nil {
		return fmt.Errorf("federation-listen: %w", err)
	}
	p.OnClose(srv.Close)
	p.Add("bundle endpoint", func(context.Context) error { return srv.Serve() }, srv.Shutdown)
	log.Info("SPIFFE bundle endpoint listening", "addr", srv.Addr(), "profile", profile, "endpoint_spiffe_id", signetid.CA(cfg.TrustDomain).String())
	return nil
}

// metrics is the CA's registry with the process's and the CA keys'
// gauges.
func metrics(auth *authority.Authority, auditLog string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "signet_ca_intermediate_expiry_seconds", Help: "Seconds until the signing intermediate expires.",
	}, func() float64 { return time.Until(auth.X509CA().Certificate.NotAfter).Seconds() }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "signet_ca_root_expiry_seconds", Help: "Seconds until the earliest root in the bundle expires.",
	}, func() float64 {
		b, _ := auth.Bundle()
		min := time.Duration(1<<63 - 1)
		for _, r := range b.X509Roots {
			if d := time.Until(r.NotAfter); d < min {
				min = d
			}
		}
		return min.Seconds()
	}))
	reg.MustRegister(auditDiskFree(auditLog))
	return reg
}

// followKeyRevocations makes the authority look at its keys as soon as
// the CA keys revoked change, and when a revoked root or JWT key is to
// leave the bundle (its revocation's enforce time).
func followKeyRevocations(ctx context.Context, cfg *api.Config, auth *authority.Authority) {
	var last map[string]time.Time
	for {
		changed := cfg.Changes.Wait()
		var clusterChanged <-chan struct{}
		if cfg.Revocations != nil {
			clusterChanged = cfg.Revocations.Changed()
		}
		revoked, err := cfg.RevokedKeys(ctx)
		wait := time.Minute
		if err == nil {
			if !maps.Equal(revoked, last) {
				auth.Kick()
				last = revoked
			}
			now := time.Now()
			for _, at := range revoked {
				if d := at.Sub(now) + 100*time.Millisecond; d > 0 && d < wait {
					wait = d
				}
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-clusterChanged:
		case <-t.C:
			// An enforce time passed: the revoked key leaves the bundle.
			auth.Kick()
		}
		t.Stop()
	}
}

// housekeeping prunes expired join tokens and old deletion records.
func housekeeping(ctx context.Context, st *store.Store, log hclog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		if err := st.PruneJoinTokens(ctx, now.Add(-24*time.Hour)); err != nil && ctx.Err() == nil {
			log.Warn("prune join tokens", "error", err)
		}
		if err := st.PruneDeleted(ctx, now.Add(-7*24*time.Hour)); err != nil && ctx.Err() == nil {
			log.Warn("prune deleted entries", "error", err)
		}
		// Agents acknowledge again after every reconnect (at least at
		// every renewal of their SVID): a week-old acknowledgement is an
		// agent long gone.
		if err := st.PruneBundleAcks(ctx, now.Add(-7*24*time.Hour)); err != nil && ctx.Err() == nil {
			log.Warn("prune bundle acknowledgements", "error", err)
		}
		// Lists leave expired revocations out already; this keeps the
		// table small.
		if ids, err := st.PruneRevocations(ctx, now); err != nil && ctx.Err() == nil {
			log.Warn("prune revocations", "error", err)
		} else if len(ids) > 0 {
			log.Info("revocations expired: everything they covered has expired", "ids", ids)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ServingCertificate returns the TLS certificate of one of the CA's own
// identities (id, with DNS names dns), an SVID issued by auth and re-issued
// at half life or when the intermediate changes, for tls.Config's
// GetCertificate. It fails at once if the first cannot be issued.
func ServingCertificate(auth *authority.Authority, id spiffeid.ID, dns []string) (func(*tls.ClientHelloInfo) (*tls.Certificate, error), error) {
	certs := &servingCert{auth: auth, id: id, dns: dns}
	if _, err := certs.get(); err != nil {
		return nil, err
	}
	return func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return certs.get() }, nil
}

// servingCert is the CA's own TLS certificate for the agent API, an SVID
// for spiffe://<td>/signet/ca, re-signed at half life or when the
// intermediate changes.
type servingCert struct {
	auth *authority.Authority
	id   spiffeid.ID
	dns  []string

	mu     sync.Mutex
	key    crypto.Signer
	cert   *tls.Certificate
	issuer *x509.Certificate
	renew  time.Time
}

func (s *servingCert) get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ca := s.auth.X509CA()
	now := time.Now()
	if s.cert != nil && s.issuer.Equal(ca.Certificate) && now.Before(s.renew) {
		return s.cert, nil
	}
	if s.key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		s.key = k
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, s.key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	chain, err := signer.SignX509SVID(ca, signer.X509Params{CSR: csr, SPIFFEID: s.id, DNSNames: s.dns, TTL: time.Hour, Now: now})
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	c := &tls.Certificate{PrivateKey: s.key, Leaf: chain[0]}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	s.cert, s.issuer = c, ca.Certificate
	s.renew = now.Add(chain[0].NotAfter.Sub(now) / 2)
	return c, nil
}

// servePprof serves Go's profiles on addr (a loopback address: Validate
// checks), for diagnosis.
func servePprof(p *tasks.Group, addr string, log hclog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("pprof-addr: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	p.OnClose(func() { srv.Close() })
	p.Add("pprof", func(context.Context) error {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, func() { srv.Close() })
	log.Warn("serving Go profiles (for diagnosis only)", "addr", l.Addr().String())
	return nil
}
