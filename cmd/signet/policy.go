package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// policyCreate reads an AccessPolicy from JSON:
//
//	{"name": "cart", "target": "spiffe://example.org/ns/shop/sa/cart",
//	 "rules": [{"action": "allow", "peers": [{"serviceAccount": "shop/front"}], "methods": ["/shop.v1.Cart/*"]}]}
func (c *cli) policyCreate(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, file string
	fs := c.flags("policy create", &output)
	fs.StringVar(&file, "file", "", "JSON file of the policy (- for standard input)")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	if file == "" {
		fmt.Fprintln(c.stderr, "signet policy create: --file is required")
		return errUsage
	}
	var raw []byte
	var err error
	if file == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(file)
	}
	if err != nil {
		return err
	}
	p := &typesv1.AccessPolicy{}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(raw, p); err != nil {
		return fmt.Errorf("%s: %v", file, err)
	}
	if p.GetRevision() != 0 {
		return errors.New(file + ": revision is set by the CA")
	}
	resp, err := client.CreatePolicy(ctx, &adminv1.CreatePolicyRequest{Policy: p})
	if err != nil {
		return err
	}
	return c.printPolicies(output, []*typesv1.AccessPolicy{resp.GetPolicy()})
}

func (c *cli) policyList(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output string
	fs := c.flags("policy list", &output)
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	resp, err := client.ListPolicies(ctx, &adminv1.ListPoliciesRequest{})
	if err != nil {
		return err
	}
	return c.printPolicies(output, resp.GetPolicies())
}

func (c *cli) policyDelete(ctx context.Context, client adminv1.AdminClient, args []string) error {
	var output, name string
	fs := c.flags("policy delete", &output)
	fs.StringVar(&name, "name", "", "name of the policy")
	if err := c.parse(fs, args, output); err != nil {
		return err
	}
	if name == "" {
		fmt.Fprintln(c.stderr, "signet policy delete: --name is required")
		return errUsage
	}
	if _, err := client.DeletePolicy(ctx, &adminv1.DeletePolicyRequest{Name: name}); err != nil {
		return err
	}
	if output == "json" {
		return c.printJSON(map[string]string{"deleted": name})
	}
	fmt.Fprintln(c.stdout, "deleted", name)
	return nil
}

func (c *cli) printPolicies(output string, ps []*typesv1.AccessPolicy) error {
	if output == "json" {
		fmt.Fprint(c.stdout, "[")
		for i, p := range ps {
			if i > 0 {
				fmt.Fprint(c.stdout, ",")
			}
			b, err := protojson.Marshal(p)
			if err != nil {
				return err
			}
			c.stdout.Write(b)
		}
		fmt.Fprintln(c.stdout, "]")
		return nil
	}
	w := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tTARGET\tRULES\tREVISION")
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", p.GetName(), p.GetTarget(), strings.Join(rules, "; "), p.GetRevision())
	}
	return w.Flush()
}
