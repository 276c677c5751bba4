// Package kubelet reads the pods of this node from the kubelet's
// authenticated /pods endpoint.
package kubelet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// maxBody bounds a /pods answer; a node with hundreds of pods answers a few
// MiB.
const maxBody = 64 << 20

// Config says how to reach the kubelet.
type Config struct {
	// URL is the kubelet's base URL, e.g. https://10.0.0.5:10250.
	URL string
	// TokenFile holds a service-account token the kubelet accepts (meant for
	// the API server). It is read on every call, so a rotated projected
	// token is picked up.
	TokenFile string
	// CAFile holds the PEM roots that verify the kubelet's serving
	// certificate.
	CAFile string
	// InsecureSkipVerify does not verify the kubelet's certificate. Only
	// for clusters whose kubelets have self-signed serving certificates;
	// anyone on the path can then answer as the kubelet.
	InsecureSkipVerify bool
	// Timeout bounds one call. If zero, five seconds.
	Timeout time.Duration
}

// Client is a kubelet client.
type Client struct {
	cfg  Config
	http *http.Client
}

// New returns a client; it reads the CA file now.
func New(cfg Config) (*Client, error) {
	if !strings.HasPrefix(cfg.URL, "https://") {
		return nil, fmt.Errorf("kubelet: URL %q: want https://HOST:PORT", cfg.URL)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
	if !cfg.InsecureSkipVerify {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kubelet: CA: %w", err)
		}
		tlsCfg.RootCAs = x509.NewCertPool()
		if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kubelet: CA %s: no PEM certificates", cfg.CAFile)
		}
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConns: 2, IdleConnTimeout: time.Minute}
	return &Client{cfg: cfg, http: &http.Client{Transport: tr, Timeout: cfg.Timeout}}, nil
}

// Pods returns the pods the kubelet runs.
func (c *Client) Pods(ctx context.Context) ([]corev1.Pod, error) {
	tok, err := os.ReadFile(c.cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("kubelet: token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.cfg.URL, "/")+"/pods", nil)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kubelet: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// The body of an error may echo the request; say only the status.
		return nil, fmt.Errorf("kubelet: GET /pods: %s", resp.Status)
	}
	return ParsePods(io.LimitReader(resp.Body, maxBody+1))
}

// ParsePods reads a /pods answer (a v1 PodList).
func ParsePods(r io.Reader) ([]corev1.Pod, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("kubelet: read /pods: %w", err)
	}
	if len(raw) > maxBody {
		return nil, errors.New("kubelet: /pods answer larger than 64 MiB")
	}
	var list corev1.PodList
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("kubelet: /pods is not a PodList: %w", err)
	}
	if list.Kind != "" && list.Kind != "PodList" {
		return nil, fmt.Errorf("kubelet: /pods answered a %q, not a PodList", list.Kind)
	}
	return list.Items, nil
}
