package entry

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func valid() *typesv1.Entry {
	return &typesv1.Entry{
		SpiffeId:  "spiffe://example.org/w/1",
		ParentId:  "spiffe://example.org/signet/agent/join/node1",
		Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:1000"}},
		DnsNames:  []string{"w1.local"},
	}
}

func TestFromProto(t *testing.T) {
	e, err := FromProto(td, valid())
	if err != nil {
		t.Fatal(err)
	}
	if e.SPIFFEID.String() != "spiffe://example.org/w/1" || len(e.Selectors) != 1 {
		t.Fatalf("FromProto = %+v", e)
	}
	if got := e.Proto(); got.GetSpiffeId() != valid().GetSpiffeId() || got.GetParentId() != valid().GetParentId() {
		t.Fatalf("Proto() = %v", got)
	}
}

func TestFromProtoRefusals(t *testing.T) {
	for _, tt := range []struct {
		name      string
		mutate    func(*typesv1.Entry)
		wantField string
		wantText  string
	}{
		{"invalid spiffe id", func(e *typesv1.Entry) { e.SpiffeId = "spiffe://example.org/a//b" }, "spiffe_id", "not a valid SPIFFE ID"},
		{"not spiffe scheme", func(e *typesv1.Entry) { e.SpiffeId = "https://example.org/w" }, "spiffe_id", "not a valid SPIFFE ID"},
		{"other trust domain", func(e *typesv1.Entry) { e.SpiffeId = "spiffe://evil.org/w" }, "spiffe_id", "not in trust domain"},
		{"reserved path", func(e *typesv1.Entry) { e.SpiffeId = "spiffe://example.org/signet/agent/join/x" }, "spiffe_id", "reserved"},
		{"trust domain only", func(e *typesv1.Entry) { e.SpiffeId = "spiffe://example.org" }, "spiffe_id", "names the trust domain"},
		{"missing parent", func(e *typesv1.Entry) { e.ParentId = "" }, "parent_id", "required"},
		{"no selectors", func(e *typesv1.Entry) { e.Selectors = nil }, "selectors", "at least one"},
		{"unknown selector type", func(e *typesv1.Entry) {
			e.Selectors = append(e.Selectors, &typesv1.Selector{Type: "docker", Value: "label:x"})
		}, "selectors[1]", "unknown type"},
		{"negative ttl", func(e *typesv1.Entry) { e.X509SvidTtlSeconds = -1 }, "x509_ttl", "negative"},
		{"huge ttl", func(e *typesv1.Entry) { e.JwtSvidTtlSeconds = 1 << 40 }, "jwt_ttl", "longer than"},
		{"bad dns", func(e *typesv1.Entry) { e.DnsNames = []string{"ok.local", "bad_name!"} }, "dns_names[1]", "not a DNS name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pb := valid()
			tt.mutate(pb)
			_, err := FromProto(td, pb)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.wantField || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("FromProto() error = %v; want field %q containing %q", err, tt.wantField, tt.wantText)
			}
		})
	}
}

func FuzzFromProto(f *testing.F) {
	f.Add("spiffe://example.org/w/1", "spiffe://example.org/signet/agent/join/n", "unix", "uid:1", "a.local", int64(60))
	f.Add("spiffe://x", "", "k8s", "pod-label:a:b", "*.x", int64(-5))
	f.Fuzz(func(t *testing.T, id, parent, typ, value, dns string, ttl int64) {
		pb := &typesv1.Entry{SpiffeId: id, ParentId: parent, Selectors: []*typesv1.Selector{{Type: typ, Value: value}},
			DnsNames: []string{dns}, X509SvidTtlSeconds: ttl}
		e, err := FromProto(td, pb)
		if err != nil {
			return
		}
		// What validates once must validate again from its own output.
		if _, err := FromProto(td, e.Proto()); err != nil {
			t.Fatalf("round trip of %v: %v", pb, err)
		}
	})
}
