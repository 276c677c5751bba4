package cluster

import (
	"context"
	"os"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Leader runs leader election on a Lease; what must happen once in the
// cluster (key rotation, rule status, agent eviction writes) runs only
// while IsLeader is true.
type Leader struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
	// Identity names this replica; if empty, the hostname.
	Identity string
	Log      hclog.Logger

	leading atomic.Bool
}

// IsLeader reports whether this replica leads now.
func (l *Leader) IsLeader() bool { return l.leading.Load() }

// Run takes part in the election until ctx ends, and gives the Lease up
// on the way out so that another replica takes over at once. Each time
// this replica becomes the leader, lead runs with a context that ends
// when leadership is lost.
func (l *Leader) Run(ctx context.Context, lead func(ctx context.Context)) {
	id := l.Identity
	if id == "" {
		id, _ = os.Hostname()
	}
	log := l.Log
	if log == nil {
		log = hclog.NewNullLogger()
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: l.Namespace, Name: l.Name},
		Client:     l.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock: lock, ReleaseOnCancel: true,
			LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					l.leading.Store(true)
					log.Info("became the leader", "lease", l.Namespace+"/"+l.Name, "identity", id)
					lead(ctx)
				},
				OnStoppedLeading: func() {
					if l.leading.Swap(false) {
						log.Info("stopped leading", "lease", l.Namespace+"/"+l.Name)
					}
				},
				OnNewLeader: func(who string) {
					if who != id {
						log.Info("leader is another replica", "leader", who)
					}
				},
			},
		})
	}
}
