package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
)

// caStatus shows the CA's keys and, per root and JWT key, which live
// agents and SDK workloads hold it.
func (c *cli) caStatus(ctx context.Context, args []string) error {
	var output string
	fs := c.flags("ca status", &output)
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	st, err := admin.GetCAStatus(ctx, &adminv1.GetCAStatusRequest{})
	if err != nil {
		return err
	}
	return c.print(output, rawProto(st), func(w io.Writer) error { return writeCAStatus(w, st) })
}

// rawProto is m in its JSON form, for print.
func rawProto(m proto.Message) json.RawMessage {
	b, _ := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(m)
	return b
}

func writeCAStatus(w io.Writer, st *adminv1.GetCAStatusResponse) error {
	fmt.Fprintf(w, "bundle sequence %d, %d live agents\n\n", st.GetBundleSequence(), len(st.GetLiveAgents()))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tID\tKEY\tSTATE\tEXPIRES\tAGENTS\tWORKLOADS\tSVIDS")
	for _, k := range st.GetKeys() {
		state := k.GetState()
		if k.GetRevoked() {
			state += " (revoked)"
		}
		agents, workloads := "-", "-"
		if k.GetKind() != "x509_intermediate" {
			agents = fmt.Sprintf("%d/%d", k.GetAgentsHolding(), k.GetAgentsHolding()+uint32(len(k.GetAgentsLagging())))
			workloads = fmt.Sprintf("%d/%d", k.GetWorkloadsHolding(), k.GetWorkloadsHolding()+uint32(len(k.GetWorkloadsLagging())))
		}
		svids := "-"
		if k.GetKind() != "jwt" {
			svids = fmt.Sprint(k.GetSvids())
		}
		keyType := k.GetKeyType()
		if keyType == "" {
			keyType = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.GetKind(), k.GetId(), keyType, state,
			time.Unix(k.GetNotAfter(), 0).UTC().Format(time.RFC3339), agents, workloads, svids)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, k := range st.GetKeys() {
		if len(k.GetAgentsLagging())+len(k.GetWorkloadsLagging()) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nnot holding %s %s:\n", k.GetKind(), k.GetId())
		for _, a := range k.GetAgentsLagging() {
			fmt.Fprintf(w, "  agent    %s\n", a)
		}
		for _, wl := range k.GetWorkloadsLagging() {
			fmt.Fprintf(w, "  workload %s\n", wl)
		}
	}
	return nil
}

// caRotate runs an emergency root rotation: prepare a root, wait until
// every live agent holds it (or the timeout), activate it, revoke the
// previous root so that everything under it is re-issued at once, and
// follow the re-issue.
func (c *cli) caRotate(ctx context.Context, args []string) error {
	var output string
	var now, force bool
	var ackTimeout, grace, reissueTimeout, poll time.Duration
	fs := c.flags("ca rotate", &output)
	fs.BoolVar(&now, "now", false, "rotate the root now: prepare, wait for acknowledgement, activate, revoke the previous root and re-issue")
	fs.BoolVar(&force, "force", false, "activate without waiting for agents to acknowledge the new root")
	fs.DurationVar(&ackTimeout, "ack-timeout", 5*time.Minute, "how long to wait for every live agent to acknowledge the new root; then activate anyway, with an audited warning naming the laggards")
	fs.DurationVar(&grace, "grace", 10*time.Second, "how long after activation peers still accept the previous root (agents re-issue meanwhile)")
	fs.DurationVar(&reissueTimeout, "reissue-timeout", 2*time.Minute, "how long to follow the re-issue")
	fs.DurationVar(&poll, "poll", time.Second, "how often to look at the agents' acknowledgements")
	if _, err := c.parse(fs, args, &output, 0); err != nil {
		return err
	}
	if !now {
		fmt.Fprintln(c.stderr, "signet ca rotate: --now is required (roots otherwise rotate on their schedule, once every agent holds the next one)")
		return errUsage
	}
	admin, err := c.admin(ctx)
	if err != nil {
		return err
	}
	progress := func(format string, a ...any) {
		if output == "text" {
			fmt.Fprintf(c.stdout, time.Now().UTC().Format("15:04:05 ")+format+"\n", a...)
		}
	}
	prep, err := admin.PrepareRoot(ctx, &adminv1.PrepareRootRequest{})
	if err != nil {
		return err
	}
	root := prep.GetRoot().GetId()
	progress("prepared root %s; it is in the trust bundle", root)

	// Wait for every live agent to hold it.
	deadline := time.Now().Add(ackTimeout)
	why := ""
	last := ""
	for !force {
		st, err := admin.GetCAStatus(ctx, &adminv1.GetCAStatusRequest{})
		if err != nil {
			return err
		}
		k := findKey(st, root)
		if k == nil {
			return fmt.Errorf("root %s is gone from the CA", root)
		}
		lag := k.GetAgentsLagging()
		if msg := fmt.Sprintf("%d of %d live agents hold it; lagging: %s", k.GetAgentsHolding(), k.GetAgentsHolding()+uint32(len(lag)), strings.Join(lag, ", ")); msg != last {
			progress("acknowledgements: %s", strings.TrimSuffix(msg, "; lagging: "))
			last = msg
		}
		if len(lag) == 0 {
			break
		}
		if time.Now().After(deadline) {
			why = fmt.Sprintf("the acknowledgement timeout (%s) of signet ca rotate passed", ackTimeout)
			progress("timeout: activating without %d agents", len(lag))
			force = true
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
	g := int64(grace / time.Second)
	act, err := admin.ActivateRoot(ctx, &adminv1.ActivateRootRequest{Id: root, Force: force, Why: why, RevokePrevious: true, GraceSeconds: &g})
	if err != nil {
		return err
	}
	if l := act.GetLaggards(); len(l) > 0 {
		progress("activated root %s; audited warning: not acknowledged by %s", root, strings.Join(l, ", "))
	} else {
		progress("activated root %s", root)
	}
	prev := act.GetRevocation().GetCaKey()
	if rv := act.GetRevocation(); rv != nil {
		progress("revoked the previous root %s (revocation %s); peers refuse it from %s", prev, rv.GetId(),
			time.Unix(rv.GetEnforceAfter(), 0).UTC().Format(time.RFC3339))
	}

	// Follow the re-issue: SVIDs the agents hold under the new root, and
	// under the previous one.
	deadline = time.Now().Add(reissueTimeout)
	last = ""
	var final *adminv1.GetCAStatusResponse
	for {
		st, err := admin.GetCAStatus(ctx, &adminv1.GetCAStatusRequest{})
		if err != nil {
			return err
		}
		final = st
		under, old := uint32(0), uint32(0)
		if k := findKey(st, root); k != nil {
			under = k.GetSvids()
		}
		if k := findKey(st, prev); k != nil {
			old = k.GetSvids()
		}
		if msg := fmt.Sprintf("re-issue: %d SVIDs under the new root, %d under the previous one", under, old); msg != last {
			progress("%s", msg)
			last = msg
		}
		if old == 0 || prev == "" {
			break
		}
		if time.Now().After(deadline) {
			progress("re-issue not complete after %s: agents holding SVIDs under %s: %s", reissueTimeout, prev, strings.Join(holdersUnder(st, prev), ", "))
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
	if output == "text" {
		progress("done")
		return nil
	}
	return c.print(output, map[string]any{"root": rawProto(act.GetRoot()), "laggards": act.GetLaggards(), "revocation": rawProto(act.GetRevocation()),
		"status": rawProto(final)}, nil)
}

func findKey(st *adminv1.GetCAStatusResponse, id string) *adminv1.CAKeyStatus {
	for _, k := range st.GetKeys() {
		if k.GetId() == id {
			return k
		}
	}
	return nil
}

// holdersUnder names the live agents that hold SVIDs under root.
func holdersUnder(st *adminv1.GetCAStatusResponse, root string) []string {
	live := map[string]bool{}
	for _, a := range st.GetLiveAgents() {
		live[a] = true
	}
	var out []string
	for _, a := range st.GetAcks() {
		if live[a.GetAgentId()] && a.GetSvidsByRoot()[root] > 0 {
			out = append(out, a.GetAgentId())
		}
	}
	return out
}
