package attack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type floodResult struct {
	Open  int `json:"open"`
	Tried int `json:"tried"`
}

// startFlood runs the attacker's flood as uid 65534 and returns once it
// holds its connections (or has finished, with hold 0).
func startFlood(t testing.TB, socket string, n int, hold time.Duration, extra ...string) (floodResult, func()) {
	t.Helper()
	line, stop := startAttacker(t, 2*time.Minute, append([]string{"flood", socket, strconv.Itoa(n), strconv.Itoa(int(hold / time.Second))}, extra...)...)
	var r floodResult
	if err := json.Unmarshal(line, &r); err != nil {
		stop()
		t.Fatalf("flood output %q: %v", line, err)
	}
	return r, stop
}

// TestWorkloadAPIFlood: the socket is open to every local user, and
// there was no limit on connections. An unprivileged user opened idle
// connections by the ten thousand; legitimate workloads got no SVID, and
// a few thousand put the agent past its DaemonSet's memory limit. One
// caller may now hold only a few dozen; the others are closed at once,
// and other callers are served meanwhile.
func TestWorkloadAPIFlood(t *testing.T) {
	s := startStandalone(t)
	const me = "spiffe://example.org/attack/legit"
	s.cli(t, "entry", "create", "--spiffe-id", me, "--parent-id", "spiffe://example.org/signet/agent/join/attack-node", "--selector", "unix:uid:0")
	r, stop := startFlood(t, s.socket, 3000, 30*time.Second)
	defer stop()
	if r.Open > 64 {
		t.Errorf("one unprivileged caller holds %d of %d connections", r.Open, r.Tried)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.socket))
	if err != nil || svid.ID.String() != me {
		t.Fatalf("a legitimate caller during the flood: %v %v", svid, err)
	}
	t.Logf("flood: %d of %d connections held; agent %s", r.Open, r.Tried, agentMemory(t, s.agent.Process.Pid))
}

// agentMemory reads a process's resident and peak memory.
func agentMemory(t testing.TB, pid int) string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmRSS:") || strings.HasPrefix(line, "VmHWM:") {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(out, ", ")
}

func rssKB(t testing.TB, pid int, field string) float64 {
	raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	t.Fatalf("no %s for process %d", field, pid)
	return 0
}

// BenchmarkWorkloadAPIFlood measures what a legitimate caller sees (a new
// connection and FetchX509SVID each time, as a starting workload does) in
// one run: without a flood; while one unprivileged caller holds the idle
// connections it could open of 20,000; and while it also opens and closes
// new ones as fast as it can (churn). It reports p50/p99 in ms, failed
// fetches, and the agent's resident and peak memory.
//
//	go test -run '^$' -bench WorkloadAPIFlood -benchtime 2000x ./e2e/attack/
func BenchmarkWorkloadAPIFlood(b *testing.B) {
	s := startStandalone(b)
	const me = "spiffe://example.org/attack/legit"
	s.cli(b, "entry", "create", "--spiffe-id", me, "--parent-id", "spiffe://example.org/signet/agent/join/attack-node", "--selector", "unix:uid:0")
	fetch := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := time.Now()
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.socket))
		return time.Since(start), err
	}
	phase := func(name string, n int) {
		var d []float64
		failed := 0
		for range n {
			took, err := fetch()
			if err != nil {
				failed++
				continue
			}
			d = append(d, float64(took.Microseconds())/1000)
		}
		sort.Float64s(d)
		if len(d) > 0 {
			b.ReportMetric(d[len(d)/2], name+"-p50-ms")
			b.ReportMetric(d[len(d)*99/100], name+"-p99-ms")
		}
		b.ReportMetric(float64(failed), name+"-failed")
	}
	if _, err := fetch(); err != nil { // warm up
		b.Fatal(err)
	}
	n := max(b.N, 200)
	b.ResetTimer()
	phase("quiet", n)
	quiet := rssKB(b, s.agent.Process.Pid, "VmRSS")
	r, stop := startFlood(b, s.socket, 20000, 300*time.Second)
	phase("held", n)
	held := rssKB(b, s.agent.Process.Pid, "VmRSS")
	stop()
	_, stop = startFlood(b, s.socket, 20000, 300*time.Second, "churn")
	phase("churn", n)
	stop()
	b.ReportMetric(quiet/1024, "quiet-rss-MiB")
	b.ReportMetric(held/1024, "held-rss-MiB")
	b.ReportMetric(rssKB(b, s.agent.Process.Pid, "VmHWM")/1024, "peak-rss-MiB")
	b.ReportMetric(float64(r.Open), "conns-held")
}
