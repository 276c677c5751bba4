package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// revocationCreate revokes an X.509-SVID by serial, or every SVID of a
// SPIFFE ID issued before now (or --issued-before).
func (c *cli) revocationCreate(ctx context.Context, args []string) error {
	var output, serial, id, agent, caKey, before, reason string
	var grace time.Duration
	fs := c.flags("revocation create", &output)
	fs.StringVar(&serial, "serial", "", "serial number of the X.509 certificate to revoke, in hex (colons allowed); a CA certificate's revokes that key")
	fs.StringVar(&caKey, "ca-key", "", "revoke a key of the CA (its ID, ca status): an intermediate, a root or a JWT key; the CA moves to the next key and agents re-issue at once")
	fs.DurationVar(&grace, "grace", -1, "peers refuse what is revoked only after this (default 10s for a CA key, for agents to re-issue first; 0s otherwise)")
	fs.StringVar(&id, "spiffe-id", "", "revoke every X.509-SVID of this SPIFFE ID issued before now")
	fs.StringVar(&agent, "agent", "", "revoke an agent (its SPIFFE ID, agent list): its SVIDs and every SVID it minted before now; it is evicted too")
	fs.StringVar(&before, "issued-before", "", "with --spiffe-id or --agent: revoke those issued before this time (RFC 3339), not before now")
	fs.StringVar(&reason, "reason", "", "why (kept in the audit log and the list)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if n := len(slices.DeleteFunc([]string{serial, id, agent, caKey}, func(s string) bool { return s == "" })); n != 1 {
		fmt.Fprintln(c.stderr, "signet revocation create: give one of --serial, --spiffe-id, --agent and --ca-key")
		return errUsage
	}
	r := &typesv1.Revocation{Serial: serial, SpiffeId: id, AgentId: agent, CaKey: caKey, Reason: reason}
	req := &adminv1.CreateRevocationRequest{Revocation: r}
	if grace >= 0 {
		secs := int64(grace / time.Second)
		req.GraceSeconds = &secs
	}
	if before != "" {
		if serial != "" || caKey != "" {
			fmt.Fprintln(c.stderr, "signet revocation create: --issued-before goes with --spiffe-id or --agent")
			return errUsage
		}
		t, err := time.Parse(time.RFC3339, before)
		if err != nil {
			return fmt.Errorf("--issued-before: %q is not an RFC 3339 time (such as 2026-11-30T09:00:00Z)", before)
		}
		r.IssuedBefore = t.Unix()
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.CreateRevocation(ctx, req)
	if err != nil {
		return err
	}
	return c.printRevocations(output, []*typesv1.Revocation{resp.GetRevocation()})
}

func (c *cli) revocationList(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("revocation list", &output)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	resp, err := admin.ListRevocations(ctx, &adminv1.ListRevocationsRequest{})
	if err != nil {
		return err
	}
	return c.printRevocations(output, resp.GetRevocations())
}

func (c *cli) revocationDelete(ctx context.Context, args []string) error {
	var output, id string
	fs := c.flags("revocation delete", &output)
	fs.StringVar(&id, "id", "", "ID of the revocation (revocation list)")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if id == "" {
		fmt.Fprintln(c.stderr, "signet revocation delete: --id is required")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	if _, err := admin.DeleteRevocation(ctx, &adminv1.DeleteRevocationRequest{Id: id}); err != nil {
		return err
	}
	return c.print(output, map[string]string{"deleted": id}, func(w io.Writer) error {
		_, err := fmt.Fprintln(w, "deleted", id)
		return err
	})
}

// printRevocations prints {"revocations": [...]} in their JSON form.
func (c *cli) printRevocations(output string, rs []*typesv1.Revocation) error {
	out := struct {
		Revocations []json.RawMessage `json:"revocations"`
	}{Revocations: []json.RawMessage{}}
	for _, r := range rs {
		b, err := protojson.Marshal(r)
		if err != nil {
			return err
		}
		out.Revocations = append(out.Revocations, b)
	}
	return c.print(output, out, func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tREVOKES\tISSUED BEFORE\tENFORCED FROM\tEXPIRES\tREASON")
		for _, r := range rs {
			what, before, from := "serial "+r.GetSerial(), "-", time.Unix(max(r.GetEnforceAfter(), r.GetCreatedAt()), 0).UTC().Format(time.RFC3339)
			switch {
			case r.GetCaKey() != "":
				what = "CA key " + r.GetCaKey()
			case r.GetSpiffeId() != "":
				what, before = r.GetSpiffeId(), time.Unix(r.GetIssuedBefore(), 0).UTC().Format(time.RFC3339)
			case r.GetAgentId() != "":
				what, before = "agent "+r.GetAgentId(), time.Unix(r.GetIssuedBefore(), 0).UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.GetId(), what, before, from, time.Unix(r.GetExpiresAt(), 0).UTC().Format(time.RFC3339), r.GetReason())
		}
		return tw.Flush()
	})
}
