package agent_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// BenchmarkFetchX509SVID100 is one workload holding 100 identities calling
// FetchX509SVID on a real socket, client and agent in this process.
func BenchmarkFetchX509SVID100(b *testing.B) {
	ca := systest.StartCA(b)
	a := ca.StartAgent("node1")
	var entries []*typesv1.Entry
	for i := 0; i < 100; i++ {
		entries = append(entries, &typesv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/w/%d", i), ParentId: a.ID.String(),
			Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:0"}}})
	}
	if _, err := ca.Admin.CreateEntries(context.Background(), &adminv1.CreateEntriesRequest{Entries: entries}); err != nil {
		b.Fatal(err)
	}
	client, err := workloadapi.New(context.Background(), workloadapi.WithAddr(a.Addr))
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	for {
		if x, err := client.FetchX509Context(context.Background()); err == nil && len(x.SVIDs) == 100 {
			break
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := client.FetchX509SVID(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}
