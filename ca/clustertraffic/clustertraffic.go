// Package clustertraffic keeps the traffic detector's state in the
// cluster, for several CA replicas: each replica hands the traffic counts
// its agents report to the leader through a ConfigMap of its own (a
// shard), the leader learns from all of them, writes each server's
// profile as a TrafficProfile object (signet.dev/v1alpha1) in the server's
// namespace, reads them back when it takes over, and records anomalies as
// Events on them.
package clustertraffic

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/signet-id/signet/ca/traffic"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Resource is the TrafficProfile resource.
var Resource = schema.GroupVersionResource{Group: "signet.dev", Version: "v1alpha1", Resource: "trafficprofiles"}

const (
	shardLabel   = "signet.dev/traffic-shard"
	shardKey     = "counts"
	seqKey       = "seq"
	maxShard     = 700 << 10 // bytes of counts in one shard
	maxProfile   = 512 << 10 // bytes of a compressed profile
	profilePfx   = "tp-"
	serverAnnot  = "signet.dev/server"
	managedLabel = "app.kubernetes.io/managed-by"
)

// Shards carry replicas' traffic counts to the leader.
type Shards struct {
	Client    kubernetes.Interface
	Namespace string
	// Replica names this replica's shard.
	Replica string

	store cache.Store
	mu    sync.Mutex
	seq   int64
	// seen is the last sequence taken of each shard.
	seen    map[string]int64
	onShard func(counts []*typesv1.TrafficCount)
}

// Start watches the shards until ctx ends; onShard gets the counts of
// every new version of another replica's shard (the leader learns from
// them; the others ignore them).
func (s *Shards) Start(ctx context.Context, onShard func(counts []*typesv1.TrafficCount)) error {
	s.seen, s.onShard = map[string]int64{}, onShard
	f := informers.NewSharedInformerFactoryWithOptions(s.Client, 0, informers.WithNamespace(s.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = shardLabel + "=true" }))
	inf := f.Core().V1().ConfigMaps().Informer()
	handle := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok || cm.Name == s.shardName() {
			return
		}
		s.take(cm)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, o any) { handle(o) }}); err != nil {
		return err
	}
	s.store = inf.GetStore()
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("clustertraffic: shards in %s: not synced", s.Namespace)
	}
	return nil
}

func (s *Shards) shardName() string {
	sum := sha256.Sum256([]byte(s.Replica))
	return "signet-traffic-" + hex.EncodeToString(sum[:6])
}

// take hands a shard's counts to onShard once per version.
func (s *Shards) take(cm *corev1.ConfigMap) {
	seq, _ := strconv.ParseInt(cm.Annotations[seqKey], 10, 64)
	s.mu.Lock()
	if seq <= s.seen[cm.Name] {
		s.mu.Unlock()
		return
	}
	s.seen[cm.Name] = seq
	s.mu.Unlock()
	if counts := decodeShard(cm); len(counts) > 0 {
		s.onShard(counts)
	}
}

// Current returns the counts of every replica's shard as it is now, and
// marks them taken: a new leader learns them (a batch its predecessor had
// learned may be learned twice; counts are statistics). This replica's
// own shard is among them: what it handed the old leader, which may have
// lost the lead before it learned them.
func (s *Shards) Current() []*typesv1.TrafficCount {
	var out []*typesv1.TrafficCount
	for _, obj := range s.store.List() {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		seq, _ := strconv.ParseInt(cm.Annotations[seqKey], 10, 64)
		s.mu.Lock()
		s.seen[cm.Name] = seq
		s.mu.Unlock()
		out = append(out, decodeShard(cm)...)
	}
	return out
}

func decodeShard(cm *corev1.ConfigMap) []*typesv1.TrafficCount {
	raw, err := base64.StdEncoding.DecodeString(cm.Data[shardKey])
	if err != nil {
		return nil
	}
	var rep typesv1.DecisionReport
	if proto.Unmarshal(raw, &rep) != nil {
		return nil
	}
	return rep.GetTraffic()
}

// Publish replaces this replica's shard with counts (what it received
// since its last publication). Counts past the shard's bound are left
// out, and their number returned.
func (s *Shards) Publish(ctx context.Context, counts []*typesv1.TrafficCount) (dropped int, err error) {
	rep := &typesv1.DecisionReport{Traffic: counts}
	raw, err := proto.Marshal(rep)
	for err == nil && len(raw) > maxShard && len(rep.Traffic) > 0 {
		keep := len(rep.Traffic) * maxShard / len(raw) * 9 / 10
		dropped += len(rep.Traffic) - keep
		rep.Traffic = rep.Traffic[:keep]
		raw, err = proto.Marshal(rep)
	}
	if err != nil {
		return 0, err
	}
	cms := s.Client.CoreV1().ConfigMaps(s.Namespace)
	name := s.shardName()
	data := map[string]string{shardKey: base64.StdEncoding.EncodeToString(raw)}
	// The sequence grows across restarts of this replica too: it is the
	// time in microseconds.
	s.mu.Lock()
	s.seq = max(s.seq+1, time.Now().UnixMicro())
	seq := s.seq
	s.mu.Unlock()
	ann := map[string]string{seqKey: strconv.FormatInt(seq, 10), "signet.dev/replica": s.Replica}
	cur, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.Namespace,
			Labels: map[string]string{shardLabel: "true", managedLabel: "signet-ca"}, Annotations: ann}, Data: data}, metav1.CreateOptions{})
		return dropped, err
	}
	if err != nil {
		return dropped, err
	}
	cur = cur.DeepCopy()
	cur.Data, cur.Annotations = data, ann
	_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
	return dropped, err
}

// Profiles are the TrafficProfile objects.
type Profiles struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Namespace holds the profiles of servers whose IDs name none.
	Namespace string
}

// where returns the namespace and name of server's profile.
func (p *Profiles) where(server string) (string, string) {
	sum := sha256.Sum256([]byte(server))
	name := profilePfx + hex.EncodeToString(sum[:10])
	if id, err := spiffeid.FromString(server); err == nil {
		if rest, ok := strings.CutPrefix(id.Path(), "/ns/"); ok {
			if ns, _, _ := strings.Cut(rest, "/"); ns != "" {
				return ns, name
			}
		}
	}
	return p.Namespace, name
}

// Save writes a profile, bounded: past maxProfile compressed, the least
// recently seen callers are left out (counted in status.dropped).
func (p *Profiles) Save(ctx context.Context, prof *traffic.Profile) error {
	enc, kept, err := encode(prof)
	if err != nil {
		return err
	}
	ns, name := p.where(prof.Server)
	client := p.Dynamic.Resource(Resource).Namespace(ns)
	status := map[string]any{"callers": int64(kept), "dropped": prof.Dropped + int64(len(prof.Callers)-kept),
		"updated": time.Now().UTC().Format(time.RFC3339), "profile": enc}
	cur, err := client.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "signet.dev/v1alpha1", "kind": "TrafficProfile",
			"metadata": map[string]any{"name": name, "namespace": ns, "labels": map[string]any{managedLabel: "signet-ca"},
				"annotations": map[string]any{serverAnnot: prof.Server}},
			"spec": map[string]any{"server": prof.Server},
		}}
		if cur, err = client.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("clustertraffic: create profile of %s: %w", prof.Server, err)
		}
	} else if err != nil {
		return err
	}
	cur = cur.DeepCopy()
	cur.Object["status"] = status
	if _, err := client.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("clustertraffic: profile of %s: %w", prof.Server, err)
	}
	return nil
}

// encode compresses a profile, leaving out the least recently seen
// callers until it fits; it returns how many callers it kept.
func encode(prof *traffic.Profile) (string, int, error) {
	callers := make([]string, 0, len(prof.Callers))
	for c := range prof.Callers {
		callers = append(callers, c)
	}
	sort.Slice(callers, func(i, j int) bool { return prof.Callers[callers[i]].LastSeen.After(prof.Callers[callers[j]].LastSeen) })
	for keep := len(callers); ; keep = keep * 3 / 4 {
		cut := *prof
		cut.Callers = map[string]*traffic.Caller{}
		for _, c := range callers[:keep] {
			cut.Callers[c] = prof.Callers[c]
		}
		raw, err := json.Marshal(&cut)
		if err != nil {
			return "", 0, err
		}
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(raw)
		zw.Close()
		if buf.Len() <= maxProfile || keep == 0 {
			return base64.StdEncoding.EncodeToString(buf.Bytes()), keep, nil
		}
	}
}

// LoadAll reads every TrafficProfile object the CA wrote, each found
// where Save writes its server's profile.
func (p *Profiles) LoadAll(ctx context.Context) ([]*traffic.Profile, error) {
	list, err := p.Dynamic.Resource(Resource).List(ctx, metav1.ListOptions{LabelSelector: managedLabel + "=signet-ca"})
	if err != nil {
		return nil, err
	}
	var out []*traffic.Profile
	for _, u := range list.Items {
		enc, _, _ := unstructured.NestedString(u.Object, "status", "profile")
		raw, err := base64.StdEncoding.DecodeString(enc)
		if err != nil || enc == "" {
			continue
		}
		zr, err := gzip.NewReader(bytes.NewReader(raw))
		if err != nil {
			continue
		}
		js, err := io.ReadAll(io.LimitReader(zr, 64<<20))
		if err != nil {
			continue
		}
		prof := &traffic.Profile{}
		if json.Unmarshal(js, prof) != nil || prof.Server == "" {
			continue
		}
		// Only the object where Save puts this server's profile counts:
		// one planted in another namespace (or under another name) does
		// not speak for the server.
		if ns, name := p.where(prof.Server); u.GetNamespace() != ns || u.GetName() != name {
			continue
		}
		out = append(out, prof)
	}
	return out, nil
}

// Event records an anomaly as an Event on its server's profile (which
// must have been saved).
func (p *Profiles) Event(ctx context.Context, a traffic.Anomaly) error {
	ns, name := p.where(a.Server)
	obj, err := p.Dynamic.Resource(Resource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	_, err = p.Client.CoreV1().Events(ns).Create(ctx, &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{APIVersion: "signet.dev/v1alpha1", Kind: "TrafficProfile", Name: name, Namespace: ns,
			UID: obj.GetUID(), ResourceVersion: obj.GetResourceVersion()},
		Reason:  "Anomaly" + camel(a.Kind),
		Message: fmt.Sprintf("%s: caller %s, method %s: %s", a.Kind, a.Peer, a.Method, a.Detail),
		Type:    corev1.EventTypeWarning, Source: corev1.EventSource{Component: "signet-ca"},
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
	}, metav1.CreateOptions{})
	return err
}

// camel writes new_caller as NewCaller.
func camel(s string) string {
	var b strings.Builder
	for _, part := range strings.Split(s, "_") {
		if part != "" {
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}
