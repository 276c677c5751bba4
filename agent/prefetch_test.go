package agent

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/agent/csi"
	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
)

// puller stands for the CA's FetchPodEntries (the edge).
type puller chan string

func (p puller) PullPod(_ context.Context, uid string) error { p <- uid; return nil }

// TestPrefetch: a published pod whose identities were pushed already
// costs nothing; one whose push has not arrived is asked for at once,
// without holding up the publish.
func TestPrefetch(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	b, err := cache.NewBundle(td, nil, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := cache.New(b)
	c.Apply(cache.Update{PodEntries: []entry.Entry{{
		ID: entry.PodEntryID("pushed-uid", "default"), SPIFFEID: spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b"),
		Selectors: []selector.Selector{selector.PodUID("pushed-uid")},
	}}})
	pulls := make(puller, 4)
	reg := prometheus.NewRegistry()
	p := newPrefetcher(c, pulls, hclog.NewNullLogger(), reg)
	p.Published(csi.Pod{UID: "pushed-uid"})
	p.Published(csi.Pod{UID: "late-uid", Namespace: "a", Name: "web"})
	select {
	case uid := <-pulls:
		if uid != "late-uid" {
			t.Fatalf("pulled %s, want late-uid only", uid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pod whose push has not arrived was not fetched")
	}
	if got := testutil.ToFloat64(p.published.WithLabelValues("pushed")); got != 1 {
		t.Errorf("pushed = %v, want 1", got)
	}
	if got := testutil.ToFloat64(p.published.WithLabelValues("fetched")); got != 1 {
		t.Errorf("fetched = %v, want 1", got)
	}
	select {
	case uid := <-pulls:
		t.Fatalf("also pulled %s", uid)
	default:
	}
}
