package agent

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/agent/csi"
	"github.com/signet-id/signet/agent/workloadapi"
	"github.com/signet-id/signet/internal/selector"
)

// prefetcher starts the minting of a pod's identities when the kubelet
// publishes the pod's socket volume, before the pod's containers start:
// if the CA's push of the pod has not arrived yet, it asks the CA for the
// pod (the mint loop signs what arrives at once), so that the workload's
// first call finds its SVIDs.
type prefetcher struct {
	cache *cache.Cache
	pods  workloadapi.PodPuller
	log   hclog.Logger
	// published counts publishes by whether the identities were there
	// already ("pushed") or were asked for ("fetched").
	published *prometheus.CounterVec
}

func newPrefetcher(c *cache.Cache, pods workloadapi.PodPuller, log hclog.Logger, reg prometheus.Registerer) *prefetcher {
	p := &prefetcher{cache: c, pods: pods, log: log, published: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "signet_agent_csi_publishes_total",
		Help: "Socket volumes the kubelet published, by whether the pod's identities had been pushed already or were fetched then.",
	}, []string{"identities"})}
	reg.MustRegister(p.published)
	return p
}

// Published is csi.Config.Published: it does not block.
func (p *prefetcher) Published(pod csi.Pod) {
	snap, _ := p.cache.Snapshot()
	if len(snap.MatchEntries([]selector.Selector{selector.PodUID(pod.UID)})) > 0 {
		p.published.WithLabelValues("pushed").Inc()
		return
	}
	p.published.WithLabelValues("fetched").Inc()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.pods.PullPod(ctx, pod.UID); err != nil {
			p.log.Debug("fetching the identities of a pod whose volume was published failed; the workload's first call fetches them",
				"pod", pod.Namespace+"/"+pod.Name, "pod_uid", pod.UID, "error", err)
		}
	}()
}
