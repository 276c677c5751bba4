package node

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/signet-id/signet/e2e/nodeenv"
)

// BenchmarkPodToSVID measures, on the real node, the time from a pod's
// creation to the X509-SVID in its workload's hands, split into the pod's
// start (Kubernetes' own: create to the workload's process start) and the
// workload's own wait (process start to SVID). "warm": pods of a service
// account that had pods before; "new": a new namespace and service account
// for every pod, so the identity is new to the whole system. Each twice:
// the socket by hostPath (a host-network pod), and by the agent's CSI
// driver (a Pod Security restricted pod on the pod network), whose
// publish lets the agent fetch the pod's identities before the pod starts.
//
//	go test -run '^$' -bench PodToSVID -benchtime 20x ./e2e/node/
func BenchmarkPodToSVID(b *testing.B) {
	for _, bench := range []struct{ via, mode string }{
		{nodeenv.ViaHostPath, "warm"}, {nodeenv.ViaCSI, "warm"}, {nodeenv.ViaHostPath, "new"}, {nodeenv.ViaCSI, "new"},
	} {
		via, mode := bench.via, bench.mode
		b.Run(via+"/"+mode, func(b *testing.B) {
			var total, wait, start []float64
			refusals := 0
			for i := 0; i < b.N; i++ {
				ns, sa := "bench-warm", "warm"
				if mode == "new" {
					ns, sa = fmt.Sprintf("bench-new-%d-%d", time.Now().UnixNano()%1e6, i), fmt.Sprintf("sa-%d", i)
				}
				p, r, created := env.RunWorkloadVia(b, ns, fmt.Sprintf("w-%s-%s-%d-%d", strings.ToLower(via), mode, i, time.Now().UnixNano()%1e6), sa, via)
				if r.SPIFFEID != "spiffe://example.org/ns/"+ns+"/sa/"+sa {
					b.Fatalf("got %q, errors %v", r.SPIFFEID, r.Errors)
				}
				refusals += r.Attempts - 1
				t := float64(r.LoggedAt.Sub(created).Microseconds()) / 1000
				total = append(total, t)
				wait = append(wait, r.MS)
				start = append(start, t-r.MS)
				deletePod(b, p)
			}
			report(b, "total", total)
			report(b, "wait", wait)
			report(b, "podstart", start)
			b.ReportMetric(float64(refusals), "refusals")
		})
	}
}

func report(b *testing.B, name string, ms []float64) {
	sort.Float64s(ms)
	q := func(p float64) float64 { return ms[min(len(ms)-1, int(p*float64(len(ms))))] }
	b.ReportMetric(ms[0], name+"-min-ms")
	b.ReportMetric(q(0.5), name+"-p50-ms")
	b.ReportMetric(q(0.9), name+"-p90-ms")
	b.ReportMetric(ms[len(ms)-1], name+"-max-ms")
}
