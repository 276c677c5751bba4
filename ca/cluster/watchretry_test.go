package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// droppingListener closes the first drop connections it accepts, as an
// API server does that is going away: the client sees a transport error.
type droppingListener struct {
	net.Listener
	drop atomic.Int32
}

func (l *droppingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.drop.Add(-1) < 0 {
			return c, err
		}
		c.Close()
	}
}

func TestWatchRetry(t *testing.T) {
	var served atomic.Int32
	status := func(r *http.Request) (int, string) { return http.StatusOK, "" }
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		code, retryAfter := status(r)
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(code)
		io.WriteString(w, "served")
	}))
	l := &droppingListener{Listener: srv.Listener}
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	rt := watchRetry{next: &http.Transport{DisableKeepAlives: true}, max: 10 * time.Millisecond}
	get := func(ctx context.Context, query string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/pods"+query, nil)
		return rt.RoundTrip(req)
	}
	unavailableTwice := func(*http.Request) (int, string) {
		if served.Load() <= 2 {
			return http.StatusServiceUnavailable, ""
		}
		return http.StatusOK, ""
	}

	for _, c := range []struct {
		name     string
		query    string
		drop     int32
		status   func(*http.Request) (int, string)
		wantCode int
		wantErr  bool
		attempts int32 // requests that reached the handler
	}{
		{"a watch the server drops twice is sent again", "?watch=true", 2, status, 200, false, 1},
		{"a watch answered 503 twice is sent again", "?watch=1", 0, unavailableTwice, 200, false, 3},
		{"a list is not sent again", "", 0, unavailableTwice, 503, false, 1},
		{"a dropped list is not sent again", "", 1, status, 0, true, 0},
		{"a watch the server asks to wait is left to client-go", "?watch=true", 0, func(*http.Request) (int, string) {
			return http.StatusServiceUnavailable, "1"
		}, 503, false, 1},
		{"a watch the server refuses is not sent again", "?watch=true", 0, func(*http.Request) (int, string) {
			return http.StatusGone, ""
		}, 410, false, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			served.Store(0)
			l.drop.Store(c.drop)
			status = c.status
			resp, err := get(context.Background(), c.query)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != c.wantCode {
					t.Fatalf("status %d, want %d", resp.StatusCode, c.wantCode)
				}
			}
			if n := served.Load(); n != c.attempts {
				t.Fatalf("%d requests served, want %d", n, c.attempts)
			}
		})
	}

	t.Run("a watch ends with its context", func(t *testing.T) {
		l.drop.Store(1 << 30)
		defer l.drop.Store(0)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := get(ctx, "?watch=true")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the context's deadline", err)
		}
	})
}
