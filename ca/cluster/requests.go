package cluster

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// requestCounter counts the requests the CA sends to the API server, by
// verb (list, watch, get, create, update, patch, delete,
// deletecollection) and resource, so that an operator sees that the CA
// is watch-driven: lists at start and after a watch expires, never one
// per agent or per call.
type requestCounter struct {
	next  http.RoundTripper
	count *prometheus.CounterVec
}

func newRequestCounter() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "signet_ca_kube_requests_total",
		Help: "Requests the CA sent to the Kubernetes API server, by verb and resource."}, []string{"verb", "resource"})
}

func (c requestCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.count.WithLabelValues(requestKind(r)).Inc()
	return c.next.RoundTrip(r)
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
