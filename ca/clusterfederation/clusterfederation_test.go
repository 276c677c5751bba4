package clusterfederation

import (
	"encoding/json"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// FuzzFromObject: whatever an object holds (the schema is the API
// server's, and cluster admins write these), reading it errs or yields a
// relationship of a valid trust domain; it never panics.
func FuzzFromObject(f *testing.F) {
	f.Add([]byte(`{"spec":{"trustDomain":"partner.test","bundleEndpointURL":"https://x","bundleEndpointProfile":{"type":"https_web"}}}`))
	f.Add([]byte(`{"spec":{"trustDomain":"partner.test","trustDomainBundle":"{\"keys\":[]}"},"status":{"bundle":"nope","refreshedAt":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"spec":{"trustDomain":7}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var obj map[string]any
		if json.Unmarshal(raw, &obj) != nil {
			return
		}
		r, err := FromObject(&unstructured.Unstructured{Object: obj})
		if err == nil && r.GetTrustDomain() == "" {
			t.Fatalf("read a relationship without a trust domain from %s", raw)
		}
	})
}

func TestObjectName(t *testing.T) {
	for td, want := range map[string]string{"partner.example": "partner.example", "under_score.test": "td-"} {
		if got := objectName(td); got != want && !(want == "td-" && len(got) == 23 && got[:3] == "td-") {
			t.Errorf("objectName(%q) = %q", td, got)
		}
	}
}
