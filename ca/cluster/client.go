// Package cluster is what the CA keeps in the cluster besides identities
// and policies: its API clients and log routing, the Lease its replicas
// elect a leader on, the Secret that holds their shared keys, and what
// the leader publishes (the bundle ConfigMap, the webhook caBundle).
package cluster

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Clients are the API clients of Kubernetes mode.
type Clients struct {
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Requests counts the requests the clients send, by verb and
	// resource (signet_ca_kube_requests_total).
	Requests *prometheus.CounterVec
	// Reachability says whether the API server answers.
	Reachability *Reachability
}

// NewClients connects with a kubeconfig file or, with inCluster, the pod's
// service account.
func NewClients(kubeconfig string, inCluster bool) (*Clients, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "" && inCluster:
		return nil, errors.New("cluster: --kubeconfig and --in-cluster exclude each other")
	case inCluster:
		cfg, err = rest.InClusterConfig()
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	default:
		return nil, errors.New("cluster: neither --kubeconfig nor --in-cluster")
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	cfg.UserAgent = "signet-ca"
	requests, reach := newRequestCounter(), &Reachability{}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		// Outside the counter, so that every attempt is counted and
		// feeds the API server's reachability.
		return watchRetry{next: requestCounter{next: rt, count: requests, health: reach}, max: 2 * time.Second}
	})
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return &Clients{Config: cfg, Client: c, Dynamic: d, Requests: requests, Reachability: reach}, nil
}
