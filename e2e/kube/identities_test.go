package kube

import (
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/signet-id/signet/ca/accesspolicy"
	"github.com/signet-id/signet/ca/podidentity"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/internal/entry"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// podView follows one agent's Sync stream and keeps the pod entries it
// was sent.
type podView struct {
	mu       sync.Mutex
	entries  map[string]*typesv1.Entry
	policies []string
	// federated are the federated bundles the agent holds, by trust domain.
	federated map[string]*typesv1.Bundle
	changed   chan struct{}
	err       error
}

func follow(t *testing.T, ca *systest.CA, svid *x509svid.SVID) *podView {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := ca.NodeClient(svid).Sync(ctx, &agentv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	v := &podView{entries: map[string]*typesv1.Entry{}, changed: make(chan struct{}, 1)}
	go func() {
		for {
			msg, err := stream.Recv()
			v.mu.Lock()
			if err != nil {
				v.err = err
				v.mu.Unlock()
				select {
				case v.changed <- struct{}{}:
				default:
				}
				return
			}
			if msg.GetPodsFull() {
				v.entries = map[string]*typesv1.Entry{}
			}
			for _, e := range msg.GetPodEntries() {
				v.entries[e.GetId()] = e
			}
			for _, id := range msg.GetDeletedPodEntryIds() {
				delete(v.entries, id)
			}
			if msg.GetFederatedBundlesSet() {
				v.federated = map[string]*typesv1.Bundle{}
				for _, b := range msg.GetFederatedBundles() {
					v.federated[b.GetTrustDomain()] = b
				}
			}
			if msg.GetPoliciesSet() {
				v.policies = nil
				for _, p := range msg.GetPolicies() {
					v.policies = append(v.policies, p.GetName())
				}
			}
			v.mu.Unlock()
			select {
			case v.changed <- struct{}{}:
			default:
			}
		}
	}()
	return v
}

// ids returns the SPIFFE IDs the agent holds, by entry ID.
func (v *podView) ids() map[string]string {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := map[string]string{}
	for id, e := range v.entries {
		out[id] = e.GetSpiffeId()
	}
	return out
}

func attestAgent(t *testing.T, ca *systest.CA, node string) *x509svid.SVID {
	t.Helper()
	svid, err := ca.AttestPSAT(podToken(t, agentPod(t, node), "signet-ca"), node)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// TestPodIdentities: pods bound to a node reach that node's agent at once
// and leave with the pod; no agent ever gets, mints or pulls the identity
// of a pod on another node.
func TestPodIdentities(t *testing.T) {
	ca := startCA(t, "ident-ca", "ident")
	svidA := attestAgent(t, ca, "node-p1")
	svidB := attestAgent(t, ca, "node-p2")
	viewA, viewB := follow(t, ca, svidA), follow(t, ca, svidB)

	start := time.Now()
	web := createPod(t, "shop", "web-1", "web", "node-p1", nil)
	webEntry := entry.PodEntryID(string(web.UID), "default")
	eventually(t, 10*time.Second, "web-1's identity at node-p1's agent", func() bool {
		return viewA.ids()[webEntry] == "spiffe://example.org/ns/shop/sa/web"
	})
	t.Logf("pod created -> identity on the agent's Sync stream: %s", time.Since(start))
	db := createPod(t, "shop", "db-1", "db", "node-p2", nil)
	dbEntry := entry.PodEntryID(string(db.UID), "default")
	eventually(t, 10*time.Second, "db-1's identity at node-p2's agent", func() bool { return viewB.ids()[dbEntry] != "" })
	if _, ok := viewA.ids()[dbEntry]; ok {
		t.Fatal("node-p1's agent got the identity of a pod on node-p2")
	}
	if _, ok := viewB.ids()[webEntry]; ok {
		t.Fatal("node-p2's agent got the identity of a pod on node-p1")
	}

	// A pod created unscheduled gets no identity anywhere until a binding
	// puts it on a node, as the scheduler does; then it arrives at once.
	pending := createPod(t, "shop", "late-1", "late", "", nil)
	lateEntry := entry.PodEntryID(string(pending.UID), "default")
	time.Sleep(300 * time.Millisecond)
	if _, ok := viewA.ids()[lateEntry]; ok {
		t.Fatal("an unscheduled pod's identity reached an agent")
	}
	start = time.Now()
	if err := cluster.Client.CoreV1().Pods("shop").Bind(context.Background(), &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: "late-1", Namespace: "shop"},
		Target:     corev1.ObjectReference{Kind: "Node", Name: "node-p1"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "late-1's identity after its binding", func() bool { return viewA.ids()[lateEntry] == "spiffe://example.org/ns/shop/sa/late" })
	t.Logf("pod bound -> identity on the agent's Sync stream: %s", time.Since(start))

	// Minting: own pod yes, the other node's pod no (and audited).
	clientA := ca.NodeClient(svidA)
	_, csr := systest.NewCSR(t)
	resp, err := clientA.MintX509SVIDs(context.Background(), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: webEntry, Csr: csr}}})
	if err != nil {
		t.Fatalf("mint own pod: %v", err)
	}
	leaf, err := x509.ParseCertificate(resp.GetSvids()[0].GetCertChain()[0])
	if err != nil || leaf.URIs[0].String() != "spiffe://example.org/ns/shop/sa/web" {
		t.Fatalf("minted %v (%v)", leaf.URIs, err)
	}
	// The CA marks where the pod runs, for policies' from conditions.
	if got := authz.AttributesOf(leaf); got != (authz.Attributes{Node: "node-p1", Namespace: "shop"}) {
		t.Errorf("the SVID says it runs at %+v (units %v)", got, leaf.Subject.OrganizationalUnit)
	}
	_, err = clientA.MintX509SVIDs(context.Background(), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: dbEntry, Csr: csr}}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("mint another node's pod: %v, want PermissionDenied", err)
	}
	if _, err := clientA.MintJWTSVID(context.Background(), &agentv1.MintJWTSVIDRequest{EntryId: dbEntry, Audience: []string{"x"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT for another node's pod: %v, want PermissionDenied", err)
	}

	// Pull: own pod yes, another node's pod no, garbage refused.
	pulled, err := clientA.FetchPodEntries(context.Background(), &agentv1.FetchPodEntriesRequest{PodUid: string(web.UID)})
	if err != nil || len(pulled.GetEntries()) != 1 || pulled.GetEntries()[0].GetId() != webEntry {
		t.Fatalf("pull own pod: %v %v", pulled, err)
	}
	if _, err := clientA.FetchPodEntries(context.Background(), &agentv1.FetchPodEntriesRequest{PodUid: string(db.UID)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("pull another node's pod: %v, want PermissionDenied", err)
	}
	if _, err := clientA.FetchPodEntries(context.Background(), &agentv1.FetchPodEntriesRequest{PodUid: "../../x"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("pull a malformed UID: %v, want InvalidArgument", err)
	}
	refusals := 0
	for _, r := range ca.AuditLog() {
		if r["event"] == "request.refuse" && strings.Contains(r["reason"].(string), string(db.UID)) {
			refusals++
		}
	}
	if refusals != 3 {
		t.Errorf("%d refusals naming the other node's pod audited, want 3", refusals)
	}

	// The pod goes, its identity goes.
	deletePod(t, web)
	eventually(t, 10*time.Second, "web-1's identity to leave", func() bool { _, ok := viewA.ids()[webEntry]; return !ok })
	if _, err := clientA.MintX509SVIDs(context.Background(), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: webEntry, Csr: csr}}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("mint a deleted pod's identity: %v, want PermissionDenied", err)
	}
}

// TestPullBeforePush: an agent asks for a pod the moment it is created,
// before any informer could have seen it; the CA confirms with the API
// server.
func TestPullBeforePush(t *testing.T) {
	ca := startCA(t, "pull-ca", "pull")
	svid := attestAgent(t, ca, "node-q1")
	client := ca.NodeClient(svid)
	for i := range 5 {
		p := createPod(t, "pull", "p"+string(rune('a'+i)), "default", "node-q1", nil)
		resp, err := client.FetchPodEntries(context.Background(), &agentv1.FetchPodEntriesRequest{PodUid: string(p.UID)})
		if err != nil || len(resp.GetEntries()) != 1 || resp.GetEntries()[0].GetSpiffeId() != "spiffe://example.org/ns/pull/sa/default" {
			t.Fatalf("pull pod %d: %v %v", i, resp, err)
		}
		_, csr := systest.NewCSR(t)
		if _, err := client.MintX509SVIDs(context.Background(), &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: resp.GetEntries()[0].GetId(), Csr: csr}}}); err != nil {
			t.Fatalf("mint pulled pod %d: %v", i, err)
		}
	}
}

func ruleObject(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "signet.dev/v1alpha1", "kind": "IdentityRule",
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
}

// TestIdentityRules: the schema refuses what it can at admission; the CA
// refuses the rest and says why in the rule's status; a rule with
// selectors and DNS templates shapes the identities of the pods it
// selects.
func TestIdentityRules(t *testing.T) {
	ca := startCA(t, "rules-ca", "rules")
	ctx := context.Background()
	rules := dyn.Resource(podidentity.IdentityRuleResource)

	for name, spec := range map[string]map[string]any{
		"reserved":     {"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/signet/agent/{{.PodName}}"},
		"not-spiffe":   {"spiffeIDTemplate": "https://example.org/ns/{{.Namespace}}"},
		"first-is-var": {"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/{{.Namespace}}/x"},
		"bad-ttl":      {"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/x/{{.PodName}}", "x509SVIDTTL": "soon"},
	} {
		if _, err := rules.Create(ctx, ruleObject(name, spec), metav1.CreateOptions{}); err == nil {
			t.Errorf("rule %s: admitted, want refused by the schema", name)
		}
	}

	// Passes the schema, but renders outside the trust domain.
	if _, err := rules.Create(ctx, ruleObject("elsewhere", map[string]any{
		"spiffeIDTemplate": "spiffe://other.org/ns/{{.Namespace}}", "podSelector": map[string]any{"matchLabels": map[string]any{"rule-test": "elsewhere"}},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Uses pod labels without opting in.
	if _, err := rules.Create(ctx, ruleObject("labels-no-optin", map[string]any{
		"spiffeIDTemplate": `spiffe://{{.TrustDomain}}/team/{{index .Labels "team"}}`, "podSelector": map[string]any{"matchLabels": map[string]any{"rule-test": "labels"}},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A good rule for pods labelled app=api: an extra identity with DNS
	// names and a short TTL, whose pods make their own keys.
	if _, err := rules.Create(ctx, ruleObject("api", map[string]any{
		"spiffeIDTemplate": "spiffe://{{.TrustDomain}}/api/{{.Namespace}}/{{.PodName}}",
		"dnsNameTemplates": []any{"{{.PodName}}.{{.Namespace}}.svc"},
		"podSelector":      map[string]any{"matchLabels": map[string]any{"app": "api"}},
		"x509SVIDTTL":      "10m",
		"workloadKey":      true,
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, n := range []string{"elsewhere", "labels-no-optin", "api"} {
			rules.Delete(ctx, n, metav1.DeleteOptions{})
		}
	})
	status := func(name string) (string, string) {
		u, err := rules.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", ""
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m := c.(map[string]any)
			if m["type"] == "Ready" {
				return m["status"].(string), m["message"].(string)
			}
		}
		return "", ""
	}
	eventually(t, 15*time.Second, "rule statuses", func() bool {
		s1, _ := status("elsewhere")
		s2, _ := status("labels-no-optin")
		s3, _ := status("api")
		return s1 == "False" && s2 == "False" && s3 == "True"
	})
	if _, msg := status("elsewhere"); !strings.Contains(msg, "example.org") {
		t.Errorf("status of the rule outside the trust domain: %q", msg)
	}
	if _, msg := status("labels-no-optin"); !strings.Contains(msg, "allowPodMetadata") {
		t.Errorf("status of the rule using labels: %q", msg)
	}

	// A rule that opts into pod labels and renders for one pod but not for
	// another that lacks the label: its status names the pod that gets no
	// identity. (The pods exist before the rule, whose creation triggers
	// the status; pod changes are looked at every minute.)
	createNode(t, "node-r0")
	createPod(t, "rules", "team-ok", "default", "node-r0", map[string]string{"rule-test": "team", "team": "blue"})
	createPod(t, "rules", "team-missing", "default", "node-r0", map[string]string{"rule-test": "team"})
	if _, err := rules.Create(ctx, ruleObject("team", map[string]any{
		"spiffeIDTemplate": `spiffe://{{.TrustDomain}}/team/{{index .Labels "team"}}/{{.PodName}}`, "allowPodMetadata": true,
		"podSelector": map[string]any{"matchLabels": map[string]any{"rule-test": "team"}},
	}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rules.Delete(ctx, "team", metav1.DeleteOptions{}) })
	condition := func(name, typ string) (string, string) {
		u, err := rules.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", ""
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m := c.(map[string]any); m["type"] == typ {
				return m["status"].(string), m["message"].(string)
			}
		}
		return "", ""
	}
	eventually(t, 15*time.Second, "the team rule's Rendered condition", func() bool { s, _ := condition("team", "Rendered"); return s == "False" })
	if _, msg := condition("team", "Rendered"); !strings.Contains(msg, "1 of 2 selected pods") || !strings.Contains(msg, "rules/team-missing") || strings.Contains(msg, "team-ok") {
		t.Errorf("Rendered condition of the team rule: %q", msg)
	}
	if s, msg := condition("api", "Rendered"); s != "True" {
		t.Errorf("Rendered condition of the api rule: %s %q", s, msg)
	}
	if s, _ := condition("elsewhere", "Rendered"); s != "" {
		t.Errorf("a refused rule has a Rendered condition: %s", s)
	}

	svid := attestAgent(t, ca, "node-r1")
	view := follow(t, ca, svid)
	api := createPod(t, "rules", "api-0", "api", "node-r1", map[string]string{"app": "api", "rule-test": "labels"})
	bad := createPod(t, "rules", "else-0", "default", "node-r1", map[string]string{"rule-test": "elsewhere"})
	apiEntry := entry.PodEntryID(string(api.UID), "api")
	eventually(t, 10*time.Second, "the api rule's identity", func() bool { return view.ids()[apiEntry] != "" })
	view.mu.Lock()
	e := view.entries[apiEntry]
	view.mu.Unlock()
	if e.GetSpiffeId() != "spiffe://example.org/api/rules/api-0" || len(e.GetDnsNames()) != 1 || e.GetDnsNames()[0] != "api-0.rules.svc" || e.GetX509SvidTtlSeconds() != 600 || !e.GetWorkloadKey() {
		t.Fatalf("api identity: %v", e)
	}
	ids := view.ids()
	if ids[entry.PodEntryID(string(api.UID), "default")] != "spiffe://example.org/ns/rules/sa/api" {
		t.Errorf("the default rule's identity is missing for api-0: %v", ids)
	}
	view.mu.Lock()
	if view.entries[entry.PodEntryID(string(api.UID), "default")].GetWorkloadKey() {
		t.Error("the default rule's identity is workload-key only; the rule does not say so")
	}
	view.mu.Unlock()
	for id, sid := range ids {
		if strings.Contains(id, string(bad.UID)) && !strings.HasSuffix(id, ":default") || !strings.HasPrefix(sid, "spiffe://example.org/") {
			t.Errorf("a refused rule gave an identity: %s = %s", id, sid)
		}
		if strings.HasSuffix(id, ":labels-no-optin") || strings.HasSuffix(id, ":elsewhere") {
			t.Errorf("a refused rule gave an identity: %s = %s", id, sid)
		}
	}
}

func csrOnly(t *testing.T) []byte {
	_, csr := systest.NewCSR(t)
	return csr
}

func (v *podView) policyNames() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return strings.Join(v.policies, ",")
}

// TestAccessPolicyObjects: AccessPolicies written in a namespace reach the
// agents whose nodes run their targets; one that allows other namespaces
// counts only once a cluster admin labelled the namespace.
func TestAccessPolicyObjects(t *testing.T) {
	ctx := context.Background()
	ca := startCA(t, "ap-ca", "ap")
	createPod(t, "team-a", "api-0", "api", "node-ap1", nil)
	svid := attestAgent(t, ca, "node-ap1")
	view := follow(t, ca, svid)
	policies := dyn.Resource(accesspolicy.Resource).Namespace("team-a")
	obj := func(name string, peer map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "signet.dev/v1alpha1", "kind": "AccessPolicy", "metadata": map[string]any{"name": name, "namespace": "team-a"},
			"spec": map[string]any{"target": "spiffe://example.org/ns/team-a/sa/api", "rules": []any{
				map[string]any{"action": "allow", "peers": []any{peer}, "methods": []any{"GET /items"}}}},
		}}
	}
	if _, err := policies.Create(ctx, obj("own", map[string]any{"serviceAccount": "team-a/web"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := policies.Create(ctx, obj("wide", map[string]any{"namespace": "team-b"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the namespace's policy at the agent", func() bool { return view.policyNames() == "team-a/own" })
	time.Sleep(200 * time.Millisecond)
	if got := view.policyNames(); got != "team-a/own" {
		t.Fatalf("agent holds %q; the cross-namespace policy must wait for the label", got)
	}
	ns, _ := cluster.Client.CoreV1().Namespaces().Get(ctx, "team-a", metav1.GetOptions{})
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels[accesspolicy.CrossNamespaceLabel] = "allowed"
	if _, err := cluster.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the cross-namespace policy after the label", func() bool { return view.policyNames() == "team-a/own,team-a/wide" })
}
