package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/internal/config"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// entryJSON is the file and -o json shape of an entry. ID and CreatedAt
// are the CA's: a file may carry them (the output of entry list), and
// entry create ignores them.
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
	// FederatesWith are the federated trust domains whose bundles the
	// workload gets.
	FederatesWith []string `json:"federates_with,omitempty"`
	Revision      int64    `json:"revision,omitempty"`
	CreatedAt     string   `json:"created_at,omitempty"`
}

type entriesFile struct {
	Entries []entryJSON `json:"entries"`
}

func (e entryJSON) proto(i int) (*typesv1.Entry, error) {
	pb := &typesv1.Entry{Id: e.ID, SpiffeId: e.SPIFFEID, ParentId: e.ParentID, DnsNames: e.DNSNames, WorkloadKey: e.WorkloadKey, FederatesWith: e.FederatesWith}
	for j, s := range e.Selectors {
		typ, val, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("entries[%d].selectors[%d]: %q: want type:key:value", i, j, s)
		}
		pb.Selectors = append(pb.Selectors, &typesv1.Selector{Type: typ, Value: val})
	}
	for _, v := range []struct {
		field string
		s     string
		dst   *int64
	}{{"x509_ttl", e.X509TTL, &pb.X509SvidTtlSeconds}, {"jwt_ttl", e.JWTTTL, &pb.JwtSvidTtlSeconds}} {
		if v.s == "" {
			continue
		}
		d, err := config.ParseDuration(v.s)
		if err != nil {
			return nil, fmt.Errorf("entries[%d].%s: %v", i, v.field, err)
		}
		*v.dst = int64(d / time.Second)
	}
	return pb, nil
}

func entryFromProto(pb *typesv1.Entry) entryJSON {
	e := entryJSON{ID: pb.GetId(), SPIFFEID: pb.GetSpiffeId(), ParentID: pb.GetParentId(), DNSNames: pb.GetDnsNames(),
		WorkloadKey: pb.GetWorkloadKey(), FederatesWith: pb.GetFederatesWith(), Revision: pb.GetRevision(), Selectors: []string{}}
	for _, s := range pb.GetSelectors() {
		e.Selectors = append(e.Selectors, s.GetType()+":"+s.GetValue())
	}
	if pb.GetX509SvidTtlSeconds() > 0 {
		e.X509TTL = config.FormatDuration(time.Duration(pb.GetX509SvidTtlSeconds()) * time.Second)
	}
	if pb.GetJwtSvidTtlSeconds() > 0 {
		e.JWTTTL = config.FormatDuration(time.Duration(pb.GetJwtSvidTtlSeconds()) * time.Second)
	}
	if pb.GetCreatedAt() > 0 {
		e.CreatedAt = time.Unix(pb.GetCreatedAt(), 0).UTC().Format(time.RFC3339)
	}
	return e
}

func (c *cli) printEntries(output string, es []*typesv1.Entry) error {
	out := entriesFile{Entries: []entryJSON{}}
	for _, e := range es {
		out.Entries = append(out.Entries, entryFromProto(e))
	}
	return c.print(output, out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSPIFFE ID\tPARENT ID\tSELECTORS\tX509 TTL\tJWT TTL")
		for _, e := range out.Entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.SPIFFEID, e.ParentID, strings.Join(e.Selectors, ","), orDefault(e.X509TTL), orDefault(e.JWTTTL))
		}
		return tw.Flush()
	})
}

func orDefault(s string) string {
	if s == "" {
		return "(CA's)"
	}
	return s
}

// readJSON reads a JSON file ("-" is standard input) into v, strictly;
// errors say where in the file, by line and column.
func readJSON(file string, v any) error {
	raw, err := readInput(file)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return locate(file, raw, err)
	}
	return nil
}

// readInput reads a file, or standard input for "-".
func readInput(file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(file)
}

// locate says where in file (read as raw) a JSON decoding error is, by
// line and column.
func locate(file string, raw []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%s:%s: %v", file, lineCol(raw, syn.Offset), err)
	case errors.As(err, &typ):
		return fmt.Errorf("%s:%s: %s: want %s, not a JSON %s", file, lineCol(raw, typ.Offset), typ.Field, typ.Type, typ.Value)
	}
	return fmt.Errorf("%s: %v", file, err)
}

// lineCol is "line:column" of byte offset off in raw, both from 1.
func lineCol(raw []byte, off int64) string {
	off = min(max(off, 0), int64(len(raw)))
	before := raw[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("%d:%d", line, col)
}

// flagOf maps an entry field, in an error about the one entry that flags
// describe, to the flag the user typed.
var flagOf = map[string]string{"spiffe_id": "--spiffe-id", "parent_id": "--parent-id", "selectors": "--selector",
	"x509_ttl": "--x509-ttl", "jwt_ttl": "--jwt-ttl", "dns_names": "--dns", "id": "--id", "federates_with": "--federates-with"}

var entryField = regexp.MustCompile(`entries\[0\]\.([a-z_0-9]+)(\[\d+\])?`)

// asFlags rewrites "entries[0].spiffe_id: ..." in err as "--spiffe-id: ...".
func asFlags(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Unknown
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		code, msg = st.Code(), st.Message()
	}
	out := entryField.ReplaceAllStringFunc(msg, func(m string) string {
		sub := entryField.FindStringSubmatch(m)
		if f, ok := flagOf[sub[1]]; ok {
			return f
		}
		return m
	})
	if out == msg {
		return err
	}
	if code != codes.Unknown {
		return status.Error(code, out)
	}
	return errors.New(out)
}

// entryFlags are the flags that describe one entry.
type entryFlags struct {
	spiffeID, parentID, x509TTL, jwtTTL string
	selectors, dns, federatesWith       config.StringList
	workloadKey                         bool
}

func (f *entryFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.spiffeID, "spiffe-id", "", "SPIFFE ID of the workload")
	fs.StringVar(&f.parentID, "parent-id", "", "SPIFFE ID of the agent that may mint it")
	fs.Var(&f.selectors, "selector", "selector TYPE:KEY:VALUE (repeatable; a workload needs all of them)")
	fs.Var(&f.dns, "dns", "DNS name (repeatable)")
	fs.StringVar(&f.x509TTL, "x509-ttl", "", "X509-SVID lifetime, such as 30m, 1h or 1d (default: the CA's)")
	fs.StringVar(&f.jwtTTL, "jwt-ttl", "", "JWT-SVID lifetime (default: the CA's)")
	fs.BoolVar(&f.workloadKey, "workload-key", false, "the workload makes its own key (SDK WithWorkloadKey): the agent never mints an X509-SVID of it with a key of its own")
	fs.Var(&f.federatesWith, "federates-with", "federated trust domain whose bundle the workload gets (repeatable; see signet federation create)")
}

func (c *cli) entryCreate(ctx context.Context, args []string) error {
	var output, file string
	var ef entryFlags
	fs := c.flags("entry create", &output)
	fs.StringVar(&file, "file", "", `JSON file of entries, {"entries": [...]}, as entry list -o json prints them (- for standard input)`)
	ef.register(fs)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	var in entriesFile
	fromFile := file != ""
	if fromFile {
		if ef.spiffeID != "" || ef.parentID != "" || len(ef.selectors) > 0 {
			return errors.New("--file cannot be combined with --spiffe-id, --parent-id or --selector")
		}
		if err := readJSON(file, &in); err != nil {
			return err
		}
	} else {
		in.Entries = []entryJSON{{SPIFFEID: ef.spiffeID, ParentID: ef.parentID, Selectors: ef.selectors, X509TTL: ef.x509TTL,
			JWTTTL: ef.jwtTTL, DNSNames: ef.dns, WorkloadKey: ef.workloadKey, FederatesWith: ef.federatesWith}}
	}
	req := &adminv1.CreateEntriesRequest{}
	for i, e := range in.Entries {
		pb, err := e.proto(i)
		if err != nil {
			return c.entryError(fromFile, err)
		}
		// The CA assigns these.
		pb.Id, pb.Revision, pb.CreatedAt = "", 0, 0
		req.Entries = append(req.Entries, pb)
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.CreateEntries(ctx, req)
	if err != nil {
		return c.entryError(fromFile, err)
	}
	return c.printEntries(output, resp.GetEntries())
}

func (c *cli) entryError(fromFile bool, err error) error {
	if fromFile {
		return err
	}
	return asFlags(err)
}

// entryUpdate replaces the fields given by flags of entry --id, or the
// entries of --file (each with its id) whole.
func (c *cli) entryUpdate(ctx context.Context, args []string) error {
	var output, file, id string
	var ef entryFlags
	fs := c.flags("entry update", &output)
	fs.StringVar(&file, "file", "", `JSON file of entries with their ids, {"entries": [...]}: each replaces the entry of its id`)
	fs.StringVar(&id, "id", "", "ID of the entry to change")
	ef.register(fs)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	req := &adminv1.UpdateEntriesRequest{}
	fromFile := file != ""
	if fromFile {
		if id != "" {
			return errors.New("--file cannot be combined with --id: the file names its entries")
		}
		var in entriesFile
		if err := readJSON(file, &in); err != nil {
			return err
		}
		for i, e := range in.Entries {
			pb, err := e.proto(i)
			if err != nil {
				return err
			}
			pb.Revision, pb.CreatedAt = 0, 0
			req.Entries = append(req.Entries, pb)
		}
	} else {
		if id == "" {
			fmt.Fprintln(c.stderr, "signet entry update: --id (or --file) is required")
			return errUsage
		}
		cur, err := c.entryByID(ctx, admin, id)
		if err != nil {
			return err
		}
		e := entryFromProto(cur)
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if set["spiffe-id"] {
			e.SPIFFEID = ef.spiffeID
		}
		if set["parent-id"] {
			e.ParentID = ef.parentID
		}
		if set["selector"] {
			e.Selectors = ef.selectors
		}
		if set["dns"] {
			e.DNSNames = ef.dns
		}
		if set["x509-ttl"] {
			e.X509TTL = ef.x509TTL
		}
		if set["jwt-ttl"] {
			e.JWTTTL = ef.jwtTTL
		}
		if set["workload-key"] {
			e.WorkloadKey = ef.workloadKey
		}
		if set["federates-with"] {
			e.FederatesWith = ef.federatesWith
		}
		pb, err := e.proto(0)
		if err != nil {
			return asFlags(err)
		}
		req.Entries = []*typesv1.Entry{pb}
	}
	resp, err := admin.UpdateEntries(ctx, req)
	if err != nil {
		return c.entryError(fromFile, err)
	}
	return c.printEntries(output, resp.GetEntries())
}

// entryByID fetches one entry.
func (c *cli) entryByID(ctx context.Context, admin adminv1.AdminClient, id string) (*typesv1.Entry, error) {
	resp, err := admin.ListEntries(ctx, &adminv1.ListEntriesRequest{Ids: []string{id}})
	if err != nil {
		return nil, err
	}
	if len(resp.GetEntries()) == 0 {
		return nil, fmt.Errorf("no entry %q", id)
	}
	return resp.GetEntries()[0], nil
}

func (c *cli) entryShow(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("entry show", &output)
	pos, err := c.parse(fs, args, &output, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(c.stderr, "signet entry show: the entry's ID is required")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	e, err := c.entryByID(ctx, admin, pos[0])
	if err != nil {
		return err
	}
	return c.printEntries(output, []*typesv1.Entry{e})
}

// entryFilter is the flags of entry list and count.
type entryFilter struct {
	spiffeID, parentID string
	selectors          config.StringList
}

func (f *entryFilter) register(fs *flag.FlagSet) {
	fs.StringVar(&f.spiffeID, "spiffe-id", "", "only entries with this SPIFFE ID")
	fs.StringVar(&f.parentID, "parent-id", "", "only entries with this parent")
	fs.Var(&f.selectors, "selector", "only entries with this selector TYPE:KEY:VALUE (repeatable: all of them)")
}

// list returns every entry the filter selects.
func (f *entryFilter) list(ctx context.Context, c *cli) ([]*typesv1.Entry, error) {
	for name, id := range map[string]string{"--spiffe-id": f.spiffeID, "--parent-id": f.parentID} {
		if _, err := spiffeid.FromString(id); id != "" && err != nil {
			return nil, fmt.Errorf("%s %q: %v", name, id, err)
		}
	}
	req := &adminv1.ListEntriesRequest{SpiffeId: f.spiffeID, ParentId: f.parentID, PageSize: 1000}
	for _, s := range f.selectors {
		typ, val, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("--selector %q: want TYPE:KEY:VALUE", s)
		}
		req.Selectors = append(req.Selectors, &typesv1.Selector{Type: typ, Value: val})
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return nil, err
	}
	var all []*typesv1.Entry
	for {
		resp, err := admin.ListEntries(ctx, req)
		if err != nil {
			return nil, asFilterFlags(err)
		}
		all = append(all, resp.GetEntries()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// asFilterFlags names the flag of a filter the CA refused.
func asFilterFlags(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := regexp.MustCompile(`^selectors\[\d+\]`).ReplaceAllString(st.Message(), "--selector")
	msg = strings.NewReplacer("spiffe_id:", "--spiffe-id:", "parent_id:", "--parent-id:").Replace(msg)
	return status.Error(st.Code(), msg)
}

func (c *cli) entryList(ctx context.Context, args []string) error {
	var output string
	var f entryFilter
	fs := c.flags("entry list", &output)
	f.register(fs)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	all, err := f.list(ctx, c)
	if err != nil {
		return err
	}
	return c.printEntries(output, all)
}

func (c *cli) entryCount(ctx context.Context, args []string) error {
	var output string
	var f entryFilter
	fs := c.flags("entry count", &output)
	f.register(fs)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	all, err := f.list(ctx, c)
	if err != nil {
		return err
	}
	return c.print(output, map[string]int{"count": len(all)}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, len(all))
		return err
	})
}

func (c *cli) entryDelete(ctx context.Context, args []string) error {
	var output string
	var ids config.StringList
	fs := c.flags("entry delete", &output)
	fs.Var(&ids, "id", "entry id (repeatable)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if len(ids) == 0 {
		fmt.Fprintln(c.stderr, "signet entry delete: --id is required")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	if _, err := admin.DeleteEntries(ctx, &adminv1.DeleteEntriesRequest{Ids: ids}); err != nil {
		return err
	}
	return c.print(output, map[string]any{"deleted": ids}, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "deleted %d entries\n", len(ids))
		return err
	})
}

func (c *cli) tokenCreate(ctx context.Context, args []string) error {
	var output, node string
	ttl := config.Duration(10 * time.Minute)
	fs := c.flags("token create", &output)
	fs.StringVar(&node, "node", "", "node name the token is for (required)")
	fs.Var(&ttl, "ttl", "token lifetime, such as 10m or 1d")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{NodeName: node, TtlSeconds: int64(time.Duration(ttl) / time.Second)})
	if err != nil {
		return err
	}
	out := map[string]string{"token": resp.GetToken(), "expires_at": time.Unix(resp.GetExpiresAt(), 0).UTC().Format(time.RFC3339), "agent_id": resp.GetAgentId()}
	return c.print(output, out, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, resp.GetToken())
		return err
	})
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

type agentsJSON struct {
	Agents []agentJSON `json:"agents"`
}

func (c *cli) agents(ctx context.Context) (agentsJSON, error) {
	out := agentsJSON{Agents: []agentJSON{}}
	admin, err := c.admin(ctx)
	if err != nil {
		return out, err
	}
	resp, err := admin.ListAgents(ctx, &adminv1.ListAgentsRequest{})
	if err != nil {
		return out, err
	}
	for _, a := range resp.GetAgents() {
		out.Agents = append(out.Agents, agentJSON{a.GetSpiffeId(), a.GetNodeName(), a.GetAttestationType(), a.GetSerial(),
			time.Unix(a.GetExpiresAt(), 0).UTC().Format(time.RFC3339), time.Unix(a.GetAttestedAt(), 0).UTC().Format(time.RFC3339), a.GetEvicted()})
	}
	return out, nil
}

func (c *cli) printAgents(output string, out agentsJSON) error {
	return c.print(output, out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SPIFFE ID\tNODE\tATTESTATION\tSVID EXPIRES\tEVICTED")
		for _, a := range out.Agents {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", a.SPIFFEID, a.NodeName, a.AttestationType, a.ExpiresAt, a.Evicted)
		}
		return tw.Flush()
	})
}

func (c *cli) agentList(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("agent list", &output)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	out, err := c.agents(ctx)
	if err != nil {
		return err
	}
	return c.printAgents(output, out)
}

func (c *cli) agentShow(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("agent show", &output)
	pos, err := c.parse(fs, args, &output, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fmt.Fprintln(c.stderr, "signet agent show: the agent's SPIFFE ID is required")
		return errUsage
	}
	if _, err := spiffeid.FromString(pos[0]); err != nil {
		return fmt.Errorf("%q: %v", pos[0], err)
	}
	all, err := c.agents(ctx)
	if err != nil {
		return err
	}
	for _, a := range all.Agents {
		if a.SPIFFEID == pos[0] {
			return c.printAgents(output, agentsJSON{Agents: []agentJSON{a}})
		}
	}
	return fmt.Errorf("no agent %s", pos[0])
}

func (c *cli) agentEvict(ctx context.Context, args []string) error {
	var output, id string
	fs := c.flags("agent evict", &output)
	fs.StringVar(&id, "id", "", "SPIFFE ID of the agent (required)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	if _, err := admin.EvictAgent(ctx, &adminv1.EvictAgentRequest{SpiffeId: id}); err != nil {
		return err
	}
	return c.print(output, map[string]string{"evicted": id}, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "evicted %s\n", id)
		return err
	})
}

func (c *cli) bundleShow(ctx context.Context, args []string) error {
	var output, format string
	fs := c.flags("bundle show", &output)
	fs.StringVar(&format, "format", "pem", "pem (the X.509 roots), jwks (the JWT bundle) or spiffe (SPIFFE bundle format)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	switch format {
	case "pem", "jwks", "spiffe":
	default:
		fmt.Fprintf(c.stderr, "signet bundle show: --format %q: want pem, jwks or spiffe\n", format)
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.GetBundle(ctx, &adminv1.GetBundleRequest{})
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
	}
	return c.print(output, map[string]string{"trust_domain": td.Name(), "format": format, "bundle": string(out)}, func(w io.Writer) error {
		_, err := w.Write(out)
		return err
	})
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

type tokenJSON struct {
	ID        string `json:"id"`
	NodeName  string `json:"node_name"`
	ExpiresAt string `json:"expires_at"`
	UsedAt    string `json:"used_at,omitempty"`
}

func (c *cli) tokenList(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("token list", &output)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.ListJoinTokens(ctx, &adminv1.ListJoinTokensRequest{})
	if err != nil {
		return err
	}
	out := struct {
		Tokens []tokenJSON `json:"tokens"`
	}{Tokens: []tokenJSON{}}
	for _, t := range resp.GetTokens() {
		j := tokenJSON{ID: t.GetId(), NodeName: t.GetNodeName(), ExpiresAt: time.Unix(t.GetExpiresAt(), 0).UTC().Format(time.RFC3339)}
		if t.GetUsedAt() > 0 {
			j.UsedAt = time.Unix(t.GetUsedAt(), 0).UTC().Format(time.RFC3339)
		}
		out.Tokens = append(out.Tokens, j)
	}
	return c.print(output, out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNODE\tEXPIRES\tUSED")
		for _, t := range out.Tokens {
			used := t.UsedAt
			if used == "" {
				used = "no"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.NodeName, t.ExpiresAt, used)
		}
		return tw.Flush()
	})
}

func (c *cli) tokenRevoke(ctx context.Context, args []string) error {
	var output, id, node string
	fs := c.flags("token revoke", &output)
	fs.StringVar(&id, "id", "", "the token's id (from token list)")
	fs.StringVar(&node, "node", "", "revoke every unused token of this node")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if (id == "") == (node == "") {
		fmt.Fprintln(c.stderr, "signet token revoke: give --id or --node")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.RevokeJoinTokens(ctx, &adminv1.RevokeJoinTokensRequest{Id: id, NodeName: node})
	if err != nil {
		return err
	}
	return c.print(output, map[string][]string{"revoked": resp.GetRevoked()}, func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "revoked %d join tokens\n", len(resp.GetRevoked()))
		return err
	})
}
