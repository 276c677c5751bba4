package cluster

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"k8s.io/klog/v2"

	"github.com/signet-id/signet/internal/backoff"
)

// watchRetry sends a watch request again, after a short wait, while the
// API server does not take it: a transport error (the server is down,
// "connection refused"), or 502, 503 or 504 with no Retry-After (a proxy
// or a server still starting; client-go itself honours Retry-After). It
// stops when the request's context ends, that is when the informer stops.
//
// Without it, client-go's reflector waits between failed watches with a
// backoff that doubles up to 30 s and is forgotten only after 2 minutes
// without failures. After a 15 s API server restart a pod created the
// moment the server was back reached its agent's push 24 s later; with
// it, the watch is open again within its wait (at most 2 s) of the
// server's return. A watch is a GET and safe to send again.
type watchRetry struct {
	next http.RoundTripper
	max  time.Duration // the longest wait between attempts
}

func (w watchRetry) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodGet || !isWatch(r) {
		return w.next.RoundTrip(r)
	}
	b := backoff.Backoff{Max: w.max}
	for attempt := 1; ; attempt++ {
		resp, err := w.next.RoundTrip(r)
		if !retryWatch(resp, err) {
			if attempt > 1 {
				_, resource := requestKind(r)
				klog.Background().Info("the API server took the watch again", "resource", resource, "attempts", attempt)
			}
			return resp, err
		}
		if resp != nil {
			// Drain a little so the connection may be kept, then drop it.
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
		}
		if ctxErr := r.Context().Err(); ctxErr != nil {
			// The informer stopped: that, not the attempt's failure, is
			// why the watch ends.
			return nil, ctxErr
		}
		if attempt == 1 {
			_, resource := requestKind(r)
			var why string
			if err != nil {
				why = err.Error()
			} else {
				why = resp.Status
			}
			klog.Background().Info("watch failed; sending it again until the API server takes it", "resource", resource, "error", why, "maxWait", w.max)
		}
		if !sleepCtx(r.Context(), jitter(b.Next())) {
			return nil, r.Context().Err()
		}
	}
}

func isWatch(r *http.Request) bool {
	v := r.URL.Query().Get("watch")
	return v == "true" || v == "1"
}

// retryWatch is whether a watch attempt failed in a way that sending it
// again may cure: never a status the API server chose (403, 410, 429
// with its own wait), only its absence.
func retryWatch(resp *http.Response, err error) bool {
	if err != nil {
		return true
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return resp.Header.Get("Retry-After") == ""
	}
	return false
}

// jitter spreads d over [d/2, d), so that replicas and informers that
// lost the server together do not come back in step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
