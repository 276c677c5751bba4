package audit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestUnauthenticatedLimit(t *testing.T) {
	var buf bytes.Buffer
	l := New(&buf)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }
	suppressed := 0
	u := &Unauthenticated{Log: l, PerSource: 3, MaxSources: 2, Suppressed: func() { suppressed++ }}
	for i := 0; i < 10; i++ {
		u.Write("10.0.0.1", Record{Event: NodeAttest, Actor: "unauthenticated", Result: Failure, Reason: "unknown join token"})
	}
	u.Write("10.0.0.2", Record{Event: NodeAttest, Actor: "unauthenticated", Result: Failure, Reason: "x"})
	// A third source is counted as "other".
	for i := 0; i < 5; i++ {
		u.Write("10.0.0.3", Record{Event: NodeAttest, Actor: "unauthenticated", Result: Failure, Reason: "y"})
	}
	// The next interval writes the counts of this one.
	now = now.Add(time.Minute)
	u.Write("10.0.0.1", Record{Event: NodeAttest, Actor: "unauthenticated", Result: Failure, Reason: "z"})
	counts := map[string]int64{}
	full := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Event == RefuseAggregate {
			counts[r.Source] = r.Count
		} else {
			full[r.Source]++
		}
	}
	if full["10.0.0.1"] != 4 || full["10.0.0.2"] != 1 || full["10.0.0.3"] != 3 {
		t.Errorf("records in full: %v", full)
	}
	if counts["10.0.0.1"] != 7 || counts["other"] != 2 || len(counts) != 2 {
		t.Errorf("aggregates: %v", counts)
	}
	if suppressed != 9 {
		t.Errorf("suppressed %d, want 9", suppressed)
	}
}
