package cluster

import (
	"net/http"
	"net/url"
	"testing"
)

func TestRequestKind(t *testing.T) {
	for _, c := range []struct {
		method, url    string
		verb, resource string
	}{
		{"GET", "/api/v1/pods?watch=true&resourceVersion=5", "watch", "pods"},
		{"GET", "/api/v1/pods?limit=500", "list", "pods"},
		{"GET", "/api/v1/namespaces/a/pods/p1", "get", "pods"},
		{"GET", "/api/v1/namespaces/a", "get", "namespaces"},
		{"GET", "/api/v1/namespaces", "list", "namespaces"},
		{"PATCH", "/api/v1/namespaces/a/pods/p1/status", "patch", "pods/status"},
		{"POST", "/apis/authentication.k8s.io/v1/tokenreviews", "create", "tokenreviews"},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/signet/leases/signet-ca", "update", "leases"},
		{"GET", "/apis/signet.dev/v1alpha1/identityrules?watch=1", "watch", "identityrules"},
		{"DELETE", "/api/v1/namespaces/a/pods/p1", "delete", "pods"},
		{"DELETE", "/api/v1/namespaces/a/pods", "deletecollection", "pods"},
		{"GET", "/apis", "get", "discovery"},
		{"GET", "/api/v1", "get", "discovery"},
		{"GET", "/version", "get", "other"},
	} {
		u, _ := url.Parse(c.url)
		verb, res := requestKind(&http.Request{Method: c.method, URL: u})
		if verb != c.verb || res != c.resource {
			t.Errorf("%s %s = %s %s; want %s %s", c.method, c.url, verb, res, c.verb, c.resource)
		}
	}
}
