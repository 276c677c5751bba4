// Command wlbench measures any SPIFFE Workload API (Signet's, SPIRE's, ...)
// with the go-spiffe client. Each subcommand prints one JSON line.
//
//	wlbench [-socket unix:///path] latency -n N -c C   FetchX509SVID latency
//	wlbench first                                   process start to first X509-SVID
//	wlbench all -want E [-timeout T]                time until E X509-SVIDs are held
//	wlbench jwt -n N -c C -aud A [-id ID]           FetchJWTSVID latency
//
// The socket defaults to SPIFFE_ENDPOINT_SOCKET.
package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
)

var start = time.Now()

func main() {
	socket := flag.String("socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "Workload API address")
	flag.Parse()
	if flag.NArg() < 1 || *socket == "" {
		fmt.Fprintln(os.Stderr, "usage: wlbench [-socket unix:///path] latency|first|all|jwt [flags]")
		os.Exit(2)
	}
	var err error
	switch cmd, args := flag.Arg(0), flag.Args()[1:]; cmd {
	case "latency":
		err = latency(*socket, args, false)
	case "jwt":
		err = latency(*socket, args, true)
	case "first":
		err = first(*socket)
	case "all":
		err = all(*socket, args)
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wlbench:", err)
		os.Exit(1)
	}
}

func emit(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

func newClient(ctx context.Context, socket string) (*workloadapi.Client, error) {
	return workloadapi.New(ctx, workloadapi.WithAddr(socket),
		workloadapi.WithDialOptions(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512<<20))))
}

func latency(socket string, args []string, jwt bool) error {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	n := fs.Int("n", 1000, "calls")
	c := fs.Int("c", 1, "concurrent workers, each with its own connection")
	aud := fs.String("aud", "bench", "JWT audience")
	id := fs.String("id", "", "JWT: ask for this SPIFFE ID only (as most callers do)")
	fs.Parse(args)
	ctx := context.Background()
	clients := make([]*workloadapi.Client, *c)
	for i := range clients {
		cl, err := newClient(ctx, socket)
		if err != nil {
			return err
		}
		defer cl.Close()
		clients[i] = cl
	}
	durs := make([]time.Duration, *n)
	var errs, svids int
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int, *n)
	for i := 0; i < *n; i++ {
		next <- i
	}
	close(next)
	t0 := time.Now()
	for w := 0; w < *c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				s := time.Now()
				var err error
				var got int
				if jwt {
					var ss []*jwtsvid.SVID
					p := jwtsvid.Params{Audience: *aud}
					if *id != "" {
						p.Subject, err = spiffeid.FromString(*id)
					}
					if err == nil {
						ss, err = clients[w].FetchJWTSVIDs(ctx, p)
						got = len(ss)
					}
				} else {
					// The call most workloads make: the default SVID, which
					// go-spiffe parses alone.
					var s *x509svid.SVID
					s, err = clients[w].FetchX509SVID(ctx)
					if s != nil {
						got = 1
					}
				}
				durs[i] = time.Since(s)
				mu.Lock()
				if err != nil {
					errs++
				}
				svids = got
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t0)
	sort.Slice(durs, func(i, j int) bool { return durs[i] < durs[j] })
	pct := func(p float64) float64 { return ms(durs[int(math.Min(float64(len(durs)-1), p*float64(len(durs))))]) }
	name := "latency"
	if jwt {
		name = "jwt"
	}
	emit(map[string]any{"test": name, "n": *n, "c": *c, "errors": errs, "per_s": math.Round(float64(*n)/wall.Seconds()*10) / 10,
		"p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": ms(durs[len(durs)-1]), "svids_parsed": svids})
	return nil
}

func first(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := newClient(ctx, socket)
	if err != nil {
		return err
	}
	defer cl.Close()
	svid, err := cl.FetchX509SVID(ctx)
	if err != nil {
		return err
	}
	emit(map[string]any{"test": "first", "ms": ms(time.Since(start)), "spiffe_id": svid.ID.String()})
	return nil
}

type watcher struct {
	want int
	// away, if set, is a CA key ID (hex subject key identifier): an SVID
	// whose chain has a certificate of that key, or signed by it, does
	// not count.
	away    string
	t0      time.Time
	mu      sync.Mutex
	firstAt time.Duration
	updates int
	done    chan time.Duration
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.updates++
	if w.firstAt == 0 {
		w.firstAt = time.Since(w.t0)
	}
	n := 0
	for _, s := range c.SVIDs {
		if !under(s.Certificates, w.away) {
			n++
		}
	}
	if n >= w.want && w.done != nil {
		w.done <- time.Since(w.t0)
		w.done = nil
	}
}

func (w *watcher) OnX509ContextWatchError(error) {}

// under reports whether a chain has a certificate of key, or one key
// signed.
func under(chain []*x509.Certificate, key string) bool {
	if key == "" {
		return false
	}
	for _, c := range chain {
		if hex.EncodeToString(c.SubjectKeyId) == key || hex.EncodeToString(c.AuthorityKeyId) == key {
			return true
		}
	}
	return false
}

func all(socket string, args []string) error {
	fs := flag.NewFlagSet("all", flag.ExitOnError)
	want := fs.Int("want", 1, "SVIDs to wait for")
	away := fs.String("away", "", "count only SVIDs not under this CA key ID (hex subject key identifier): the re-issue after it was revoked")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after")
	fs.Parse(args)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cl, err := workloadapi.New(ctx, workloadapi.WithAddr(socket),
		workloadapi.WithDialOptions(grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(512<<20))),
		workloadapi.WithBackoffStrategy(fixedBackoff(50*time.Millisecond)))
	if err != nil {
		return err
	}
	defer cl.Close()
	done := make(chan time.Duration, 1)
	w := &watcher{want: *want, away: strings.ToLower(*away), t0: time.Now(), done: done}
	go cl.WatchX509Context(ctx, w)
	select {
	case d := <-done:
		w.mu.Lock()
		defer w.mu.Unlock()
		emit(map[string]any{"test": "all", "ok": true, "count": *want, "ms": ms(d), "first_ms": ms(w.firstAt), "updates": w.updates,
			"done_unix_ns": w.t0.Add(d).UnixNano()})
		return nil
	case <-ctx.Done():
		return fmt.Errorf("timed out waiting for %d SVIDs", *want)
	}
}

type fixedBackoff time.Duration

func (f fixedBackoff) NewBackoff() workloadapi.Backoff { return f }
func (f fixedBackoff) Next() time.Duration             { return time.Duration(f) }
func (f fixedBackoff) Reset()                          {}
