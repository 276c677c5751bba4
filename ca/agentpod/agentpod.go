// Package agentpod answers, for the CA's agent API, whether the pod an
// agent's SVID is bound to still runs an agent on its node, and keeps the
// evictions operators make, shared by every CA replica.
package agentpod

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/signet-id/signet/ca/clusterview"
)

// Pods is the cluster's agent pods: live ones from the view, evicted ones
// from Evictions.
type Pods struct {
	view *clusterview.View
	// serviceAccounts ("namespace/name") are the accounts agent pods run
	// as.
	serviceAccounts []string
	evictions       *Evictions
}

// New returns the agent pods of view that run as one of serviceAccounts
// ("namespace/name"), with evictions kept in evictions.
func New(view *clusterview.View, serviceAccounts []string, evictions *Evictions) *Pods {
	return &Pods{view: view, serviceAccounts: serviceAccounts, evictions: evictions}
}

// AgentPod reports whether pod uid runs an agent on node: the node
// exists and the pod, bound to it with an agent service account, has not
// finished or been deleted. known is false when the view has not seen
// the pod (yet). Only the view is read: this runs on every call of every
// agent.
func (a *Pods) AgentPod(node, uid string) (alive, known bool, reason string) {
	if !a.view.NodeExists(node) {
		return false, true, fmt.Sprintf("node %q no longer exists", node)
	}
	p, ok := a.view.Pod(uid)
	if !ok {
		if a.view.PodDeleted(uid) {
			return false, true, fmt.Sprintf("agent pod %s was deleted", uid)
		}
		return false, false, fmt.Sprintf("agent pod %s is not known", uid)
	}
	switch {
	case p.Spec.NodeName != node:
		return false, true, fmt.Sprintf("agent pod %s/%s runs on node %q, not %q", p.Namespace, p.Name, p.Spec.NodeName, node)
	case clusterview.Finished(p):
		return false, true, fmt.Sprintf("agent pod %s/%s has finished", p.Namespace, p.Name)
	case !slices.Contains(a.serviceAccounts, p.Namespace+"/"+p.Spec.ServiceAccountName):
		return false, true, fmt.Sprintf("pod %s/%s does not run with an agent service account", p.Namespace, p.Name)
	}
	return true, true, ""
}

// podsOn returns the UIDs of the live agent pods bound to node.
func (a *Pods) podsOn(node string) []string {
	var out []string
	for _, p := range a.view.PodsOnNode(node) {
		if !clusterview.Finished(p) && slices.Contains(a.serviceAccounts, p.Namespace+"/"+p.Spec.ServiceAccountName) {
			out = append(out, string(p.UID))
		}
	}
	return out
}

// AgentEvicted reports whether an operator evicted the agent pod uid, at
// any replica, and why.
func (a *Pods) AgentEvicted(uid string) (string, bool) {
	ev, ok := a.evictions.Evicted(uid)
	if !ok {
		return "", false
	}
	return fmt.Sprintf("%s (at %s)", ev.Reason, ev.At.Format(time.RFC3339)), true
}

// EvictAgentPods evicts the agent pods that run on node, for all
// replicas, and returns their UIDs (none: no agent pod runs there). It
// returns once the eviction is in force at this replica.
func (a *Pods) EvictAgentPods(ctx context.Context, node, agentID, reason string) ([]string, error) {
	uids := a.podsOn(node)
	if len(uids) == 0 {
		return nil, nil
	}
	evs := map[string]Eviction{}
	for _, uid := range uids {
		evs[uid] = Eviction{Agent: agentID, Node: node, At: time.Now().UTC(), Reason: reason}
	}
	exists := func(uid string) bool { _, ok := a.view.Pod(uid); return ok }
	if err := a.evictions.Evict(ctx, evs, exists); err != nil {
		return nil, err
	}
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, uid := range uids {
		if err := a.evictions.WaitEvicted(wait, uid); err != nil {
			return nil, fmt.Errorf("eviction of pod %s recorded, not yet seen: %w", uid, err)
		}
	}
	return uids, nil
}
