// Command workload is the test workload of the real-node tests. It asks
// the Workload API (SPIFFE_ENDPOINT_SOCKET) for its X509-SVIDs, retrying
// every 20 ms, prints one JSON line saying what it got (the default SVID's
// ID and all IDs) and how long that took from its own start, then waits to
// be stopped.
package main

import (
	"context"
	"encoding/json"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

type result struct {
	SPIFFEID  string   `json:"spiffe_id,omitempty"`
	SPIFFEIDs []string `json:"spiffe_ids,omitempty"`
	MS        float64  `json:"ms"`
	Attempts  int      `json:"attempts"`
	Errors    []string `json:"errors,omitempty"`
}

func main() {
	start := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var r result
	for {
		r.Attempts++
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		x, err := workloadapi.FetchX509Context(actx)
		cancel()
		if err == nil {
			r.SPIFFEID = x.DefaultSVID().ID.String()
			for _, s := range x.SVIDs {
				r.SPIFFEIDs = append(r.SPIFFEIDs, s.ID.String())
			}
			break
		}
		if len(r.Errors) < 10 {
			r.Errors = append(r.Errors, status.Convert(err).Code().String()+": "+status.Convert(err).Message())
		}
		if time.Since(start) > time.Minute || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.MS = float64(time.Since(start).Microseconds()) / 1000
	json.NewEncoder(os.Stdout).Encode(r)
	<-ctx.Done()
}
