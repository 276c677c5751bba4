// Package federation tests SPIFFE federation between Signet and a real
// SPIRE server and agent (the versions bench/ compares with, built by
// bench/install-spire.sh): each serves its bundle at a bundle endpoint and
// fetches the other's, and workloads of each trust domain call each other
// with mutual TLS, each authorized by the other side's rules, through a
// root rotation of Signet's; and a federated trust domain's compromised CA
// forging Signet's place marks.
package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

const spireTD = "spire.test"

// spireBin returns the directory of spire-server and spire-agent, building
// them (bench/install-spire.sh) when they are missing.
func spireBin(t *testing.T) string {
	t.Helper()
	_, src, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(src), "..", "..", "bench", "install-spire.sh")
	out, err := exec.Command("bash", script).Output()
	if err != nil {
		t.Fatalf("bench/install-spire.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// proc runs a command until the test ends, its output in dir/name.log.
func proc(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(f.Name())
			t.Logf("%s log:\n%s", name, tail(string(b), 40))
		}
	})
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func eventually(t *testing.T, timeout time.Duration, what string, ok func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := ok()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// TestFederationWithSPIRE federates Signet (example.org) and SPIRE
// (spire.test) both ways, over https_spiffe bundle endpoints.
func TestFederationWithSPIRE(t *testing.T) {
	bin := spireBin(t)
	dir := t.TempDir()
	ctx := context.Background()

	// Signet, with its bundle endpoint.
	signetEP := systest.FreeAddr(t)
	ca := systest.StartCA(t, func(c *server.Config) {
		c.Federation = &server.FederationConfig{ListenAddr: signetEP, RefreshHint: 5 * time.Second}
	})
	td := ca.TrustDomain()
	signetBundle := func() []byte {
		resp, err := ca.Admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
		if err != nil {
			t.Fatal(err)
		}
		b := spiffebundle.New(td)
		for _, der := range resp.GetBundle().GetX509Authorities() {
			c, _ := x509.ParseCertificate(der)
			b.AddX509Authority(c)
		}
		raw, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}

	// SPIRE, federating with Signet.
	spireEP, serverAddr := systest.FreeAddr(t), systest.FreeAddr(t)
	sock := filepath.Join(dir, "spire-server.sock")
	serverConf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%s"
  socket_path = "%s"
  trust_domain = "%s"
  data_dir = "%s/server"
  log_level = "DEBUG"
  federation {
    bundle_endpoint {
      address = "127.0.0.1"
      port = %s
      refresh_hint = "5s"
      profile "https_spiffe" {}
    }
  }
}
plugins {
  DataStore "sql" { plugin_data { database_type = "sqlite3" connection_string = "%s/server/datastore.sqlite3" } }
  KeyManager "memory" { plugin_data {} }
  NodeAttestor "join_token" { plugin_data {} }
}
`, port(serverAddr), sock, spireTD, dir, port(spireEP), dir)
	if err := os.WriteFile(filepath.Join(dir, "server.conf"), []byte(serverConf), 0o600); err != nil {
		t.Fatal(err)
	}
	spireServer := filepath.Join(bin, "spire-server")
	proc(t, dir, "spire-server", spireServer, "run", "-config", filepath.Join(dir, "server.conf"))
	eventually(t, time.Minute, "SPIRE server healthy", func() error {
		return exec.Command(spireServer, "healthcheck", "-socketPath", sock).Run()
	})
	// SPIRE federates with Signet; its https_spiffe fetch is authenticated
	// with Signet's bundle, got out of band.
	bundleFile := filepath.Join(dir, "signet-bundle.json")
	os.WriteFile(bundleFile, signetBundle(), 0o600)
	run(t, spireServer, "federation", "create", "-socketPath", sock, "-trustDomain", td.Name(), "-bundleEndpointURL", "https://"+signetEP,
		"-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", td.IDString()+"/signet/ca",
		"-trustDomainBundlePath", bundleFile, "-trustDomainBundleFormat", "spiffe")
	spireBundle := run(t, spireServer, "bundle", "show", "-socketPath", sock, "-format", "spiffe")

	// Signet federates with SPIRE through the admin API, as signet
	// federation create does.
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString(spireTD), []byte(spireBundle))
	if err != nil {
		t.Fatal(err)
	}
	pb := &typesv1.Bundle{TrustDomain: spireTD}
	for _, c := range b.X509Authorities() {
		pb.X509Authorities = append(pb.X509Authorities, c.Raw)
	}
	if _, err := ca.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: &typesv1.FederatedTrustDomain{
		TrustDomain: spireTD, BundleEndpointUrl: "https://" + spireEP, Profile: "https_spiffe",
		EndpointSpiffeId: "spiffe://" + spireTD + "/spire/server", Bundle: pb,
	}}); err != nil {
		t.Fatal(err)
	}

	// A SPIRE agent and its workloads.
	var token string
	for _, l := range strings.Split(run(t, spireServer, "token", "generate", "-socketPath", sock, "-ttl", "3600"), "\n") {
		if v, ok := strings.CutPrefix(l, "Token:"); ok {
			token = strings.TrimSpace(v)
		}
	}
	spireBundlePEM := filepath.Join(dir, "spire-bundle.pem")
	os.WriteFile(spireBundlePEM, []byte(run(t, spireServer, "bundle", "show", "-socketPath", sock, "-format", "pem")), 0o600)
	spireSock := filepath.Join(dir, "spire-agent.sock")
	agentConf := fmt.Sprintf(`agent {
  data_dir = "%s/agent"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "%s"
  socket_path = "%s"
  trust_bundle_path = "%s"
  trust_domain = "%s"
  join_token = "%s"
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data {} }
}
`, dir, port(serverAddr), spireSock, spireBundlePEM, spireTD, token)
	os.WriteFile(filepath.Join(dir, "agent.conf"), []byte(agentConf), 0o600)
	proc(t, dir, "spire-agent", filepath.Join(bin, "spire-agent"), "run", "-config", filepath.Join(dir, "agent.conf"))
	uid := fmt.Sprint(os.Getuid())
	for _, name := range []string{"client", "server", "intruder"} {
		args := []string{spireServer, "entry", "create", "-socketPath", sock, "-parentID", "spiffe://" + spireTD + "/spire/agent/join_token/" + token,
			"-spiffeID", "spiffe://" + spireTD + "/" + name, "-selector", "unix:uid:" + uid}
		if name != "intruder" {
			args = append(args, "-federatesWith", td.IDString())
		}
		run(t, args...)
	}

	// Signet's agent and workloads.
	ag := ca.StartAgent("node-fed")
	for _, name := range []string{"server", "client"} {
		if _, err := ca.Admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
			SpiffeId: td.IDString() + "/" + name, ParentId: ag.ID.String(), FederatesWith: []string{spireTD},
			Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:" + uid}},
		}}}); err != nil {
			t.Fatal(err)
		}
	}

	// Each side holds the other's bundle: SPIRE's workloads get Signet's
	// through their agent, Signet's get SPIRE's through theirs.
	spireSource := func(name string) *workloadapi.X509Source {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		want := spiffeid.RequireFromString("spiffe://" + spireTD + "/" + name)
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+spireSock)),
			workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
				for _, s := range svids {
					if s.ID == want {
						return s
					}
				}
				return svids[0]
			}))
		if err != nil {
			t.Fatalf("SPIRE workload %s: %v", name, err)
		}
		t.Cleanup(func() { src.Close() })
		eventually(t, time.Minute, "SPIRE workload "+name+" has its SVID", func() error {
			s, err := src.GetX509SVID()
			if err == nil && s.ID != want {
				err = fmt.Errorf("has %s", s.ID)
			}
			return err
		})
		return src
	}
	spireClient, spireServerWL, intruder := spireSource("client"), spireSource("server"), spireSource("intruder")
	eventually(t, time.Minute, "SPIRE's workloads hold Signet's bundle", func() error {
		_, err := spireClient.GetX509BundleForTrustDomain(td)
		return err
	})
	signetSource := func(name string) *sdk.Source {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		src, err := sdk.NewSource(ctx, sdk.WithAddr(ag.Addr), sdk.WithID(td.IDString()+"/"+name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	signetServer, signetClient := signetSource("server"), signetSource("client")
	eventually(t, time.Minute, "Signet's workloads hold SPIRE's bundle", func() error {
		_, err := signetServer.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(spireTD))
		return err
	})

	// Signet's server allows SPIRE's client, and no other SPIRE workload.
	az, err := authz.New(td, authz.Allow(authz.PeerID("spiffe://"+spireTD+"/client")))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := sdk.Listen("tcp", "127.0.0.1:0", signetServer, az)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go systest.Echo(lis)
	// SPIRE's server, a plain go-spiffe workload, allows Signet's client.
	spireLis, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(spireServerWL, spireServerWL,
		tlsconfig.AuthorizeID(spiffeid.RequireFromString(td.IDString()+"/client"))))
	if err != nil {
		t.Fatal(err)
	}
	defer spireLis.Close()
	go systest.Echo(spireLis)

	toSignet := func(src *workloadapi.X509Source) error {
		cfg := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(td.IDString()+"/server")))
		return roundTrip(func() (net.Conn, error) { return tls.Dial("tcp", lis.Addr().String(), cfg) })
	}
	toSPIRE := func() error {
		return roundTrip(func() (net.Conn, error) {
			return sdk.Dial(ctx, "tcp", spireLis.Addr().String(), signetClient, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://"+spireTD+"/server")))
		})
	}
	check := func(when string) {
		t.Helper()
		if err := toSignet(spireClient); err != nil {
			t.Fatalf("%s: SPIRE's client to Signet's server: %v", when, err)
		}
		if err := toSPIRE(); err != nil {
			t.Fatalf("%s: Signet's client to SPIRE's server: %v", when, err)
		}
		if err := toSignet(intruder); err == nil {
			t.Fatalf("%s: a SPIRE workload no rule names reached Signet's server", when)
		}
	}
	start := time.Now()
	eventually(t, time.Minute, "mutual TLS both ways", func() error {
		if err := toSignet(spireClient); err != nil {
			return err
		}
		return toSPIRE()
	})
	check("federated")
	t.Logf("federated both ways; mutual TLS %s after the workloads started", time.Since(start).Round(time.Millisecond))

	// Rotate Signet's root. The prepared root is in the bundle endpoint's
	// bundle at once; once SPIRE has fetched it, the root is activated
	// (and the old one revoked: agents re-mint at once under the new).
	prep, err := ca.Admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		t.Fatal(err)
	}
	newRoot := prep.GetRoot().GetId()
	hasRoot := func(src x509bundle.Source) error {
		b, err := src.GetX509BundleForTrustDomain(td)
		if err != nil {
			return err
		}
		for _, c := range b.X509Authorities() {
			if hex.EncodeToString(c.SubjectKeyId) == newRoot {
				return nil
			}
		}
		return fmt.Errorf("%d roots, none is %s", len(b.X509Authorities()), newRoot)
	}
	start = time.Now()
	eventually(t, 2*time.Minute, "SPIRE's workloads hold Signet's new root", func() error {
		if err := hasRoot(spireClient); err != nil {
			return err
		}
		return hasRoot(spireServerWL)
	})
	t.Logf("SPIRE's workloads hold Signet's prepared root %s after it was prepared", time.Since(start).Round(time.Millisecond))
	grace := int64(2)
	eventually(t, time.Minute, "the new root activated (agents acknowledged it)", func() (err error) {
		_, err = ca.Admin.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Id: newRoot, RevokePrevious: true, GraceSeconds: &grace})
		return err
	})
	// Signet's workloads move to SVIDs under the new root.
	for name, src := range map[string]*sdk.Source{"server": signetServer, "client": signetClient} {
		eventually(t, time.Minute, "Signet's "+name+" has an SVID under the new root", func() error {
			s, err := src.GetX509SVID()
			if err != nil {
				return err
			}
			if len(s.Certificates) < 2 || hex.EncodeToString(s.Certificates[len(s.Certificates)-1].AuthorityKeyId) != newRoot {
				return fmt.Errorf("SVID not under %s", newRoot)
			}
			return nil
		})
	}
	check("after Signet's root rotation")

	// Rotate SPIRE's root: prepare, wait until Signet's workloads hold
	// it, activate, and taint the old one so that SPIRE's agent re-mints
	// its workloads' SVIDs under the new.
	var prepared struct {
		Authority struct {
			ID string `json:"authority_id"`
		} `json:"prepared_authority"`
	}
	if err := json.Unmarshal([]byte(run(t, spireServer, "localauthority", "x509", "prepare", "-socketPath", sock, "-output", "json")), &prepared); err != nil {
		t.Fatal(err)
	}
	spireRoot := strings.ToLower(prepared.Authority.ID)
	var old struct {
		Active struct {
			ID string `json:"authority_id"`
		} `json:"active"`
	}
	if err := json.Unmarshal([]byte(run(t, spireServer, "localauthority", "x509", "show", "-socketPath", sock, "-output", "json")), &old); err != nil {
		t.Fatal(err)
	}
	spire := spiffeid.RequireTrustDomainFromString(spireTD)
	start = time.Now()
	eventually(t, 2*time.Minute, "Signet's workloads hold SPIRE's new root", func() error {
		for _, src := range []*sdk.Source{signetServer, signetClient} {
			b, err := src.GetX509BundleForTrustDomain(spire)
			if err != nil {
				return err
			}
			found := false
			for _, c := range b.X509Authorities() {
				found = found || strings.EqualFold(hex.EncodeToString(c.SubjectKeyId), spireRoot)
			}
			if !found {
				return fmt.Errorf("%d roots of %s, none is %s", len(b.X509Authorities()), spireTD, spireRoot)
			}
		}
		return nil
	})
	t.Logf("Signet's workloads hold SPIRE's prepared root %s after it was prepared", time.Since(start).Round(time.Millisecond))
	run(t, spireServer, "localauthority", "x509", "activate", "-socketPath", sock, "-authorityID", prepared.Authority.ID)
	run(t, spireServer, "localauthority", "x509", "taint", "-socketPath", sock, "-authorityID", old.Active.ID)
	for name, src := range map[string]*workloadapi.X509Source{"client": spireClient, "server": spireServerWL} {
		eventually(t, 2*time.Minute, "SPIRE's "+name+" has an SVID under SPIRE's new root", func() error {
			s, err := src.GetX509SVID()
			if err != nil {
				return err
			}
			b, _ := src.GetX509BundleForTrustDomain(spire)
			chains, err := s.Certificates[0].Verify(x509.VerifyOptions{Roots: pool(b.X509Authorities(), spireRoot), Intermediates: pool(s.Certificates[1:], ""),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if err != nil || len(chains) == 0 {
				return fmt.Errorf("SVID not under %s: %v", spireRoot, err)
			}
			return nil
		})
	}
	check("after SPIRE's root rotation")
}

// pool makes a pool of certs, only the one with key ID keyID if set.
func pool(certs []*x509.Certificate, keyID string) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		if keyID == "" || strings.EqualFold(hex.EncodeToString(c.SubjectKeyId), keyID) {
			p.AddCert(c)
		}
	}
	return p
}

// roundTrip dials, writes "ping" and expects it back.
func roundTrip(dial func() (net.Conn, error)) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !bytes.Equal(buf, []byte("ping")) {
		return fmt.Errorf("got %q", buf)
	}
	return nil
}
