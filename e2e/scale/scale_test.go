// Package scale runs bench/scale small (20 nodes, 200 pods, two CA
// replicas, a real agent) on every test run and checks what it reports:
// the same code as the 1,000-node measurement in bench/README.md, so that
// the scale harness and what it shows stay true.
package scale

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// report is the part of bench/scale's report the test checks.
type report struct {
	Steps []struct {
		Nodes                   int                `json:"nodes"`
		Pods                    int                `json:"pods"`
		AgentsReadySeconds      float64            `json:"agentsReadySeconds"`
		StartRequests           map[string]float64 `json:"startRequests"`
		SteadyRequestsPerSecond map[string]float64 `json:"steadyRequestsPerSecond"`
		CARSSMiB                []float64          `json:"caRSSMiB"`
		SyncStreams             []float64          `json:"syncStreams"`
	} `json:"steps"`
	Push *struct {
		Pods       int     `json:"pods"`
		Missing    int     `json:"missing"`
		EntryP99ms float64 `json:"entryP99ms"`
	} `json:"push"`
	RuleChange *struct {
		Pods        int     `json:"pods"`
		SVIDsSigned float64 `json:"svidsSigned"`
		Complete    bool    `json:"complete"`
	} `json:"ruleChange"`
	Failover *struct {
		Agents         int  `json:"agents"`
		AgentsOnLeader int  `json:"agentsOnLeader"`
		Resynced       bool `json:"resynced"`
	} `json:"failover"`
	RealAgent []struct {
		ClusterPods int     `json:"clusterPods"`
		NodePods    int     `json:"nodePods"`
		RSSMiB      float64 `json:"rssMiB"`
	} `json:"realAgent"`
}

func TestScaleSmall(t *testing.T) {
	out := filepath.Join(t.TempDir(), "scale.json")
	cmd := exec.Command("go", "run", "../../bench/scale", "-steps", "10,20", "-pods-per-node", "10", "-push", "20",
		"-steady", "5s", "-baseline=false", "-json", out)
	logs, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench/scale: %v\n%s", err, logs)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", b)
	if len(r.Steps) != 2 {
		t.Fatalf("%d steps; want 2", len(r.Steps))
	}
	for _, st := range r.Steps {
		// Pods: ten per node and the real agent's node's ten.
		if want := st.Nodes*10 + 10; st.Pods != want {
			t.Errorf("step of %d nodes: %d pods; want %d", st.Nodes, st.Pods, want)
		}
		// Every agent (and the real one) has its stream open on a
		// replica.
		streams := 0.0
		for _, s := range st.SyncStreams {
			streams += s
		}
		if int(streams) != st.Nodes+1 {
			t.Errorf("step of %d nodes: %v Sync streams; want %d", st.Nodes, streams, st.Nodes+1)
		}
		// Watch-driven: starting ten more agents lists nothing per agent,
		// and nothing is listed while nothing changes.
		for k, v := range st.StartRequests {
			if strings.HasPrefix(k, "list ") && v >= 5 {
				t.Errorf("step of %d nodes: %v %q while 10 agents started: lists per agent", st.Nodes, v, k)
			}
		}
		for k := range st.SteadyRequestsPerSecond {
			if strings.HasPrefix(k, "list ") {
				t.Errorf("step of %d nodes: %q in the steady state", st.Nodes, k)
			}
		}
		if len(st.CARSSMiB) != 2 || st.CARSSMiB[0] <= 0 {
			t.Errorf("step of %d nodes: CA memory %v not measured", st.Nodes, st.CARSSMiB)
		}
	}
	if r.Push == nil || r.Push.Pods != 20 || r.Push.Missing != 0 {
		t.Errorf("push: %+v; want all 20 pods at their agents", r.Push)
	}
	if r.RuleChange == nil || !r.RuleChange.Complete || r.RuleChange.SVIDsSigned < float64(r.RuleChange.Pods) {
		t.Errorf("rule change: %+v; want every pod's new SVID held", r.RuleChange)
	}
	if r.Failover == nil || !r.Failover.Resynced || r.Failover.AgentsOnLeader == 0 || r.Failover.Agents != 21 {
		t.Errorf("failover: %+v; want the 21 agents re-synced, some of them moved off the killed leader", r.Failover)
	}
	if len(r.RealAgent) != 2 || r.RealAgent[0].NodePods != 10 || r.RealAgent[1].ClusterPods <= r.RealAgent[0].ClusterPods {
		t.Errorf("real agent: %+v", r.RealAgent)
	}
}
