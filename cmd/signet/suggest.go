package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/signet-id/signet/ca/traffic"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// observed fetches the calls the CA's traffic profiles hold.
func (c *cli) observed(ctx context.Context, since time.Duration, server, namespace string) ([]traffic.Observation, error) {
	admin, err := c.admin(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := admin.ListObservedCalls(ctx, &adminv1.ListObservedCallsRequest{Since: time.Now().Add(-since).Unix(), Server: server, Namespace: namespace})
	if err != nil {
		return nil, err
	}
	out := make([]traffic.Observation, 0, len(resp.GetCalls()))
	for _, oc := range resp.GetCalls() {
		o := traffic.Observation{Server: oc.GetServer(), Peer: oc.GetPeer(), Method: oc.GetMethod(), LastSeen: time.Unix(oc.GetLastSeen(), 0)}
		for _, h := range oc.GetHours() {
			if h < 168 {
				o.Hours[h] = true
			}
		}
		for _, h := range oc.GetSeen() {
			if h < 168 {
				o.Seen[h] = true
			}
		}
		out = append(out, o)
	}
	return out, nil
}

// policySuggest prints the least AccessPolicies that allow the calls the
// CA observed, and nothing more.
func (c *cli) policySuggest(ctx context.Context, args []string) error {
	var output, server, namespace, format string
	since := 7 * 24 * time.Hour
	fs := c.flags("policy suggest", &output)
	fs.StringVar(&server, "server", "", "the server's SPIFFE ID")
	fs.StringVar(&namespace, "namespace", "", "every server of this Kubernetes namespace (IDs spiffe://<td>/ns/<namespace>/...)")
	fs.DurationVar(&since, "since", since, "calls seen in this time (the profiles keep hours of the week, not each call)")
	fs.StringVar(&format, "format", "kubernetes", "kubernetes: AccessPolicy objects (YAML, for kubectl apply); json: for signet policy create --file")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if (server == "") == (namespace == "") || (format != "kubernetes" && format != "json") {
		fmt.Fprintln(c.stderr, "signet policy suggest: give one of --server and --namespace; --format kubernetes or json")
		return errUsage
	}
	obs, err := c.observed(ctx, since, server, namespace)
	if err != nil {
		return err
	}
	if len(obs) == 0 {
		return fmt.Errorf("no calls observed for %s%s in the last %s", server, namespace, since)
	}
	policies := traffic.Suggest(obs)
	if format == "json" {
		return c.printPolicies("json", policies)
	}
	for i, p := range policies {
		spec, err := protojson.MarshalOptions{UseProtoNames: false}.Marshal(p)
		if err != nil {
			return err
		}
		var m map[string]any
		json.Unmarshal(spec, &m)
		delete(m, "name")
		meta := map[string]any{"name": p.GetName()}
		if ns, ok := namespaceOf(p.GetTarget()); ok {
			meta["namespace"] = ns
		}
		doc, err := yaml.Marshal(map[string]any{"apiVersion": "signet.dev/v1alpha1", "kind": "AccessPolicy", "metadata": meta, "spec": m})
		if err != nil {
			return err
		}
		if i > 0 {
			fmt.Fprintln(c.stdout, "---")
		}
		c.stdout.Write(doc)
	}
	return nil
}

// namespaceOf reads the namespace of spiffe://<td>/ns/<ns>/...
func namespaceOf(id string) (string, bool) {
	u, err := spiffeid.FromString(id)
	if err != nil {
		return "", false
	}
	rest, ok := strings.CutPrefix(u.Path(), "/ns/")
	if !ok {
		return "", false
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns, ns != ""
}

// policyDiff shows which observed calls the policies of a file would
// deny.
func (c *cli) policyDiff(ctx context.Context, args []string) error {
	var output string
	since := 7 * 24 * time.Hour
	fs := c.flags("policy diff", &output)
	fs.DurationVar(&since, "since", since, "against the calls seen in this time")
	files, err := c.parse(fs, args, &output, 1)
	if err != nil {
		return err
	}
	if len(files) != 1 {
		fmt.Fprintln(c.stderr, "signet policy diff: give the file of the proposed policies (JSON, or AccessPolicy objects in YAML)")
		return errUsage
	}
	raw, err := readInput(files[0])
	if err != nil {
		return err
	}
	policies, err := readPolicyFile(files[0], raw)
	if err != nil {
		return err
	}
	if len(policies) == 0 {
		return fmt.Errorf("%s: no policies", files[0])
	}
	tdName, _, _ := strings.Cut(strings.TrimPrefix(policies[0].GetTarget(), "spiffe://"), "/")
	td, err := spiffeid.TrustDomainFromString(tdName)
	if err != nil {
		return fmt.Errorf("%s: target %q: %v", files[0], policies[0].GetTarget(), err)
	}
	obs, err := c.observed(ctx, since, "", "")
	if err != nil {
		return err
	}
	denied, err := traffic.Diff(policies, obs, td)
	if err != nil {
		return err
	}
	// Only servers the policies protect.
	var shown []traffic.Denied
	for _, d := range denied {
		for _, p := range policies {
			if id, err := spiffeid.FromString(d.Server); err == nil && authz.TargetMatches(p.GetTarget(), id) {
				shown = append(shown, d)
				break
			}
		}
	}
	type row struct {
		Server string `json:"server"`
		Peer   string `json:"peer"`
		Method string `json:"method"`
		Hour   string `json:"hour"`
	}
	rows := []row{}
	for _, d := range shown {
		rows = append(rows, row{d.Server, d.Peer, d.Method, fmt.Sprintf("%s %02d:00 UTC", dayNamesLong[d.Hour/24], d.Hour%24)})
	}
	return c.print(output, map[string]any{"would_deny": rows}, func(w io.Writer) error {
		if len(rows) == 0 {
			_, err := fmt.Fprintf(w, "the policies allow every call observed in the last %s\n", since)
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WOULD DENY\tSERVER\tCALLER\tMETHOD")
		for _, r := range rows {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Hour, r.Server, r.Peer, r.Method)
		}
		return tw.Flush()
	})
}

var dayNamesLong = []string{"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}

// readPolicyFile reads policies as JSON (readPolicies) or as AccessPolicy
// objects in YAML (what policy suggest prints).
func readPolicyFile(file string, raw []byte) ([]*typesv1.AccessPolicy, error) {
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		return readPolicies(file, raw)
	}
	var out []*typesv1.AccessPolicy
	for i, doc := range bytes.Split(raw, []byte("\n---")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Spec json.RawMessage `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return nil, fmt.Errorf("%s: document %d: %v", file, i+1, err)
		}
		if obj.Kind != "AccessPolicy" {
			return nil, fmt.Errorf("%s: document %d: kind %q, want AccessPolicy", file, i+1, obj.Kind)
		}
		p := &typesv1.AccessPolicy{}
		if err := protojson.Unmarshal(obj.Spec, p); err != nil {
			return nil, fmt.Errorf("%s: document %d: spec: %v", file, i+1, err)
		}
		p.Name = obj.Metadata.Name
		out = append(out, p)
	}
	return out, nil
}
