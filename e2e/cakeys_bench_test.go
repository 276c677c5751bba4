package e2e

import (
	"testing"
	"time"
)

// BenchmarkRevocationUnderTraffic: 100 SDK workloads on one agent
// (processes) making handshakes with each other; workload 0 holds an open
// connection to each of the 99 others, and its SVID is revoked. Reports
// revoke -> each peer has closed that connection and refuses a new
// handshake with the revoked SVID (p50, p99, max; goal p99 <= 2 s), and
// the peers that never did (goal 0).
//
//	go test ./e2e -run '^$' -bench BenchmarkRevocationUnderTraffic -benchtime 1x
func BenchmarkRevocationUnderTraffic(b *testing.B) {
	for range b.N {
		res := revocationUnderTraffic(b, 100, 8)
		if len(res.refused) > 0 {
			q := func(p float64) float64 {
				return float64(res.refused[min(len(res.refused)-1, int(p*float64(len(res.refused))))].Milliseconds())
			}
			b.ReportMetric(q(0.5), "ms-p50")
			b.ReportMetric(q(0.99), "ms-p99")
			b.ReportMetric(float64(res.refused[len(res.refused)-1].Milliseconds()), "ms-max")
		}
		b.ReportMetric(float64(res.never), "never")
		b.ReportMetric(float64(res.ok), "handshakes")
	}
}

// BenchmarkIntermediateCompromise: 100 SDK workloads on one agent
// (signet-ca and signet-agent as processes) making handshakes with each
// other; the active intermediate is revoked (grace 10 s, the default).
// Reports revoke -> every workload holds an SVID under a new
// intermediate, and the handshakes that failed between them (goal 0).
//
//	go test ./e2e -run '^$' -bench BenchmarkIntermediateCompromise -benchtime 1x
func BenchmarkIntermediateCompromise(b *testing.B) {
	for range b.N {
		res := intermediateCompromise(b, 100, 8, 10*time.Second)
		b.ReportMetric(float64(res.reissued.Milliseconds()), "ms-reissued")
		b.ReportMetric(float64(res.ok), "handshakes")
		b.ReportMetric(float64(res.failed), "failed")
		if res.failed > 0 {
			b.Logf("failures: %v", res.failures)
		}
	}
}

// BenchmarkRootRotation: 100 SDK workloads on one agent make 100,000
// handshakes with each other across `signet ca rotate --now`, while a
// second agent is stopped: the activation waits for it (ack timeout
// 10 s), then goes ahead with an audited warning. Reports the
// handshakes, those that failed (goal 0), and the rotation's duration.
//
//	go test ./e2e -run '^$' -bench BenchmarkRootRotation -benchtime 1x
func BenchmarkRootRotation(b *testing.B) {
	for range b.N {
		res := rootRotation(b, 100, 8, 100_000, 10*time.Second)
		b.Logf("signet ca rotate --now:\n%s", res.progress)
		b.ReportMetric(res.took.Seconds(), "s-rotation")
		b.ReportMetric(float64(res.ok), "handshakes")
		b.ReportMetric(float64(res.failed), "failed")
		if res.failed > 0 {
			b.Logf("failures: %v", res.failures)
		}
	}
}
