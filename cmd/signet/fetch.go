package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// withWorkloadAPI calls fn with a client of the Workload API at --socket
// or $SPIFFE_ENDPOINT_SOCKET, as any workload would connect, and a
// context that gives it 15 s.
func withWorkloadAPI(ctx context.Context, socket string, fn func(context.Context, *workloadapi.Client) error) error {
	var opts []workloadapi.ClientOption
	if socket != "" {
		if !strings.Contains(socket, "://") {
			socket = "unix://" + socket
		}
		opts = append(opts, workloadapi.WithAddr(socket))
	} else if os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "" {
		return fmt.Errorf("no Workload API: pass --socket or set SPIFFE_ENDPOINT_SOCKET")
	}
	client, err := workloadapi.New(ctx, opts...)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := fn(ctx, client); err != nil {
		return fmt.Errorf("workload API: %w", err)
	}
	return nil
}

func pemCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

type svidJSON struct {
	SPIFFEID  string   `json:"spiffe_id"`
	NotBefore string   `json:"not_before"`
	NotAfter  string   `json:"not_after"`
	Serial    string   `json:"serial"`
	DNSNames  []string `json:"dns_names,omitempty"`
	Files     []string `json:"files,omitempty"`
}

// fetchX509 is `signet fetch x509`: what the Workload API gives the
// caller, and with --write the files a workload would use.
func (c *cli) fetchX509(ctx context.Context, args []string) error {
	var output, socket, dir string
	fs := c.flags("fetch x509", &output)
	fs.StringVar(&socket, "socket", "", "Workload API address (default $SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&dir, "write", "", "write svid.N.pem, svid.N.key and bundle.N.pem here")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	var xc *workloadapi.X509Context
	if err := withWorkloadAPI(ctx, socket, func(ctx context.Context, c *workloadapi.Client) (err error) {
		xc, err = c.FetchX509Context(ctx)
		return err
	}); err != nil {
		return err
	}
	var out struct {
		SVIDs []svidJSON `json:"svids"`
	}
	for i, s := range xc.SVIDs {
		leaf := s.Certificates[0]
		j := svidJSON{SPIFFEID: s.ID.String(), NotBefore: leaf.NotBefore.UTC().Format(time.RFC3339), NotAfter: leaf.NotAfter.UTC().Format(time.RFC3339),
			Serial: fmt.Sprintf("%x", leaf.SerialNumber), DNSNames: leaf.DNSNames}
		if dir != "" {
			certs, key, err := s.Marshal()
			if err != nil {
				return err
			}
			b, err := xc.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
			if err != nil {
				return err
			}
			files := map[string][]byte{fmt.Sprintf("svid.%d.pem", i): certs, fmt.Sprintf("svid.%d.key", i): key, fmt.Sprintf("bundle.%d.pem", i): pemCerts(b.X509Authorities())}
			if err := writeFiles(dir, files); err != nil {
				return err
			}
			for name := range files {
				j.Files = append(j.Files, filepath.Join(dir, name))
			}
			sort.Strings(j.Files)
		}
		out.SVIDs = append(out.SVIDs, j)
	}
	return c.print(output, out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SPIFFE ID\tNOT AFTER\tSERIAL\tFILES")
		for _, s := range out.SVIDs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.SPIFFEID, s.NotAfter, s.Serial, strings.Join(s.Files, " "))
		}
		return tw.Flush()
	})
}

// writeFiles writes the files into dir, the keys 0600.
func writeFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// fetchJWT is `signet fetch jwt`.
func (c *cli) fetchJWT(ctx context.Context, args []string) error {
	var output, socket, audience, id string
	fs := c.flags("fetch jwt", &output)
	fs.StringVar(&socket, "socket", "", "Workload API address (default $SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&audience, "audience", "", "audience of the JWT-SVID (required)")
	fs.StringVar(&id, "spiffe-id", "", "which of the caller's identities (default: its first)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if audience == "" {
		fmt.Fprintln(c.stderr, "signet fetch jwt: --audience is required")
		return errUsage
	}
	params := jwtsvid.Params{Audience: audience}
	if id != "" {
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return fmt.Errorf("--spiffe-id %q: %v", id, err)
		}
		params.Subject = sid
	}
	var svid *jwtsvid.SVID
	if err := withWorkloadAPI(ctx, socket, func(ctx context.Context, c *workloadapi.Client) (err error) {
		svid, err = c.FetchJWTSVID(ctx, params)
		return err
	}); err != nil {
		return err
	}
	out := map[string]string{"spiffe_id": svid.ID.String(), "expires_at": svid.Expiry.UTC().Format(time.RFC3339), "token": svid.Marshal()}
	return c.print(output, out, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, svid.Marshal())
		return err
	})
}

// fetchBundle is `signet fetch bundle`.
func (c *cli) fetchBundle(ctx context.Context, args []string) error {
	var output, socket, dir string
	fs := c.flags("fetch bundle", &output)
	fs.StringVar(&socket, "socket", "", "Workload API address (default $SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&dir, "write", "", "write <trust domain>.pem here")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	var set *x509bundle.Set
	if err := withWorkloadAPI(ctx, socket, func(ctx context.Context, c *workloadapi.Client) (err error) {
		set, err = c.FetchX509Bundles(ctx)
		return err
	}); err != nil {
		return err
	}
	bundles := set.Bundles()
	sort.Slice(bundles, func(i, j int) bool { return bundles[i].TrustDomain().Name() < bundles[j].TrustDomain().Name() })
	out := map[string]string{}
	files := map[string][]byte{}
	for _, b := range bundles {
		out[b.TrustDomain().Name()] = string(pemCerts(b.X509Authorities()))
		files[b.TrustDomain().Name()+".pem"] = pemCerts(b.X509Authorities())
	}
	if dir != "" {
		if err := writeFiles(dir, files); err != nil {
			return err
		}
	}
	return c.print(output, map[string]any{"bundles": out}, func(w io.Writer) error {
		for _, b := range bundles {
			fmt.Fprintf(w, "# %s\n%s", b.TrustDomain().Name(), pemCerts(b.X509Authorities()))
		}
		return nil
	})
}

// healthcheck is `signet healthcheck`: /readyz (or /healthz) of a CA or an
// agent, exit 0 when it answers 200.
func (c *cli) healthcheck(ctx context.Context, args []string) error {
	var output, addr string
	var live bool
	fs := c.flags("healthcheck", &output)
	fs.StringVar(&addr, "addr", "127.0.0.1:8082", "health address of a signet-ca (8082) or signet-agent (8083)")
	fs.BoolVar(&live, "live", false, "ask /healthz (is the process up) rather than /readyz (can it serve)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	path := "/readyz"
	if live {
		path = "/healthz"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	ok := resp.StatusCode == http.StatusOK
	if err := c.print(output, map[string]any{"addr": addr, "path": path, "ok": ok, "status": resp.StatusCode, "message": msg}, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "%s%s: %s\n", addr, path, msg)
		return err
	}); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s%s: %d %s", addr, path, resp.StatusCode, msg)
	}
	return nil
}
