package cluster

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// requestCounter counts the requests the CA sends to the API server, by
// verb (list, watch, get, create, update, patch, delete,
// deletecollection) and resource, so that an operator sees that the CA
// is watch-driven: lists at start and after a watch expires, never one
// per agent or per call.
type requestCounter struct {
	next   http.RoundTripper
	count  *prometheus.CounterVec
	health *Reachability
}

func newRequestCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "signet_ca_kube_requests_total",
		Help: "Requests the CA sent to the Kubernetes API server, by verb, resource and result (the HTTP status class, or error)."},
		[]string{"verb", "resource", "result"})
}

func (c requestCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	verb, resource := requestKind(r)
	resp, err := c.next.RoundTrip(r)
	result := "error"
	switch {
	case err != nil:
		c.health.failed(err.Error())
	case resp.StatusCode >= 500:
		result = strconv.Itoa(resp.StatusCode/100) + "xx"
		c.health.failed(fmt.Sprintf("%s %s: %s", strings.ToUpper(verb), resource, resp.Status))
	default:
		result = strconv.Itoa(resp.StatusCode/100) + "xx"
		c.health.answered()
	}
	c.count.WithLabelValues(verb, resource, result).Inc()
	return resp, err
}

// Reachability is whether the API server answers the CA: a request
// answered (whatever the status, but 5xx) shows it does; a transport
// error or a 5xx that it may not.
type Reachability struct {
	mu                 sync.Mutex
	lastOK, lastFailed time.Time
	why                string
}

// unreachableAfter is how long the API server may fail every request
// before the CA reports itself not ready.
const unreachableAfter = 10 * time.Second

func (h *Reachability) failed(why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastFailed, h.why = time.Now(), why
}

func (h *Reachability) answered() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastOK = time.Now()
}

// Err is why the API server is not reachable: it failed every request for
// the last 10 s or more. Agents are still served from what the CA holds.
func (h *Reachability) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lastFailed.After(h.lastOK) && time.Since(h.lastOK) > unreachableAfter && !h.lastOK.IsZero() {
		return fmt.Errorf("the Kubernetes API server has failed every request for %s (last: %s); serving agents from what the CA holds",
			time.Since(h.lastOK).Round(time.Second), h.why)
	}
	return nil
}

// requestKind names a request to the API server by its verb and resource
// (with its subresource: "pods/status"); "discovery" for the rest of the
// API's paths and "other" for paths outside it.
func requestKind(r *http.Request) (verb, resource string) {
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var rest []string
	switch {
	case len(segs) >= 2 && segs[0] == "api":
		rest = segs[2:]
	case len(segs) >= 3 && segs[0] == "apis":
		rest = segs[3:]
	case len(segs) >= 1 && (segs[0] == "api" || segs[0] == "apis"):
		return strings.ToLower(r.Method), "discovery"
	default:
		return strings.ToLower(r.Method), "other"
	}
	if len(rest) >= 3 && rest[0] == "namespaces" {
		rest = rest[2:]
	}
	if len(rest) == 0 {
		return strings.ToLower(r.Method), "discovery"
	}
	resource = rest[0]
	if len(rest) >= 3 {
		resource += "/" + rest[2]
	}
	named := len(rest) >= 2
	switch r.Method {
	case http.MethodGet:
		switch {
		case r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1":
			return "watch", resource
		case named:
			return "get", resource
		default:
			return "list", resource
		}
	case http.MethodPost:
		return "create", resource
	case http.MethodPut:
		return "update", resource
	case http.MethodPatch:
		return "patch", resource
	case http.MethodDelete:
		if named {
			return "delete", resource
		}
		return "deletecollection", resource
	}
	return strings.ToLower(r.Method), resource
}
