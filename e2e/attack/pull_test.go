package attack

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/signet-id/signet/e2e/systest"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
)

// TestDeletedPodAfterPull: an agent pulls a pod's identity the moment the
// pod is created (before the CA's informer sees it), the pod is deleted,
// and the agent mints that identity anyway: the CA kept pulled pods for
// two minutes. Once the CA's push has dropped the deleted pod, minting
// its identity must be refused. The pull races the informer, so the
// attack is made on several pods.
func TestDeletedPodAfterPull(t *testing.T) {
	const ns, node = "attack-pull", "attack-node-2"
	ca := kubeCA(t, ns, "attack-pull")
	env.Cluster.CreateNode(t, node)
	agent := env.Cluster.CreatePod(t, "signet-system", fmt.Sprintf("agent-pull-%d", time.Now().UnixNano()%100000), "signet-agent", node, nil)
	t.Cleanup(func() { env.Cluster.DeletePod(t, agent) })
	svid, err := ca.AttestPSAT(env.Cluster.PodToken(t, agent, "signet-ca"), node)
	if err != nil {
		t.Fatal(err)
	}
	client := ca.NodeClient(svid)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// What the CA pushes: the pod entries of the node.
	stream, err := client.Sync(ctx, &agentv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	pushed := map[string]bool{}
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				return
			}
			mu.Lock()
			if msg.GetPodsFull() {
				clear(pushed)
			}
			for _, e := range msg.GetPodEntries() {
				pushed[e.GetId()] = true
			}
			for _, id := range msg.GetDeletedPodEntryIds() {
				delete(pushed, id)
			}
			mu.Unlock()
		}
	}()
	isPushed := func(id string) bool { mu.Lock(); defer mu.Unlock(); return pushed[id] }

	minted := 0
	for i := range 16 {
		p := env.Cluster.CreatePod(t, ns, fmt.Sprintf("victim-%d", i), "default", node, nil)
		resp, err := client.FetchPodEntries(ctx, &agentv1.FetchPodEntriesRequest{PodUid: string(p.UID)})
		if err != nil || len(resp.GetEntries()) != 1 {
			t.Fatalf("pull: %v %v", resp, err)
		}
		id := resp.GetEntries()[0].GetId()
		eventually(t, 20*time.Second, "the pod pushed", func() bool { return isPushed(id) })
		env.Cluster.DeletePod(t, p)
		eventually(t, 20*time.Second, "the deleted pod dropped from the push", func() bool { return !isPushed(id) })
		_, csr := systest.NewCSR(t)
		if _, err := client.MintX509SVIDs(ctx, &agentv1.MintX509SVIDsRequest{Requests: []*agentv1.X509SVIDRequest{{EntryId: id, Csr: csr}}}); err == nil {
			minted++
		} else if !refusedAgent(err) {
			t.Fatalf("mint: %v", err)
		}
	}
	if minted > 0 {
		t.Fatalf("the identities of %d of 16 deleted pods were minted after the CA had dropped them", minted)
	}
}
