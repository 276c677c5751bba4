// Package podidentity derives the identities of pods from IdentityRules
// (no per-pod entries are stored): it mirrors the IdentityRule objects,
// renders each node's pods under them, confirms a pod a workload asks
// about with the API server, and writes each rule's status.
package podidentity

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"

	"github.com/signet-id/signet/ca/clusterview"
	"github.com/signet-id/signet/ca/identityrule"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
)

// Config configures Identities.
type Config struct {
	// View is the cluster's pods, namespaces and nodes; New registers the
	// IdentityRule informer with it.
	View *clusterview.View
	// Dynamic writes the IdentityRules' status.
	Dynamic     dynamic.Interface
	TrustDomain spiffeid.TrustDomain
	Log         hclog.Logger
}

// Identities derives the identities of each node's pods.
type Identities struct {
	cfg   Config
	rules cache.SharedIndexInformer

	mu       sync.Mutex
	compiled map[string]*rule // by name
	order    []*rule          // sorted by name
	pulled   map[string]pulledPod
	// all is closed on a change that may concern every node (rules,
	// namespaces, nodes); byNode on a change of one node's pods.
	all      chan struct{}
	byNode   map[string]chan struct{}
	statusCh chan struct{}
}

type pulledPod struct {
	pod *corev1.Pod
	at  time.Time
}

// pulledTTL is how long a pod read from the API server on a pull is kept
// for minting while the informer catches up.
const pulledTTL = 2 * time.Minute

// New registers the IdentityRule informer and the callbacks with the
// view; the view's Start runs them, then Load reads the rules.
func New(cfg Config) (*Identities, error) {
	if cfg.Log == nil {
		cfg.Log = hclog.NewNullLogger()
	}
	id := &Identities{
		cfg: cfg, compiled: map[string]*rule{}, pulled: map[string]pulledPod{},
		all: make(chan struct{}), byNode: map[string]chan struct{}{}, statusCh: make(chan struct{}, 1),
	}
	id.rules = cfg.View.Resource(IdentityRuleResource)
	ruleChanged := func(any) { id.recompile() }
	if _, err := id.rules.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: ruleChanged, UpdateFunc: func(_, n any) { ruleChanged(n) }, DeleteFunc: ruleChanged,
	}); err != nil {
		return nil, err
	}
	cfg.View.OnPodsChange(id.notify)
	cfg.View.OnPodDeleted(id.forgetPulled)
	cfg.View.OnNodesChange(func() { id.notify("") })
	cfg.View.OnNamespacesChange(func() { id.notify("") })
	return id, nil
}

// Load compiles the rules once the view has synced; events keep them
// current after.
func (id *Identities) Load() { id.recompile() }

// notify wakes the waiters of node, or everyone for "".
func (id *Identities) notify(node string) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if node == "" {
		close(id.all)
		id.all = make(chan struct{})
		return
	}
	if ch, ok := id.byNode[node]; ok {
		close(ch)
		delete(id.byNode, node)
	}
}

// Changed returns two channels: the first is closed at the next change of
// node's pods, the second at the next change of any rule, namespace labels
// or the set of nodes. Either may change node's identities.
func (id *Identities) Changed(node string) (<-chan struct{}, <-chan struct{}) {
	id.mu.Lock()
	defer id.mu.Unlock()
	ch, ok := id.byNode[node]
	if !ok {
		ch = make(chan struct{})
		id.byNode[node] = ch
	}
	return ch, id.all
}

func (id *Identities) recompile() {
	m := map[string]*rule{}
	for _, obj := range id.rules.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		r := compileRule(id.cfg.TrustDomain, u)
		if r.err != nil {
			id.cfg.Log.Warn("IdentityRule refused", "rule", r.name, "error", r.err)
		}
		m[r.name] = r
	}
	order := make([]*rule, 0, len(m))
	for _, r := range m {
		order = append(order, r)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].name < order[j].name })
	id.mu.Lock()
	id.compiled, id.order = m, order
	id.mu.Unlock()
	select {
	case id.statusCh <- struct{}{}:
	default:
	}
	id.notify("")
}

func (id *Identities) ruleList() []*rule {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.order
}

func (id *Identities) namespaceLabels(ns string) labels.Set {
	if id.cfg.View == nil {
		return labels.Set{corev1.LabelMetadataName: ns}
	}
	return id.cfg.View.NamespaceLabels(ns)
}

// derive returns the pod's identities under every rule that selects it.
func (id *Identities) derive(p *corev1.Pod, parent spiffeid.ID, only string) []entry.Entry {
	if clusterview.Finished(p) {
		return nil
	}
	var out []entry.Entry
	var nsl labels.Set
	for _, r := range id.ruleList() {
		if r.err != nil || (only != "" && r.name != only) || !r.pods.Matches(labels.Set(p.Labels)) {
			continue
		}
		if nsl == nil {
			nsl = id.namespaceLabels(p.Namespace)
		}
		if !r.namespaces.Matches(nsl) {
			continue
		}
		e, err := r.render(p, parent)
		if err != nil {
			// Reported in the rule's status by the leader; this runs on
			// every wake of the node's streams.
			id.cfg.Log.Debug("IdentityRule does not render for pod", "rule", r.name, "pod", p.Namespace+"/"+p.Name, "error", err)
			continue
		}
		out = append(out, e)
	}
	return out
}

// render is the identity rule r gives pod p.
func (r *rule) render(p *corev1.Pod, parent spiffeid.ID) (entry.Entry, error) {
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	in := identityrule.Pod{Namespace: p.Namespace, ServiceAccount: sa, PodName: p.Name, PodUID: string(p.UID), NodeName: p.Spec.NodeName}
	if r.allowMeta {
		in.Labels, in.Annotations = p.Labels, p.Annotations
	}
	sid, dns, err := r.compiled.Render(in)
	if err != nil {
		return entry.Entry{}, err
	}
	return entry.Entry{
		ID: entry.PodEntryID(string(p.UID), r.name), SPIFFEID: sid, ParentID: parent,
		Selectors: []selector.Selector{selector.PodUID(string(p.UID))},
		DNSNames:  dns, X509TTL: r.x509TTL, JWTTTL: r.jwtTTL, WorkloadKey: r.workloadKey, FederatesWith: r.federates, Namespace: p.Namespace,
	}, nil
}

// renderFailures checks rule r against every running pod it selects and
// describes those it gives no identity: how many of how many, and the
// first few by name.
func (id *Identities) renderFailures(r *rule) (failed, selected int, examples []string) {
	for _, p := range id.cfg.View.Pods() {
		if clusterview.Finished(p) || !r.pods.Matches(labels.Set(p.Labels)) || !r.namespaces.Matches(id.namespaceLabels(p.Namespace)) {
			continue
		}
		selected++
		if _, err := r.render(p, spiffeid.ID{}); err != nil {
			failed++
			examples = append(examples, p.Namespace+"/"+p.Name+": "+err.Error())
		}
	}
	sort.Strings(examples)
	if len(examples) > 3 {
		examples = examples[:3]
	}
	return failed, selected, examples
}

// ForPod returns the identities IdentityRules give pod p (without a
// parent: for pod certificates, which no agent mints).
func (id *Identities) ForPod(p *corev1.Pod) []entry.Entry { return id.derive(p, spiffeid.ID{}, "") }

// ForNode returns the identities of the pods bound to node, parented to
// the node's agent.
func (id *Identities) ForNode(node string, parent spiffeid.ID) []entry.Entry {
	var out []entry.Entry
	for _, p := range id.cfg.View.PodsOnNode(node) {
		out = append(out, id.derive(p, parent, "")...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// nodeListing is the node's pods as the API server listed them for one
// request, so that a request about several pods asks once.
type nodeListing struct {
	done bool
	pods []corev1.Pod
}

// podOnNode finds pod uid bound to node: in the informer, among pods read
// on earlier pulls, or else in the node's pods as the API server lists
// them (once per listing). Only the pod asked for is kept beyond the
// request (id.pulled): a pod deleted since must not be found.
func (id *Identities) podOnNode(ctx context.Context, uid, node string, listing *nodeListing) (*corev1.Pod, error) {
	if p, ok := id.cfg.View.Pod(uid); ok && p.Spec.NodeName == node {
		return p, nil
	}
	if id.cfg.View.PodDeleted(uid) {
		return nil, entry.ErrPodNotOnNode
	}
	id.mu.Lock()
	pp, ok := id.pulled[uid]
	id.mu.Unlock()
	if ok && time.Since(pp.at) < pulledTTL && pp.pod.Spec.NodeName == node {
		return pp.pod, nil
	}
	if !listing.done {
		list, err := id.cfg.View.Client().CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
		if err != nil {
			return nil, fmt.Errorf("podidentity: list pods on node %s: %w", node, err)
		}
		listing.done, listing.pods = true, list.Items
	}
	for i := range listing.pods {
		if string(listing.pods[i].UID) != uid {
			continue
		}
		pod := clusterview.Trim(&listing.pods[i])
		if id.cfg.View.PodDeleted(uid) {
			return nil, entry.ErrPodNotOnNode
		}
		id.mu.Lock()
		for k, v := range id.pulled {
			if time.Since(v.at) > pulledTTL {
				delete(id.pulled, k)
			}
		}
		id.pulled[uid] = pulledPod{pod: pod, at: time.Now()}
		id.mu.Unlock()
		return pod, nil
	}
	return nil, entry.ErrPodNotOnNode
}

// forgetPulled drops a deleted pod from the pods read on pulls.
func (id *Identities) forgetPulled(uid string) {
	id.mu.Lock()
	defer id.mu.Unlock()
	delete(id.pulled, uid)
}

// Pull returns the identities of pod uid, which must be bound to node; the
// API server is asked when the informer does not know the pod yet.
func (id *Identities) Pull(ctx context.Context, uid, node string, parent spiffeid.ID) ([]entry.Entry, error) {
	p, err := id.podOnNode(ctx, uid, node, &nodeListing{})
	if err != nil {
		return nil, err
	}
	return id.derive(p, parent, ""), nil
}

// Lookup returns the pod entries with the given IDs, each only if its pod
// is bound to node. Missing ones are left out of the map.
func (id *Identities) Lookup(ctx context.Context, ids []string, node string, parent spiffeid.ID) (map[string]entry.Entry, error) {
	out := make(map[string]entry.Entry, len(ids))
	var listing nodeListing
	for _, eid := range ids {
		uid, ruleName, ok := entry.ParsePodEntryID(eid)
		if !ok {
			continue
		}
		p, err := id.podOnNode(ctx, uid, node, &listing)
		if errors.Is(err, entry.ErrPodNotOnNode) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range id.derive(p, parent, ruleName) {
			out[e.ID] = e
		}
	}
	return out, nil
}

// RunStatus writes each IdentityRule's conditions until ctx ends: Ready
// (accepted, or the reason it is refused) and, for an accepted rule,
// Rendered (whether every pod it selects gets its identity, or which do
// not and why). Only the leader runs it, on rule changes and every minute.
func (id *Identities) RunStatus(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		id.writeStatuses(ctx)
		select {
		case <-ctx.Done():
			return
		case <-id.statusCh:
		case <-t.C:
		}
	}
}

func (id *Identities) writeStatuses(ctx context.Context) {
	for _, obj := range id.rules.GetStore().List() {
		u := obj.(*unstructured.Unstructured)
		id.mu.Lock()
		r := id.compiled[u.GetName()]
		id.mu.Unlock()
		if r == nil {
			continue
		}
		want := []metav1.Condition{{Type: "Ready", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "the rule is in effect", ObservedGeneration: u.GetGeneration()}}
		if r.err != nil {
			want[0].Status, want[0].Reason, want[0].Message = metav1.ConditionFalse, "Refused", r.err.Error()
		} else {
			rendered := metav1.Condition{Type: "Rendered", Status: metav1.ConditionTrue, Reason: "AllPods", ObservedGeneration: u.GetGeneration()}
			failed, selected, examples := id.renderFailures(r)
			rendered.Message = "every pod the rule selects gets its identity"
			if failed > 0 {
				rendered.Status, rendered.Reason = metav1.ConditionFalse, "RenderFailed"
				rendered.Message = fmt.Sprintf("%d of %d selected pods get no identity from this rule: %s", failed, selected, strings.Join(examples, "; "))
				if failed > len(examples) {
					rendered.Message += fmt.Sprintf("; and %d more", failed-len(examples))
				}
			}
			want = append(want, rendered)
		}
		var st IdentityRuleStatus
		if raw, ok := u.Object["status"].(map[string]any); ok {
			if conds, ok := raw["conditions"].([]any); ok {
				for _, c := range conds {
					if m, ok := c.(map[string]any); ok {
						st.Conditions = append(st.Conditions, metav1.Condition{
							Type: str(m["type"]), Status: metav1.ConditionStatus(str(m["status"])), Reason: str(m["reason"]), Message: str(m["message"]),
						})
						if g, ok := m["observedGeneration"].(int64); ok {
							st.Conditions[len(st.Conditions)-1].ObservedGeneration = g
						}
					}
				}
			}
		}
		same := true
		for _, cond := range want {
			if old := meta.FindStatusCondition(st.Conditions, cond.Type); old == nil || old.Status != cond.Status || old.Message != cond.Message || old.ObservedGeneration != cond.ObservedGeneration {
				same = false
			}
		}
		if len(want) == 1 && meta.FindStatusCondition(st.Conditions, "Rendered") != nil {
			same = false // a refused rule renders nothing: drop the condition
			meta.RemoveStatusCondition(&st.Conditions, "Rendered")
		}
		if same {
			continue
		}
		for _, cond := range want {
			meta.SetStatusCondition(&st.Conditions, cond)
		}
		conds := make([]any, len(st.Conditions))
		for i, c := range st.Conditions {
			conds[i] = map[string]any{"type": c.Type, "status": string(c.Status), "reason": c.Reason, "message": c.Message,
				"observedGeneration": c.ObservedGeneration, "lastTransitionTime": c.LastTransitionTime.UTC().Format(time.RFC3339)}
		}
		u = u.DeepCopy()
		u.Object["status"] = map[string]any{"observedGeneration": u.GetGeneration(), "conditions": conds}
		if _, err := id.cfg.Dynamic.Resource(IdentityRuleResource).UpdateStatus(ctx, u, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
			id.cfg.Log.Warn("writing IdentityRule status failed", "rule", u.GetName(), "error", err)
		}
	}
}

func str(v any) string { s, _ := v.(string); return s }
