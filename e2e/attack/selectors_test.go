package attack

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// signet runs the CLI against the node's CA.
func signet(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(env.Bin, "signet"), append([]string{"--admin-socket", filepath.Join(env.Signet.CAData, "admin.sock")}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("signet %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// agentID is the SPIFFE ID of the node's agent.
func agentID(t *testing.T) string {
	t.Helper()
	var list struct {
		Agents []struct {
			SPIFFEID string `json:"spiffe_id"`
			Evicted  bool   `json:"evicted"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(signet(t, "agent", "list", "-o", "json")), &list); err != nil {
		t.Fatalf("agent list: %v", err)
	}
	for _, a := range list.Agents {
		if !a.Evicted {
			return a.SPIFFEID
		}
	}
	t.Fatalf("no agent: %+v", list)
	return ""
}

// TestRootContainerIsNoHostDaemon: an entry for a host daemon names
// unix: selectors only (uid 0 here). A container whose process runs as
// root matched it too, and got the host daemon's identity beside its
// pod's. A process in a pod matches only entries that name a k8s:
// selector.
func TestRootContainerIsNoHostDaemon(t *testing.T) {
	const hostID = "spiffe://example.org/host/root-daemon"
	var created struct {
		Entries []struct {
			ID string `json:"id"`
		} `json:"entries"`
	}
	out := signet(t, "entry", "create", "--spiffe-id", hostID, "--parent-id", agentID(t), "--selector", "unix:uid:0", "-o", "json")
	if err := json.Unmarshal([]byte(out), &created); err != nil || len(created.Entries) != 1 {
		t.Fatalf("entry create: %v\n%s", err, out)
	}
	defer signet(t, "entry", "delete", "--id", created.Entries[0].ID)
	// The host daemon (this test, root on the host) gets it: the entry
	// has reached the agent.
	sock := "unix://" + filepath.Join(env.Signet.SocketDir, "agent.sock")
	eventually(t, 20*time.Second, "the host entry at the agent", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(sock))
		return err == nil && svid.ID.String() == hostID
	})
	p, r, _ := env.RunWorkload(t, "attack-root", "rooted", "rooted")
	defer env.DeletePod(t, p)
	if !slices.Contains(r.SPIFFEIDs, "spiffe://example.org/ns/attack-root/sa/rooted") {
		t.Fatalf("the pod did not get its own identity: %+v", r)
	}
	if slices.Contains(r.SPIFFEIDs, hostID) {
		t.Fatalf("a root container got the host daemon's identity: %v", r.SPIFFEIDs)
	}
}
