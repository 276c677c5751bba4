package entry

import "testing"

func TestPodEntryID(t *testing.T) {
	id := PodEntryID("0f3c", "default")
	if !IsPodEntryID(id) {
		t.Fatalf("IsPodEntryID(%q) = false", id)
	}
	if uid, rule, ok := ParsePodEntryID(id); !ok || uid != "0f3c" || rule != "default" {
		t.Fatalf("ParsePodEntryID(%q) = %q, %q, %v", id, uid, rule, ok)
	}
	for _, bad := range []string{"", "k8s:", "k8s:uid", "k8s::rule", "k8s:uid:", "e-1", "unix:uid:1"} {
		if uid, rule, ok := ParsePodEntryID(bad); ok {
			t.Errorf("ParsePodEntryID(%q) = %q, %q, true", bad, uid, rule)
		}
	}
	if IsPodEntryID("e-1") {
		t.Error("IsPodEntryID(e-1) = true")
	}
}
