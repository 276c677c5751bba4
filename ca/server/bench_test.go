package server_test

import (
	"context"
	"fmt"
	"testing"

	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// BenchmarkMintX509SVIDs1000 is the whole issuance path an agent uses: one
// MintX509SVIDs call of 1000 CSRs over mTLS gRPC, with the ownership check,
// CSR checks, signing and audit. Reported per SVID (ns/op) and as SVIDs/s.
func BenchmarkMintX509SVIDs1000(b *testing.B) {
	ca := startCA(b)
	agent, err := ca.attest(b, ca.token(b, "node1", 0))
	if err != nil {
		b.Fatal(err)
	}
	var entries []*typesv1.Entry
	for i := 0; i < 1000; i++ {
		entries = append(entries, &typesv1.Entry{SpiffeId: fmt.Sprintf("spiffe://example.org/w/%d", i), ParentId: agent.ID.String(),
			Selectors: []*typesv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", i)}}})
	}
	created, err := ca.admin.CreateEntries(context.Background(), &adminv1.CreateEntriesRequest{Entries: entries})
	if err != nil {
		b.Fatal(err)
	}
	req := &agentv1.MintX509SVIDsRequest{}
	for _, e := range created.GetEntries() {
		_, csr := newCSR(b)
		req.Requests = append(req.Requests, &agentv1.X509SVIDRequest{EntryId: e.GetId(), Csr: csr})
	}
	client := ca.nodeClient(b, agent)
	b.ResetTimer()
	for i := 0; i < b.N; i += 1000 {
		if _, err := client.MintX509SVIDs(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}
