package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// policyCreate reads AccessPolicies from JSON: one policy,
//
//	{"name": "cart", "target": "spiffe://example.org/ns/shop/sa/cart",
//	 "rules": [{"action": "allow", "peers": [{"serviceAccount": "shop/front"}], "methods": ["/shop.v1.Cart/*"]}]}
//
// or {"policies": [...]}, as policy list -o json prints them (their
// revisions, which the CA sets, are ignored).
func (c *cli) policyCreate(ctx context.Context, args []string) error {
	var output, file string
	fs := c.flags("policy create", &output)
	fs.StringVar(&file, "file", "", "JSON file of a policy, or of {\"policies\": [...]} (- for standard input)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if file == "" {
		fmt.Fprintln(c.stderr, "signet policy create: --file is required")
		return errUsage
	}
	raw, err := readInput(file)
	if err != nil {
		return err
	}
	policies, err := readPolicies(file, raw)
	if err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	var created []*typesv1.AccessPolicy
	for _, p := range policies {
		p.Revision = 0
		resp, err := admin.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: p})
		if err != nil {
			return fmt.Errorf("policy %q: %w", p.GetName(), err)
		}
		created = append(created, resp.GetPolicy())
	}
	return c.printPolicies(output, created)
}

// readPolicies reads one policy or {"policies": [...]}; errors say where
// in the file.
func readPolicies(file string, raw []byte) ([]*typesv1.AccessPolicy, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, locate(file, raw, err)
	}
	list, ok := probe["policies"]
	if !ok {
		p := &typesv1.AccessPolicy{}
		if err := protojson.Unmarshal(raw, p); err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		return []*typesv1.AccessPolicy{p}, nil
	}
	if len(probe) != 1 {
		return nil, fmt.Errorf("%s: a file with \"policies\" has no other key", file)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(list, &items); err != nil {
		return nil, fmt.Errorf("%s: policies: want a list", file)
	}
	var out []*typesv1.AccessPolicy
	for i, item := range items {
		p := &typesv1.AccessPolicy{}
		if err := protojson.Unmarshal(item, p); err != nil {
			off := int64(bytes.Index(raw, item))
			return nil, fmt.Errorf("%s:%s: policies[%d]: %v", file, lineCol(raw, off), i, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func (c *cli) policyList(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("policy list", &output)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.ListPolicies(ctx, &adminv1.ListPoliciesRequest{})
	if err != nil {
		return err
	}
	return c.printPolicies(output, resp.GetPolicies())
}

func (c *cli) policyDelete(ctx context.Context, args []string) error {
	var output, name string
	fs := c.flags("policy delete", &output)
	fs.StringVar(&name, "name", "", "name of the policy")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if name == "" {
		fmt.Fprintln(c.stderr, "signet policy delete: --name is required")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	if _, err := admin.DeletePolicy(ctx, &adminv1.DeletePolicyRequest{Name: name}); err != nil {
		return err
	}
	return c.print(output, map[string]string{"deleted": name}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, "deleted", name)
		return err
	})
}

// printPolicies prints {"policies": [...]} in the policies' own JSON
// form, which policy create reads back.
func (c *cli) printPolicies(output string, ps []*typesv1.AccessPolicy) error {
	out := struct {
		Policies []json.RawMessage `json:"policies"`
	}{Policies: []json.RawMessage{}}
	for _, p := range ps {
		b, err := protojson.Marshal(p)
		if err != nil {
			return err
		}
		out.Policies = append(out.Policies, b)
	}
	return c.print(output, out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tTARGET\tRULES\tREVISION")
		for _, p := range ps {
			var rules []string
			for _, r := range p.GetRules() {
				var peers []string
				for _, pp := range r.GetPeers() {
					peers = append(peers, strings.TrimSpace(strings.Join([]string{pp.GetId(), pp.GetPattern(), pp.GetTrustDomain(), pp.GetNamespace(), pp.GetServiceAccount()}, " ")))
				}
				rule := r.GetAction() + " " + strings.Join(peers, ",")
				if len(r.GetMethods()) > 0 {
					rule += " on " + strings.Join(r.GetMethods(), ",")
				}
				rules = append(rules, rule)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", p.GetName(), p.GetTarget(), strings.Join(rules, "; "), p.GetRevision())
		}
		return tw.Flush()
	})
}
