package k8s

import (
	"errors"
	"fmt"

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
}

// NewClients connects with a kubeconfig file or, with inCluster, the pod's
// service account.
func NewClients(kubeconfig string, inCluster bool) (*Clients, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "" && inCluster:
		return nil, errors.New("k8s: --kubeconfig and --in-cluster exclude each other")
	case inCluster:
		cfg, err = rest.InClusterConfig()
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	default:
		return nil, errors.New("k8s: neither --kubeconfig nor --in-cluster")
	}
	if err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	cfg.UserAgent = "signet-ca"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("k8s: %w", err)
	}
	return &Clients{Config: cfg, Client: c, Dynamic: d}, nil
}
