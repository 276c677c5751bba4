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
// for every pod, so the identity is new to the whole system.
//
// Each round runs two pods that differ only in how the socket reaches
// them, in alternating order so that the machine's drift falls on both: a
// hostPath volume ("hostpath-" figures) and the agent's CSI volume ("csi-"
// figures), whose publish lets the agent fetch the pod's identities
// before the pod starts. Both are Pod Security restricted pods on the pod
// network (the hostPath one but for its volume).
//
//	go test -run '^$' -bench PodToSVID -benchtime 20x ./e2e/node/
func BenchmarkPodToSVID(b *testing.B) {
	for _, mode := range []string{"warm", "new"} {
		b.Run(mode, func(b *testing.B) {
			type series struct{ total, wait, start []float64 }
			got := map[string]*series{nodeenv.ViaHostPathPodNet: {}, nodeenv.ViaCSI: {}}
			refusals := 0
			for i := 0; i < b.N; i++ {
				order := []string{nodeenv.ViaHostPathPodNet, nodeenv.ViaCSI}
				if i%2 == 1 {
					order[0], order[1] = order[1], order[0]
				}
				for _, via := range order {
					ns, sa := "bench-warm", "warm"
					if mode == "new" {
						ns, sa = fmt.Sprintf("bench-new-%d-%d", time.Now().UnixNano()%1e6, i), fmt.Sprintf("sa-%d", i)
					}
					name := fmt.Sprintf("w-%s-%s-%d-%d", strings.ToLower(strings.Split(via, "-")[0]), mode, i, time.Now().UnixNano()%1e6)
					p, r, created := env.RunWorkloadVia(b, ns, name, sa, via)
					if r.SPIFFEID != "spiffe://example.org/ns/"+ns+"/sa/"+sa {
						b.Fatalf("%s: got %q, errors %v", via, r.SPIFFEID, r.Errors)
					}
					refusals += r.Attempts - 1
					t := float64(r.LoggedAt.Sub(created).Microseconds()) / 1000
					s := got[via]
					s.total = append(s.total, t)
					s.wait = append(s.wait, r.MS)
					s.start = append(s.start, t-r.MS)
					deletePod(b, p)
				}
			}
			for via, prefix := range map[string]string{nodeenv.ViaHostPathPodNet: "hostpath-", nodeenv.ViaCSI: "csi-"} {
				report(b, prefix+"total", got[via].total)
				report(b, prefix+"wait", got[via].wait)
				report(b, prefix+"podstart", got[via].start)
			}
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

// BenchmarkPodCertificate measures, on the real node, pod created → X509-SVID
// in the pod for the two ways Signet delivers it, in the same rounds and
// in alternating order: as pod certificate files (the kubelet's
// PodCertificateRequest answered by signet-ca, projected with the
// ClusterTrustBundle; "files-") and through the agent's CSI socket and the
// Workload API ("agent-"). Warm identities: pods of one service account.
//
//	go test -run '^$' -bench PodCertificate -benchtime 20x ./e2e/node/
func BenchmarkPodCertificate(b *testing.B) {
	var files, agent []float64
	for i := 0; i < b.N; i++ {
		for j := 0; j < 2; j++ {
			name := fmt.Sprintf("pc-%d-%d-%d", i, j, time.Now().UnixNano()%1e6)
			if (i+j)%2 == 0 {
				p, l, created := runPodCert(b, "bench-podcert", name, "warm")
				if !l.Verified {
					b.Fatalf("pod certificate: %+v", l)
				}
				files = append(files, float64(l.LoggedAt.Sub(created).Microseconds())/1000)
				deletePod(b, p)
			} else {
				p, r, created := env.RunWorkloadVia(b, "bench-podcert", name, "warm", nodeenv.ViaCSI)
				if r.SPIFFEID == "" {
					b.Fatalf("agent: %v", r.Errors)
				}
				agent = append(agent, float64(r.LoggedAt.Sub(created).Microseconds())/1000)
				deletePod(b, p)
			}
		}
	}
	report(b, "files-total", files)
	report(b, "agent-total", agent)
}
