package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/internal/entry"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// TestControlPlaneFaults (the fault matrix, docs/faults.md): the
// kube-apiserver restarts, then etcd stops for 30 s. Through both the CA
// keeps the agent's Sync stream and signs its pods' SVIDs from what it
// holds; its /readyz, its metrics and its log name the API server while
// it fails; once the control plane is back, a new pod's identity reaches
// its agent within the bound.
func TestControlPlaneFaults(t *testing.T) {
	logs := &systest.Buffer{}
	health := systest.FreeAddr(t)
	ca := startCA(t, "faults-ca", "faults", func(c *server.Config) {
		c.HealthAddr = health
		c.Log = hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info})
	})
	svid := attestAgent(t, ca, "node-f1")
	view := follow(t, ca, svid)
	client := ca.NodeClient(svid)
	pod := createPod(t, "faults", "before", "app", "node-f1", nil)
	podEntry := entry.PodEntryID(string(pod.UID), "default")
	eventually(t, 10*time.Second, "the pod's identity at its agent", func() bool { return view.ids()[podEntry] != "" })
	mint := func() error {
		_, csr := systest.NewCSR(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: podEntry, Csr: csr}}})
		return err
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	errorsCounted := func() float64 {
		resp, err := http.Get("http://" + health + "/metrics")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		n := 0.0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "signet_ca_kube_requests_total{") && (strings.Contains(l, `result="error"`) || strings.Contains(l, `result="5xx"`)) {
				var v float64
				fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
				n += v
			}
		}
		return n
	}
	// whileDown checks, for d, that the agent keeps its stream and its
	// SVIDs are signed; and that the CA reports the API server failing.
	whileDown := func(what string, d time.Duration) {
		t.Helper()
		start := time.Now()
		sawNotReady := false
		for time.Since(start) < d || !sawNotReady {
			if err := view.streamErr(); err != nil {
				t.Fatalf("%s: the agent's Sync stream ended: %v", what, err)
			}
			if err := mint(); err != nil {
				t.Fatalf("%s: the agent's pod SVID was refused: %v", what, err)
			}
			if code, body := readyz(); code != 200 && strings.Contains(body, "Kubernetes API server") {
				if !sawNotReady {
					t.Logf("%s: %s in, /readyz said: %s", what, time.Since(start).Round(time.Second), strings.TrimSpace(body))
				}
				sawNotReady = true
			}
			if time.Since(start) > d+60*time.Second {
				t.Fatalf("%s: /readyz never named the API server", what)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if errorsCounted() == 0 {
			t.Errorf("%s: no failed request counted in signet_ca_kube_requests_total", what)
		}
	}
	// recovered creates a pod, pulls its identity as an agent does for a
	// workload that calls before the push, and times the push.
	recovered := func(what, name string) {
		t.Helper()
		eventually(t, 60*time.Second, "the CA ready again after "+what, func() bool { code, _ := readyz(); return code == 200 })
		t0 := time.Now()
		p := createPod(t, "faults", name, "app", "node-f1", nil)
		start := time.Now()
		t.Logf("after %s: the API server took %s to create a pod", what, start.Sub(t0).Round(time.Millisecond))
		id := entry.PodEntryID(string(p.UID), "default")
		eventually(t, 10*time.Second, "a new pod's identity pulled after "+what, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			resp, err := client.FetchPodEntries(ctx, &agentv1.FetchPodEntriesRequest{PodUid: string(p.UID)})
			return err == nil && len(resp.GetEntries()) == 1
		})
		t.Logf("after %s: a new pod's identity pulled %s after it was created", what, time.Since(start).Round(time.Millisecond))
		// The push waits for the pod informer's watch, which the CA sends
		// again at most 2 s apart while the API server does not take it
		// (client-go alone would back off up to 30 s): 10 s allows for a
		// loaded machine.
		eventually(t, 10*time.Second, "a new pod's identity pushed after "+what, func() bool { return view.ids()[id] != "" })
		t.Logf("after %s: pushed to its agent %s after it was created", what, time.Since(start).Round(time.Millisecond))
	}

	// 1. The API server restarts (down for 15 s).
	if err := cluster.StopProcess("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	whileDown("kube-apiserver down", 15*time.Second)
	if err := cluster.StartProcess("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	recovered("the API server's restart", "after-apiserver")

	// 2. etcd stops for 30 s: the API server answers, with errors.
	if err := cluster.StopProcess("etcd"); err != nil {
		t.Fatal(err)
	}
	whileDown("etcd stopped", 30*time.Second)
	// A new agent cannot attest meanwhile: the CA says why.
	if err := cluster.StartProcess("etcd"); err != nil {
		t.Fatal(err)
	}
	recovered("etcd's return", "after-etcd")
	if l := logs.String(); !strings.Contains(l, "connection refused") {
		t.Errorf("the CA's log never named the API server's failure:\n%s", l)
	}
	if err := mint(); status.Code(err) != codes.OK {
		t.Fatalf("mint after the faults: %v", err)
	}
}

// streamErr is why the Sync stream ended, or nil while it runs.
func (v *podView) streamErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}
