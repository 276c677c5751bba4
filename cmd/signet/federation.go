package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/signet-id/signet/ca/federation"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// federationJSON is how the CLI prints a federated trust domain.
type federationJSON struct {
	TrustDomain      string `json:"trust_domain"`
	URL              string `json:"bundle_endpoint_url"`
	Profile          string `json:"profile"`
	EndpointSPIFFEID string `json:"endpoint_spiffe_id,omitempty"`
	X509Authorities  int    `json:"x509_authorities"`
	JWTAuthorities   int    `json:"jwt_authorities"`
	RefreshHint      string `json:"refresh_hint,omitempty"`
	RefreshedAt      string `json:"refreshed_at,omitempty"`
	NextRefreshAt    string `json:"next_refresh_at,omitempty"`
	LastError        string `json:"last_error,omitempty"`
}

func (c *cli) federationCreate(ctx context.Context, args []string) error {
	var output, td, url, profile, endpointID, caFile, bundleFile string
	fs := c.flags("federation create", &output)
	fs.StringVar(&td, "trust-domain", "", "the trust domain to federate with (required)")
	fs.StringVar(&url, "bundle-endpoint-url", "", "https URL of its SPIFFE bundle endpoint (required)")
	fs.StringVar(&profile, "profile", federation.ProfileWeb, "how the endpoint is authenticated: https_web (a web PKI certificate) or https_spiffe (its SVID)")
	fs.StringVar(&endpointID, "endpoint-spiffe-id", "", "https_spiffe: the SPIFFE ID the endpoint presents, such as spiffe://TD/spire/server")
	fs.StringVar(&caFile, "endpoint-ca", "", "https_web: PEM roots that verify the endpoint instead of the system's")
	fs.StringVar(&bundleFile, "bundle", "", "its bundle, got out of band (SPIFFE bundle format, as spire-server bundle show -format spiffe prints it, or PEM roots); required for https_spiffe")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if td == "" || url == "" {
		fmt.Fprintln(c.stderr, "signet federation create: --trust-domain and --bundle-endpoint-url are required")
		return errUsage
	}
	f := &typesv1.FederatedTrustDomain{TrustDomain: td, BundleEndpointUrl: url, Profile: profile, EndpointSpiffeId: endpointID}
	if caFile != "" {
		raw, err := os.ReadFile(caFile)
		if err != nil {
			return err
		}
		f.EndpointCa = raw
	}
	if bundleFile != "" {
		b, err := readBundle(td, bundleFile)
		if err != nil {
			return fmt.Errorf("--bundle: %w", err)
		}
		f.Bundle = b
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: f})
	if err != nil {
		return err
	}
	return c.printFederations(output, []*typesv1.FederatedTrustDomain{resp.GetFederation()})
}

// readBundle reads a trust domain's bundle from a file (- for standard
// input): the SPIFFE bundle format, or PEM root certificates.
func readBundle(td, file string) (*typesv1.Bundle, error) {
	raw, err := readInput(file)
	if err != nil {
		return nil, err
	}
	return federation.ParseBundle(td, raw)
}

func (c *cli) federationList(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("federation list", &output)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.ListFederations(ctx, &adminv1.ListFederationsRequest{})
	if err != nil {
		return err
	}
	return c.printFederations(output, resp.GetFederations())
}

func (c *cli) federationDelete(ctx context.Context, args []string) error {
	var output, td string
	fs := c.flags("federation delete", &output)
	fs.StringVar(&td, "trust-domain", "", "the federated trust domain to forget (required)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if td == "" {
		fmt.Fprintln(c.stderr, "signet federation delete: --trust-domain is required")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	if _, err := admin.DeleteFederation(ctx, &adminv1.DeleteFederationRequest{TrustDomain: td}); err != nil {
		return err
	}
	return c.print(output, map[string]string{"deleted": td}, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "no longer federating with %s\n", td)
		return err
	})
}

func (c *cli) printFederations(output string, fs []*typesv1.FederatedTrustDomain) error {
	out := []federationJSON{}
	at := func(unix int64) string {
		if unix == 0 {
			return ""
		}
		return time.Unix(unix, 0).UTC().Format(time.RFC3339)
	}
	for _, f := range fs {
		j := federationJSON{TrustDomain: f.GetTrustDomain(), URL: f.GetBundleEndpointUrl(), Profile: f.GetProfile(), EndpointSPIFFEID: f.GetEndpointSpiffeId(),
			X509Authorities: len(f.GetBundle().GetX509Authorities()), JWTAuthorities: len(f.GetBundle().GetJwtAuthorities()),
			RefreshedAt: at(f.GetRefreshedAt()), NextRefreshAt: at(f.GetNextRefreshAt()), LastError: f.GetLastError()}
		if h := f.GetBundle().GetRefreshHintSeconds(); h > 0 {
			j.RefreshHint = (time.Duration(h) * time.Second).String()
		}
		out = append(out, j)
	}
	return c.print(output, map[string]any{"federations": out}, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TRUST DOMAIN\tPROFILE\tURL\tX509\tJWT\tREFRESHED\tLAST ERROR")
		for _, j := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", j.TrustDomain, j.Profile, j.URL, j.X509Authorities, j.JWTAuthorities, orNever(j.RefreshedAt), j.LastError)
		}
		return tw.Flush()
	})
}

func orNever(s string) string {
	if s == "" {
		return "never"
	}
	return s
}
