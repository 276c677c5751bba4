package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestEntryJSONRoundTrip(t *testing.T) {
	in := entryJSON{SPIFFEID: "spiffe://td/w", ParentID: "spiffe://td/signet/agent/join/n", Selectors: []string{"unix:uid:1", "k8s:pod-label:a:b"},
		X509TTL: "30m", JWTTTL: "5m", DNSNames: []string{"w.local"}}
	pb, err := in.proto(0)
	if err != nil {
		t.Fatal(err)
	}
	if pb.GetSelectors()[1].GetType() != "k8s" || pb.GetSelectors()[1].GetValue() != "pod-label:a:b" || pb.GetX509SvidTtlSeconds() != 1800 {
		t.Fatalf("proto = %v", pb)
	}
	out := entryFromProto(pb)
	a, _ := json.Marshal(in)
	b, _ := json.Marshal(out)
	if string(a) != string(b) {
		t.Fatalf("round trip:\n%s\n%s", a, b)
	}
	for _, bad := range []entryJSON{{Selectors: []string{"nocolon"}}, {X509TTL: "soon"}, {JWTTTL: "-"}} {
		if _, err := bad.proto(3); err == nil || !strings.Contains(err.Error(), "entries[3]") {
			t.Errorf("%+v: error %v; want one naming entries[3]", bad, err)
		}
	}
}

func FuzzEntriesFile(f *testing.F) {
	f.Add(`{"entries": [{"spiffe_id": "spiffe://td/w", "parent_id": "spiffe://td/p", "selectors": ["unix:uid:1"], "x509_ttl": "1h"}]}`)
	f.Add(`{"entries": [{"selectors": [":"], "jwt_ttl": "9999999h"}]}`)
	f.Add(`{"entries": null}`)
	f.Fuzz(func(t *testing.T, s string) {
		var in entriesFile
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		if dec.Decode(&in) != nil {
			return
		}
		for i, e := range in.Entries {
			e.proto(i) // must not panic
		}
	})
}
