package sdk

import (
	"context"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// LatencyBounds are the upper bounds of the latency buckets of traffic
// counts; a last bucket takes the longer calls.
var LatencyBounds = []time.Duration{time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond, 2500 * time.Millisecond}

// Bounds of the traffic a Source keeps: counts per caller, method and
// minute until they are reported (Follow), and totals per caller and
// method for metrics. What does not fit is dropped and counted (counts),
// or goes to the caller and method "(other)" (totals).
const (
	maxTrafficKeys   = 10000
	maxTrafficSeries = 1000
	// Other names the callers and methods past maxTrafficSeries.
	Other = "(other)"
)

type trafficKey struct {
	peer, method string
	minute       int64
}

// Traffic is what a server saw of one caller's calls of one method.
type Traffic struct {
	Calls, Denials    int64
	BytesIn, BytesOut int64
	// Latency counts calls by LatencyBounds, and a last bucket.
	Latency [7]int64
}

func (t *Traffic) add(o Traffic) {
	t.Calls += o.Calls
	t.Denials += o.Denials
	t.BytesIn += o.BytesIn
	t.BytesOut += o.BytesOut
	for i := range t.Latency {
		t.Latency[i] += o.Latency[i]
	}
}

// TrafficSeries is the totals of one caller and method since the Source
// started.
type TrafficSeries struct {
	Peer, Method string
	Traffic
}

// traffic counts the calls a server serves. Requests only add under a
// mutex; reports and metrics take copies.
type traffic struct {
	mu      sync.Mutex
	counts  map[trafficKey]*Traffic
	dropped int64
	totals  map[[2]string]*Traffic
}

// record counts one call.
func (t *traffic) record(peer, method string, denied bool, in, out int64, d time.Duration, now time.Time) {
	one := Traffic{Calls: 1, BytesIn: in, BytesOut: out}
	if denied {
		one.Denials = 1
	}
	b := len(LatencyBounds)
	for i, bound := range LatencyBounds {
		if d <= bound {
			b = i
			break
		}
	}
	one.Latency[b] = 1
	t.add(peer, method, one, now.Unix()/60*60)
}

// add counts one under a caller, method and minute (Unix seconds, on a
// minute).
func (t *traffic) add(peer, method string, one Traffic, minute int64) {
	k := trafficKey{peer: peer, method: method, minute: minute}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts, t.totals = map[trafficKey]*Traffic{}, map[[2]string]*Traffic{}
	}
	if c := t.counts[k]; c != nil {
		c.add(one)
	} else if len(t.counts) < maxTrafficKeys {
		c := one
		t.counts[k] = &c
	} else {
		t.dropped++
	}
	sk := [2]string{peer, method}
	if _, ok := t.totals[sk]; !ok && len(t.totals) >= maxTrafficSeries {
		sk = [2]string{Other, Other}
	}
	if c := t.totals[sk]; c != nil {
		c.add(one)
	} else {
		c := one
		t.totals[sk] = &c
	}
}

// take removes the counts so far, for a report.
func (t *traffic) take() (map[trafficKey]*Traffic, int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, d := t.counts, t.dropped
	t.counts, t.dropped = map[trafficKey]*Traffic{}, 0
	if t.totals == nil {
		t.totals = map[[2]string]*Traffic{}
	}
	return c, d
}

// giveBack returns counts that could not be reported.
func (t *traffic) giveBack(counts map[trafficKey]*Traffic, dropped int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dropped += dropped
	for k, c := range counts {
		if cur := t.counts[k]; cur != nil {
			cur.add(*c)
		} else if len(t.counts) < maxTrafficKeys {
			t.counts[k] = c
		} else {
			t.dropped += c.Calls
		}
	}
}

// proto is counts as the report carries them.
func trafficProto(server string, counts map[trafficKey]*Traffic) []*typesv1.TrafficCount {
	out := make([]*typesv1.TrafficCount, 0, len(counts))
	for k, c := range counts {
		out = append(out, &typesv1.TrafficCount{Server: server, Peer: k.peer, Method: k.method, Minute: k.minute, Calls: c.Calls,
			Denials: c.Denials, BytesIn: c.BytesIn, BytesOut: c.BytesOut, Latency: c.Latency[:]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetMinute() < out[j].GetMinute() })
	return out
}

// TrafficTotals returns, per caller and method, what the servers of this
// Source served since it started: at most 1,000 series, the rest summed
// under Other. sdk/sdkmetrics exports them as Prometheus metrics.
func (s *Source) TrafficTotals() []TrafficSeries {
	s.traffic.mu.Lock()
	defer s.traffic.mu.Unlock()
	out := make([]TrafficSeries, 0, len(s.traffic.totals))
	for k, c := range s.traffic.totals {
		out = append(out, TrafficSeries{Peer: k[0], Method: k[1], Traffic: *c})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Peer != out[j].Peer {
			return out[i].Peer < out[j].Peer
		}
		return out[i].Method < out[j].Method
	})
	return out
}

// statsHandler counts a gRPC server's calls: payload bytes each way, the
// duration, and whether the policy denied it.
type statsHandler struct{ src *Source }

type rpcKey struct{}

type rpcTraffic struct {
	method  string
	in, out int64
}

func (h statsHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, rpcKey{}, &rpcTraffic{method: info.FullMethodName})
}

func (h statsHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	rt, _ := ctx.Value(rpcKey{}).(*rpcTraffic)
	if rt == nil {
		return
	}
	switch s := s.(type) {
	case *stats.InPayload:
		rt.in += int64(s.WireLength)
	case *stats.OutPayload:
		rt.out += int64(s.WireLength)
	case *stats.End:
		id, ok := PeerIDFromContext(ctx)
		if !ok {
			return
		}
		denied := status.Code(s.Error) == codes.PermissionDenied && status.Convert(s.Error).Message() == deniedMessage
		h.src.traffic.record(id.String(), rt.method, denied, rt.in, rt.out, s.EndTime.Sub(s.BeginTime), h.src.clock())
	}
}

func (statsHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (statsHandler) HandleConn(context.Context, stats.ConnStats)                       {}

// countingBody counts the bytes read from a request body.
type countingBody struct {
	body io.ReadCloser
	n    int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.n += int64(n)
	return n, err
}

func (b *countingBody) Close() error { return b.body.Close() }

// countingWriter counts the bytes written and the status of a response.
type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
	// denied is set by Middleware when the policy refused the request.
	denied bool
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the writer beneath.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countHTTP counts the requests h serves for the source's traffic.
func countHTTP(src *Source, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		cw := &countingWriter{ResponseWriter: w}
		var body *countingBody
		if r.Body != nil {
			body = &countingBody{body: r.Body}
			r.Body = body
		}
		h.ServeHTTP(cw, r)
		if r.TLS == nil {
			return
		}
		id, err := peerIDOfState(*r.TLS)
		if err != nil {
			return
		}
		var in int64
		if body != nil {
			in = body.n
		}
		src.traffic.record(id.String(), r.Method+" "+r.URL.Path, cw.denied, in, cw.n, time.Since(start), src.clock())
	})
}

// SetClock makes the Source stamp its traffic counts (the minute of each
// call) with the time from now instead of time.Now: for simulations and
// tests that run days of traffic in seconds. Durations are measured as
// ever.
func (s *Source) SetClock(now func() time.Time) { s.now.Store(&now) }

// clock is the time to stamp a count with.
func (s *Source) clock() time.Time {
	if now := s.now.Load(); now != nil {
		return (*now)()
	}
	return time.Now()
}
