package identityrule

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

const defaultTemplate = "spiffe://{{.TrustDomain}}/ns/{{.Namespace}}/sa/{{.ServiceAccount}}"

func pod() Pod {
	return Pod{Namespace: "payments", ServiceAccount: "api", PodName: "api-7d9f", PodUID: "8dbc5577-d0b9-4d32-8f5f-8c3d3fb0b5a1", NodeName: "node1",
		Labels: map[string]string{"app": "api"}, Annotations: map[string]string{"evil": "x"}}
}

func TestDefaultRule(t *testing.T) {
	r, err := Compile(td, Spec{SPIFFEIDTemplate: defaultTemplate, DNSNameTemplates: []string{"{{.ServiceAccount}}.{{.Namespace}}.svc"}})
	if err != nil {
		t.Fatal(err)
	}
	id, dns, err := r.Render(pod())
	if err != nil || id.String() != "spiffe://example.org/ns/payments/sa/api" || len(dns) != 1 || dns[0] != "api.payments.svc" {
		t.Fatalf("Render = %s %v %v", id, dns, err)
	}
}

func TestCompileRefusals(t *testing.T) {
	for _, tt := range []struct {
		spec Spec
		want string
	}{
		{Spec{SPIFFEIDTemplate: "spiffe://other.org/ns/{{.Namespace}}"}, "must start with"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.Namespace}}/x"}, "must start with"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}{{.Namespace}}/x"}, "must start with"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/signet/agent/{{.NodeName}}"}, "reserved"},
		{Spec{SPIFFEIDTemplate: "spiffe://example.org/signet"}, "reserved"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/{{.Namespace}}/x"}, "fixed text"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/ns/{{.Secret}}"}, "only"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/ns/{{if .Namespace}}x{{end}}"}, "no if"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/ns/{{printf \"%s\" .Namespace}}"}, "only"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/app/{{index .Labels \"app\"}}"}, "allowPodMetadata"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/app/{{.Labels}}", AllowPodMetadata: true}, "needs a key"},
		{Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/ns/{{.Namespace"}, "spiffeIDTemplate"},
		{Spec{SPIFFEIDTemplate: ""}, "empty"},
		{Spec{SPIFFEIDTemplate: defaultTemplate, DNSNameTemplates: []string{"{{range .Labels}}x{{end}}"}}, "dnsNameTemplates[0]"},
	} {
		if _, err := Compile(td, tt.spec); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(%q) = %v; want error containing %q", tt.spec.SPIFFEIDTemplate, err, tt.want)
		}
	}
}

func TestRenderRefusesHostileValues(t *testing.T) {
	r, err := Compile(td, Spec{SPIFFEIDTemplate: "spiffe://{{.TrustDomain}}/app/{{index .Annotations \"name\"}}", AllowPodMetadata: true,
		DNSNameTemplates: []string{"{{index .Labels \"host\"}}"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ann := range []string{"../../signet/agent/x", "a/b", "x?y", "%2e%2e", "", "a#b"} {
		p := pod()
		p.Annotations = map[string]string{"name": ann}
		p.Labels = map[string]string{"host": "ok"}
		if id, _, err := r.Render(p); err == nil {
			t.Errorf("annotation %q rendered %s", ann, id)
		}
	}
	p := pod()
	p.Annotations = map[string]string{"name": "web"}
	p.Labels = map[string]string{"host": "Not_A_DNS"}
	if _, _, err := r.Render(p); err == nil {
		t.Error("a bad DNS name rendered")
	}
	p.Labels = map[string]string{}
	if _, _, err := r.Render(p); err == nil {
		t.Error("a missing label rendered")
	}
	p.Labels = map[string]string{"host": "web.local"}
	if id, dns, err := r.Render(p); err != nil || id.String() != "spiffe://example.org/app/web" || dns[0] != "web.local" {
		t.Errorf("Render = %s %v %v", id, dns, err)
	}
}

func FuzzRender(f *testing.F) {
	f.Add(defaultTemplate, "ns", "sa", "label")
	f.Add("spiffe://{{.TrustDomain}}/x/{{index .Labels \"a\"}}", "..", "/", "../signet")
	f.Fuzz(func(t *testing.T, tmpl, ns, sa, label string) {
		r, err := Compile(td, Spec{SPIFFEIDTemplate: tmpl, AllowPodMetadata: true})
		if err != nil {
			return
		}
		id, _, err := r.Render(Pod{Namespace: ns, ServiceAccount: sa, Labels: map[string]string{"a": label}, Annotations: map[string]string{}})
		if err != nil {
			return
		}
		if id.TrustDomain() != td || id.Path() == "/signet" || strings.HasPrefix(id.Path(), "/signet/") {
			t.Fatalf("template %q rendered %s", tmpl, id)
		}
	})
}
