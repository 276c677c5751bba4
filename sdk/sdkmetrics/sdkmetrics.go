// Package sdkmetrics exports, as Prometheus metrics, the traffic a
// service's SDK servers count (sdk.Source.TrafficTotals): calls and
// denials, bytes each way, and call durations, per caller and method. It
// is a package of its own so that services that do not use Prometheus do
// not link it.
//
// Label cardinality is bounded: a Source keeps at most 1,000 (caller,
// method) series, and counts the rest under caller and method "(other)".
package sdkmetrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/signet-id/signet/sdk"
)

// Collector collects a Source's traffic totals at each scrape.
type Collector struct {
	src                   *sdk.Source
	calls, bytes, latency *prometheus.Desc
}

// New returns the collector of src's traffic; register it with
// prometheus.MustRegister.
func New(src *sdk.Source) *Collector {
	return &Collector{src: src,
		calls:   prometheus.NewDesc("signet_sdk_calls_total", "Calls this service's SDK servers served, by caller, method and result (allowed, denied by policy).", []string{"peer", "method", "result"}, nil),
		bytes:   prometheus.NewDesc("signet_sdk_payload_bytes_total", "Payload bytes of the calls served, by caller, method and direction (in: requests, out: responses).", []string{"peer", "method", "direction"}, nil),
		latency: prometheus.NewDesc("signet_sdk_call_duration_seconds", "Duration of the calls served, by method.", []string{"method"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.calls
	ch <- c.bytes
	ch <- c.latency
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	type hist struct {
		n       uint64
		sum     float64
		buckets map[float64]uint64
	}
	byMethod := map[string]*hist{}
	for _, s := range c.src.TrafficTotals() {
		ch <- prometheus.MustNewConstMetric(c.calls, prometheus.CounterValue, float64(s.Calls-s.Denials), s.Peer, s.Method, "allowed")
		ch <- prometheus.MustNewConstMetric(c.calls, prometheus.CounterValue, float64(s.Denials), s.Peer, s.Method, "denied")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.BytesIn), s.Peer, s.Method, "in")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.BytesOut), s.Peer, s.Method, "out")
		h := byMethod[s.Method]
		if h == nil {
			h = &hist{buckets: map[float64]uint64{}}
			byMethod[s.Method] = h
		}
		cum := uint64(0)
		for i, bound := range sdk.LatencyBounds {
			cum += uint64(s.Latency[i])
			h.buckets[bound.Seconds()] += cum
			// Durations are kept by bucket only: the sum is an upper
			// bound, each call counted at its bucket's bound.
			h.sum += float64(s.Latency[i]) * bound.Seconds()
		}
		h.n += uint64(s.Calls)
		h.sum += float64(s.Latency[len(sdk.LatencyBounds)]) * sdk.LatencyBounds[len(sdk.LatencyBounds)-1].Seconds()
	}
	for m, h := range byMethod {
		ch <- prometheus.MustNewConstHistogram(c.latency, h.n, h.sum, h.buckets, m)
	}
}
