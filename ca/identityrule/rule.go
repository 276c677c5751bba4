// Package identityrule compiles and renders the templates of an
// IdentityRule: how a pod's SPIFFE ID and DNS names are derived from its
// metadata. A rule is refused when its template could render outside the
// trust domain or into the reserved signet/ path, checked statically at
// compile time and again on every render.
package identityrule

import (
	"bytes"
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/signetid"
)

// Spec is the part of an IdentityRule this package needs.
type Spec struct {
	// SPIFFEIDTemplate, e.g. "spiffe://{{.TrustDomain}}/ns/{{.Namespace}}/sa/{{.ServiceAccount}}".
	SPIFFEIDTemplate string
	DNSNameTemplates []string
	// AllowPodMetadata offers .Labels and .Annotations to the templates.
	// Pod authors control both, so a rule must opt in.
	AllowPodMetadata bool
}

// Pod is the pod metadata templates may use.
type Pod struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	NodeName       string
	Labels         map[string]string
	Annotations    map[string]string
}

var fields = map[string]bool{"TrustDomain": true, "Namespace": true, "ServiceAccount": true, "PodName": true, "PodUID": true, "NodeName": true}

var metadataFields = map[string]bool{"Labels": true, "Annotations": true}

// Rule is a compiled Spec.
type Rule struct {
	td  spiffeid.TrustDomain
	id  *template.Template
	dns []*template.Template
}

// Compile checks and compiles spec for trust domain td.
func Compile(td spiffeid.TrustDomain, spec Spec) (*Rule, error) {
	id, err := compile("spiffeIDTemplate", spec.SPIFFEIDTemplate, spec.AllowPodMetadata)
	if err != nil {
		return nil, err
	}
	if err := checkIDShape(td, id); err != nil {
		return nil, fmt.Errorf("spiffeIDTemplate: %w", err)
	}
	r := &Rule{td: td, id: id}
	for i, s := range spec.DNSNameTemplates {
		t, err := compile(fmt.Sprintf("dnsNameTemplates[%d]", i), s, spec.AllowPodMetadata)
		if err != nil {
			return nil, err
		}
		r.dns = append(r.dns, t)
	}
	return r, nil
}

func compile(name, text string, allowMeta bool) (*template.Template, error) {
	if text == "" {
		return nil, fmt.Errorf("%s: empty", name)
	}
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	for _, n := range t.Tree.Root.Nodes {
		if err := checkNode(n, allowMeta); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return t, nil
}

// checkNode allows text, {{.Field}} and, with pod metadata allowed,
// {{index .Labels "key"}} / {{index .Annotations "key"}}: nothing whose
// output a static check could not bound.
func checkNode(n parse.Node, allowMeta bool) error {
	switch n := n.(type) {
	case *parse.TextNode:
		return nil
	case *parse.ActionNode:
		if len(n.Pipe.Decl) == 0 && len(n.Pipe.Cmds) == 1 {
			args := n.Pipe.Cmds[0].Args
			if len(args) == 1 {
				if f, ok := args[0].(*parse.FieldNode); ok && len(f.Ident) == 1 && fields[f.Ident[0]] {
					return nil
				}
				if f, ok := args[0].(*parse.FieldNode); ok && len(f.Ident) == 1 && metadataFields[f.Ident[0]] {
					return fmt.Errorf("{{.%s}} needs a key: use {{index .%s \"key\"}}", f.Ident[0], f.Ident[0])
				}
			}
			if len(args) == 3 {
				fn, ok1 := args[0].(*parse.IdentifierNode)
				f, ok2 := args[1].(*parse.FieldNode)
				_, ok3 := args[2].(*parse.StringNode)
				if ok1 && ok2 && ok3 && fn.Ident == "index" && len(f.Ident) == 1 && metadataFields[f.Ident[0]] {
					if !allowMeta {
						return fmt.Errorf("{{index .%s ...}}: pod labels and annotations need allowPodMetadata: true", f.Ident[0])
					}
					return nil
				}
			}
		}
		return fmt.Errorf("%s: only {{.TrustDomain}}, {{.Namespace}}, {{.ServiceAccount}}, {{.PodName}}, {{.PodUID}}, {{.NodeName}} and {{index .Labels \"key\"}} / {{index .Annotations \"key\"}} are allowed", n)
	default:
		return fmt.Errorf("%s: only plain fields are allowed (no if, range, with or variables)", n)
	}
}

// checkIDShape requires "spiffe://" + the trust domain (literal or
// {{.TrustDomain}}) + "/" + a literal first path segment other than
// "signet": nothing a pod controls decides the trust domain or whether the
// ID lands in the reserved space.
func checkIDShape(td spiffeid.TrustDomain, t *template.Template) error {
	nodes := t.Tree.Root.Nodes
	var prefix strings.Builder
	i := 0
	for ; i < len(nodes); i++ {
		switch n := nodes[i].(type) {
		case *parse.TextNode:
			prefix.Write(n.Text)
		case *parse.ActionNode:
			if f, ok := n.Pipe.Cmds[0].Args[0].(*parse.FieldNode); ok && len(f.Ident) == 1 && f.Ident[0] == "TrustDomain" && prefix.String() == "spiffe://" {
				prefix.WriteString(td.Name())
				continue
			}
		}
		if _, ok := nodes[i].(*parse.ActionNode); ok {
			break
		}
	}
	p := prefix.String()
	want := "spiffe://" + td.Name() + "/"
	if !strings.HasPrefix(p, want) {
		return fmt.Errorf("must start with %q or \"spiffe://{{.TrustDomain}}/\", then a fixed path segment", want)
	}
	first, _, complete := strings.Cut(p[len(want):], "/")
	if !complete && i < len(nodes) {
		return fmt.Errorf("the first path segment must be fixed text, not a template field")
	}
	if first == "" {
		return fmt.Errorf("the first path segment is empty")
	}
	if first == "signet" {
		return fmt.Errorf("the path signet/ is reserved for Signet's own identities")
	}
	return nil
}

// Render derives the SPIFFE ID and DNS names of pod. The result is checked
// again: a value from the pod cannot move it out of the trust domain or
// into signet/, nor add path segments.
func (r *Rule) Render(pod Pod) (spiffeid.ID, []string, error) {
	pod.TrustDomain = r.td.Name()
	for name, v := range map[string]string{"Namespace": pod.Namespace, "ServiceAccount": pod.ServiceAccount, "PodName": pod.PodName, "PodUID": pod.PodUID, "NodeName": pod.NodeName} {
		if strings.ContainsAny(v, "/?#%") {
			return spiffeid.ID{}, nil, fmt.Errorf("render: %s %q holds a character that cannot go in a path segment", name, v)
		}
	}
	for _, m := range []map[string]string{pod.Labels, pod.Annotations} {
		for k, v := range m {
			if strings.ContainsAny(v, "/?#%:@") {
				return spiffeid.ID{}, nil, fmt.Errorf("render: metadata %q = %q holds a character that cannot go in a path segment", k, v)
			}
		}
	}
	var buf bytes.Buffer
	if err := r.id.Execute(&buf, pod); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("render: %w", err)
	}
	id, err := spiffeid.FromString(buf.String())
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("render: %q is not a SPIFFE ID: %w", buf.String(), err)
	}
	if id.TrustDomain() != r.td || signetid.IsReserved(id) {
		return spiffeid.ID{}, nil, fmt.Errorf("render: %s is outside the trust domain's workload space", id)
	}
	var names []string
	for _, t := range r.dns {
		buf.Reset()
		if err := t.Execute(&buf, pod); err != nil {
			return spiffeid.ID{}, nil, fmt.Errorf("render: %w", err)
		}
		n := buf.String()
		if err := entry.ValidDNSName(n); err != nil {
			return spiffeid.ID{}, nil, fmt.Errorf("render: %w", err)
		}
		names = append(names, n)
	}
	return id, names, nil
}
