package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/server"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// BenchmarkMintX509SVIDs1000 is the whole issuance path an agent uses: one
// MintX509SVIDs call of 1000 CSRs over mTLS gRPC, with the ownership check,
// CSR checks, signing and audit. Reported per SVID (ns/op) and as SVIDs/s:
// alone ("quiet"), and while the agent reports traffic counts of its
// 1,000 workloads without pause, which the CA's detector learns from
// ("traffic"), and the same with the detector off ("traffic-no-detector":
// what the detector itself costs).
//
//	go test -run '^$' -bench MintX509SVIDs1000 -count 3 ./ca/server/
func BenchmarkMintX509SVIDs1000(b *testing.B) {
	b.Run("quiet", func(b *testing.B) { benchmarkMint(b, false, true) })
	b.Run("traffic", func(b *testing.B) { benchmarkMint(b, true, true) })
	b.Run("traffic-no-detector", func(b *testing.B) { benchmarkMint(b, true, false) })
}

func benchmarkMint(b *testing.B, traffic, detector bool) {
	ca := startCA(b, func(c *server.Config) { c.NoTrafficDetector, c.TrafficLearn = !detector, 7*24*time.Hour })
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
	if traffic {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		minute := time.Now().Unix() / 60 * 60
		report := &typesv1.DecisionReport{}
		for i, e := range created.GetEntries() {
			report.Traffic = append(report.Traffic, &typesv1.TrafficCount{Server: e.GetSpiffeId(), Peer: fmt.Sprintf("spiffe://example.org/caller/%d", i%50),
				Method: "/shop.v1.Cart/Get", Minute: minute, Calls: 10, BytesIn: 1000, BytesOut: 5000})
		}
		go func() {
			for ctx.Err() == nil {
				client.ReportDecisions(ctx, report)
			}
		}()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += 1000 {
		if _, err := client.MintX509SVIDs(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}
