package e2e

import (
	"testing"
	"time"
)

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
