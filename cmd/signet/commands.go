package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/internal/config"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// entryJSON is the file and -o json shape of an entry.
type entryJSON struct {
	ID        string   `json:"id,omitempty"`
	SPIFFEID  string   `json:"spiffe_id"`
	ParentID  string   `json:"parent_id"`
	Selectors []string `json:"selectors"`
	X509TTL   string   `json:"x509_ttl,omitempty"`
	JWTTTL    string   `json:"jwt_ttl,omitempty"`
	DNSNames  []string `json:"dns_names,omitempty"`
	// WorkloadKey: the workload makes its own key (sdk.WithWorkloadKey);
	// the agent never holds one for this identity.
	WorkloadKey bool `json:"workload_key,omitempty"`
}

type entriesFile struct {
	Entries []entryJSON `json:"entries"`
}

func (e entryJSON) proto(i int) (*typesv1.Entry, error) {
	pb := &typesv1.Entry{Id: e.ID, SpiffeId: e.SPIFFEID, ParentId: e.ParentID, DnsNames: e.DNSNames, WorkloadKey: e.WorkloadKey}
	for j, s := range e.Selectors {
		typ, val, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("entries[%d].selectors[%d]: %q: want type:key:value", i, j, s)
		}
		pb.Selectors = append(pb.Selectors, &typesv1.Selector{Type: typ, Value: val})
	}
	for field, v := range map[string]struct {
		s   string
		dst *int64
	}{"x509_ttl": {e.X509TTL, &pb.X509SvidTtlSeconds}, "jwt_ttl": {e.JWTTTL, &pb.JwtSvidTtlSeconds}} {
		if v.s == "" {
			continue
		}
		d, err := time.ParseDuration(v.s)
		if err != nil {
			return nil, fmt.Errorf("entries[%d].%s: invalid duration %q", i, field, v.s)
		}
		*v.dst = int64(d / time.Second)
	}
	return pb, nil
}

func entryFromProto(pb *typesv1.Entry) entryJSON {
	e := entryJSON{ID: pb.GetId(), SPIFFEID: pb.GetSpiffeId(), ParentID: pb.GetParentId(), DNSNames: pb.GetDnsNames(), WorkloadKey: pb.GetWorkloadKey()}
	for _, s := range pb.GetSelectors() {
		e.Selectors = append(e.Selectors, s.GetType()+":"+s.GetValue())
	}
	if pb.GetX509SvidTtlSeconds() > 0 {
		e.X509TTL = (time.Duration(pb.GetX509SvidTtlSeconds()) * time.Second).String()
	}
	if pb.GetJwtSvidTtlSeconds() > 0 {
		e.JWTTTL = (time.Duration(pb.GetJwtSvidTtlSeconds()) * time.Second).String()
	}
	return e
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) printEntries(output string, es []*typesv1.Entry) error {
	out := entriesFile{Entries: []entryJSON{}}
	for _, e := range es {
		out.Entries = append(out.Entries, entryFromProto(e))
	}
	if output == "json" {
		return c.printJSON(out)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSPIFFE ID\tPARENT ID\tSELECTORS")
	for _, e := range out.Entries {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.ID, e.SPIFFEID, e.ParentID, strings.Join(e.Selectors, ","))
	}
	return w.Flush()
}

func (c *cli) entryCreate(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, file, id, parent string
	var sels, dns config.StringList
	var x509TTL, jwtTTL string
	var workloadKey bool
	fs := c.flags("entry create", &output)
	fs.StringVar(&file, "file", "", "JSON file of entries to create in one batch")
	fs.StringVar(&id, "spiffe-id", "", "SPIFFE ID of the workload")
	fs.StringVar(&parent, "parent-id", "", "SPIFFE ID of the agent that may mint it")
	fs.Var(&sels, "selector", "selector TYPE:KEY:VALUE (repeatable)")
	fs.Var(&dns, "dns", "DNS name (repeatable)")
	fs.StringVar(&x509TTL, "x509-ttl", "", "X509-SVID lifetime (default: the CA's)")
	fs.StringVar(&jwtTTL, "jwt-ttl", "", "JWT-SVID lifetime (default: the CA's)")
	fs.BoolVar(&workloadKey, "workload-key", false, "the workload makes its own key (SDK WithWorkloadKey): the agent never mints an X509-SVID of it with a key of its own")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	var in entriesFile
	if file != "" {
		if id != "" || parent != "" || len(sels) > 0 {
			return fmt.Errorf("--file cannot be combined with --spiffe-id, --parent-id or --selector")
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return fmt.Errorf("%s: %v", file, err)
		}
	} else {
		in.Entries = []entryJSON{{SPIFFEID: id, ParentID: parent, Selectors: sels, X509TTL: x509TTL, JWTTTL: jwtTTL, DNSNames: dns, WorkloadKey: workloadKey}}
	}
	req := &adminv1.CreateEntriesRequest{}
	for i, e := range in.Entries {
		pb, err := e.proto(i)
		if err != nil {
			return err
		}
		req.Entries = append(req.Entries, pb)
	}
	resp, err := client.CreateEntries(ctx, req)
	if err != nil {
		return err
	}
	return c.printEntries(output, resp.GetEntries())
}

func (c *cli) entryList(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, id, parent, sel string
	fs := c.flags("entry list", &output)
	fs.StringVar(&id, "spiffe-id", "", "only entries with this SPIFFE ID")
	fs.StringVar(&parent, "parent-id", "", "only entries with this parent")
	fs.StringVar(&sel, "selector", "", "only entries with this selector TYPE:KEY:VALUE")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	req := &adminv1.ListEntriesRequest{SpiffeId: id, ParentId: parent, PageSize: 1000}
	if sel != "" {
		typ, val, _ := strings.Cut(sel, ":")
		req.Selector = &typesv1.Selector{Type: typ, Value: val}
	}
	var all []*typesv1.Entry
	for {
		resp, err := client.ListEntries(ctx, req)
		if err != nil {
			return err
		}
		all = append(all, resp.GetEntries()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	return c.printEntries(output, all)
}

func (c *cli) entryDelete(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output string
	var ids config.StringList
	fs := c.flags("entry delete", &output)
	fs.Var(&ids, "id", "entry id (repeatable)")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	if len(ids) == 0 {
		return fmt.Errorf("--id is required")
	}
	if _, err := client.DeleteEntries(ctx, &adminv1.DeleteEntriesRequest{Ids: ids}); err != nil {
		return err
	}
	if output == "json" {
		return c.printJSON(map[string]any{"deleted": ids})
	}
	fmt.Fprintf(c.stdout, "deleted %d entries\n", len(ids))
	return nil
}

func (c *cli) tokenCreate(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, node string
	ttl := config.Duration(10 * time.Minute)
	fs := c.flags("token create", &output)
	fs.StringVar(&node, "node", "", "node name the token is for (required)")
	fs.Var(&ttl, "ttl", "token lifetime")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	resp, err := client.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{NodeName: node, TtlSeconds: int64(time.Duration(ttl) / time.Second)})
	if err != nil {
		return err
	}
	if output == "json" {
		return c.printJSON(map[string]string{
			"token": resp.GetToken(), "expires_at": time.Unix(resp.GetExpiresAt(), 0).UTC().Format(time.RFC3339), "agent_id": resp.GetAgentId(),
		})
	}
	fmt.Fprintln(c.stdout, resp.GetToken())
	return nil
}

func (c *cli) agentList(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output string
	fs := c.flags("agent list", &output)
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	resp, err := client.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil {
		return err
	}
	type agentJSON struct {
		SPIFFEID        string `json:"spiffe_id"`
		NodeName        string `json:"node_name"`
		AttestationType string `json:"attestation_type"`
		Serial          string `json:"serial"`
		ExpiresAt       string `json:"expires_at"`
		AttestedAt      string `json:"attested_at"`
		Evicted         bool   `json:"evicted"`
	}
	out := struct {
		Agents []agentJSON `json:"agents"`
	}{Agents: []agentJSON{}}
	for _, a := range resp.GetAgents() {
		out.Agents = append(out.Agents, agentJSON{a.GetSpiffeId(), a.GetNodeName(), a.GetAttestationType(), a.GetSerial(),
			time.Unix(a.GetExpiresAt(), 0).UTC().Format(time.RFC3339), time.Unix(a.GetAttestedAt(), 0).UTC().Format(time.RFC3339), a.GetEvicted()})
	}
	if output == "json" {
		return c.printJSON(out)
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SPIFFE ID\tNODE\tATTESTATION\tSVID EXPIRES\tEVICTED")
	for _, a := range out.Agents {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\n", a.SPIFFEID, a.NodeName, a.AttestationType, a.ExpiresAt, a.Evicted)
	}
	return w.Flush()
}

func (c *cli) agentEvict(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, id string
	fs := c.flags("agent evict", &output)
	fs.StringVar(&id, "id", "", "SPIFFE ID of the agent (required)")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	if _, err := client.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: id}); err != nil {
		return err
	}
	if output == "json" {
		return c.printJSON(map[string]string{"evicted": id})
	}
	fmt.Fprintf(c.stdout, "evicted %s\n", id)
	return nil
}

func (c *cli) bundleShow(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, format string
	fs := c.flags("bundle show", &output)
	fs.StringVar(&format, "format", "pem", "pem (the X.509 roots), jwks (the JWT bundle) or spiffe (SPIFFE bundle format)")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	resp, err := client.GetBundle(ctx, &adminv1.GetBundleRequest{})
	if err != nil {
		return err
	}
	pb := resp.GetBundle()
	td, err := spiffeid.TrustDomainFromString(pb.GetTrustDomain())
	if err != nil {
		return err
	}
	sb := spiffebundle.New(td)
	sb.SetRefreshHint(time.Duration(pb.GetRefreshHintSeconds()) * time.Second)
	sb.SetSequenceNumber(pb.GetSequence())
	var pemOut []byte
	for _, der := range pb.GetX509Authorities() {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("bundle root: %w", err)
		}
		sb.AddX509Authority(cert)
		pemOut = append(pemOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	jb := jwtbundle.New(td)
	for _, k := range pb.GetJwtAuthorities() {
		pub, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
		if err != nil {
			return fmt.Errorf("bundle JWT key %s: %w", k.GetKeyId(), err)
		}
		sb.AddJWTAuthority(k.GetKeyId(), pub)
		jb.AddJWTAuthority(k.GetKeyId(), pub)
	}
	var out []byte
	switch format {
	case "pem":
		out = pemOut
	case "jwks":
		if out, err = jb.Marshal(); err != nil {
			return err
		}
		out = append(out, '\n')
	case "spiffe":
		if out, err = sb.Marshal(); err != nil {
			return err
		}
		out = append(out, '\n')
	default:
		return fmt.Errorf("--format %q: want pem, jwks or spiffe", format)
	}
	if output == "json" && format == "pem" {
		return c.printJSON(map[string]string{"trust_domain": td.Name(), "format": format, "bundle": string(out)})
	}
	_, err = c.stdout.Write(out)
	return err
}

func parseRoots(ders [][]byte) ([]*x509.Certificate, error) {
	var roots []*x509.Certificate
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("bundle root: %w", err)
		}
		roots = append(roots, c)
	}
	return roots, nil
}
