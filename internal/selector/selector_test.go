package selector

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		in      string
		want    Selector
		wantErr string
	}{
		{in: "unix:uid:1000", want: Selector{"unix", "uid:1000"}},
		{in: "unix:path:/usr/bin/server", want: Selector{"unix", "path:/usr/bin/server"}},
		{in: "unix:sha256:" + strings.Repeat("ab", 32), want: Selector{"unix", "sha256:" + strings.Repeat("ab", 32)}},
		{in: "k8s:ns:payments", want: Selector{"k8s", "ns:payments"}},
		{in: "k8s:pod-label:app:web", want: Selector{"k8s", "pod-label:app:web"}},
		{in: "k8s:container-image:ghcr.io/a/b@sha256:00", want: Selector{"k8s", "container-image:ghcr.io/a/b@sha256:00"}},
		{in: "docker:label:x", wantErr: `unknown type "docker"`},
		{in: "unix", wantErr: "want type:key:value"},
		{in: "unix:uid", wantErr: "want unix:key:value"},
		{in: "unix:color:red", wantErr: `unknown unix key "color"`},
		{in: "unix:uid:-1", wantErr: "not a non-negative"},
		{in: "unix:uid:99999999999", wantErr: "not a non-negative"},
		{in: "unix:path:relative/bin", wantErr: "not an absolute path"},
		{in: "unix:sha256:XYZ", wantErr: "SHA-256"},
		{in: "k8s:ns:", wantErr: "not a valid Kubernetes name"},
		{in: "k8s:ns:Bad Name", wantErr: "not a valid Kubernetes name"},
		{in: "k8s:pod-label:novalue", wantErr: "not key:value"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q; want %q", got.String(), tt.in)
			}
		})
	}
}

func TestCanonicalAndSubset(t *testing.T) {
	a := Selector{"unix", "uid:1"}
	b := Selector{"unix", "gid:2"}
	c := Selector{"k8s", "ns:x"}
	got := Canonical([]Selector{a, b, a, c})
	want := []Selector{c, b, a}
	if len(got) != len(want) {
		t.Fatalf("Canonical = %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Canonical = %v; want %v", got, want)
		}
	}
	if !SubsetOf([]Selector{a, b}, []Selector{c, b, a}) {
		t.Error("SubsetOf({a,b}, {a,b,c}) = false")
	}
	if SubsetOf([]Selector{a, c}, []Selector{a, b}) {
		t.Error("SubsetOf({a,c}, {a,b}) = true")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "k8s:pod-label:a:b", "unix:sha256:" + strings.Repeat("0", 64), "::", "k8s:ns:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(sel.String())
		if err != nil || again != sel {
			t.Fatalf("Parse(String()) of %q = %v, %v; want %v", s, again, err, sel)
		}
	})
}

func TestPodUID(t *testing.T) {
	s := PodUID("0f3c")
	if s.String() != "k8s:pod-uid:0f3c" {
		t.Fatalf("PodUID = %s", s)
	}
	if _, err := Parse(s.String()); err != nil {
		t.Fatalf("PodUID does not parse: %v", err)
	}
	if uid, ok := PodUIDOf(s); !ok || uid != "0f3c" {
		t.Fatalf("PodUIDOf = %q, %v", uid, ok)
	}
	for _, other := range []Selector{{Type: "unix", Value: "pod-uid:x"}, {Type: "k8s", Value: "ns:x"}} {
		if _, ok := PodUIDOf(other); ok {
			t.Errorf("PodUIDOf(%s) = true", other)
		}
	}
}
