// Package podcert makes the CA a signer of Kubernetes pod certificates:
// it answers the PodCertificateRequests of its signer name
// (signet.dev/x509-svid) with an X509-SVID of the identity the pod's
// IdentityRules give it, or a denial with the reason, after checking the
// request's claims (pod, service account, node) with the API server; and
// it publishes the trust bundle as a ClusterTrustBundle of the signer, so
// that pods mount both with projected volumes and need no agent socket.
package podcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/signet-id/signet/ca/api"
	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/cluster"
	"github.com/signet-id/signet/internal/entry"
)

// DefaultSignerName is the signer name the CA answers for.
const DefaultSignerName = "signet.dev/x509-svid"

// SPIFFEIDAnnotation, in a request's unverifiedUserAnnotations, picks one
// of a pod's identities when its IdentityRules give it several.
const SPIFFEIDAnnotation = "signet.dev/spiffe-id"

// Limits the API sets on pod certificates.
const (
	MinLifetime = time.Hour
	// MinRefreshMargin: beginRefreshAt is at least this after NotBefore
	// and before NotAfter.
	MinRefreshMargin = 10 * time.Minute
)

// Reasons of denials (status.conditions[type=Denied].reason).
const (
	ReasonNoIdentity        = "NoIdentity"
	ReasonAmbiguous         = "AmbiguousIdentity"
	ReasonClaimsMismatch    = "ClaimsMismatch"
	ReasonWorkloadKey       = "WorkloadKeyIdentity"
	ReasonInvalidAnnotation = certv1.PodCertificateRequestConditionInvalidUserConfig
	ReasonUnsupportedKey    = certv1.PodCertificateRequestConditionUnsupportedKeyType
)

// Identities are the identities IdentityRules give a pod
// (ca/podidentity).
type Identities interface {
	ForPod(p *corev1.Pod) []entry.Entry
}

// Config configures the signer.
type Config struct {
	Client     kubernetes.Interface
	SignerName string
	Identities Identities
	// Sign signs an X509-SVID (api.Config.SignPodCertificate).
	Sign func(ctx context.Context, pc api.PodCertificate) ([]*x509.Certificate, error)
	// Lifetime is a certificate's lifetime when the identity's rule
	// names none; it is raised to the API's minimum (one hour) and
	// lowered to the request's maxExpirationSeconds.
	Lifetime time.Duration
	// RefreshAfter is how long after NotBefore the kubelet should start
	// refreshing (beginRefreshAt); if zero, half the lifetime. Kept
	// within the API's bounds.
	RefreshAfter time.Duration
	// Audit records denials.
	Audit *audit.Log
	Log   hclog.Logger
}

// Signer answers PodCertificateRequests.
type Signer struct {
	cfg Config
}

// New returns a signer for cfg.
func New(cfg Config) *Signer {
	if cfg.SignerName == "" {
		cfg.SignerName = DefaultSignerName
	}
	return &Signer{cfg: cfg}
}

// Run answers the requests of the signer name until ctx ends: those
// pending now, and every new one. Only one replica (the leader) runs it.
func (s *Signer) Run(ctx context.Context) {
	factory := informers.NewSharedInformerFactoryWithOptions(s.cfg.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.signerName", s.cfg.SignerName).String()
	}))
	inf := factory.Certificates().V1().PodCertificateRequests()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return
	}
	s.cfg.Log.Info("signing pod certificates", "signer", s.cfg.SignerName)
	go func() { <-ctx.Done(); queue.ShutDown() }()
	for {
		key, quit := queue.Get()
		if quit {
			return
		}
		err := s.handle(ctx, func(ns, name string) (*certv1.PodCertificateRequest, error) {
			return inf.Lister().PodCertificateRequests(ns).Get(name)
		}, key)
		if err != nil && ctx.Err() == nil {
			s.cfg.Log.Warn("pod certificate request: will retry", "request", key, "error", err)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

// handle answers the request of key, as the informer has it, if it is
// this signer's and unanswered.
func (s *Signer) handle(ctx context.Context, get func(ns, name string) (*certv1.PodCertificateRequest, error), key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	req, err := get(ns, name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if req.Spec.SignerName != s.cfg.SignerName || answered(req) {
		return nil
	}
	return s.Answer(ctx, req.DeepCopy())
}

func answered(req *certv1.PodCertificateRequest) bool {
	for _, c := range req.Status.Conditions {
		switch c.Type {
		case certv1.PodCertificateRequestConditionTypeIssued, certv1.PodCertificateRequestConditionTypeDenied, certv1.PodCertificateRequestConditionTypeFailed:
			return true
		}
	}
	return false
}

// denial is a request the signer refuses for good.
type denial struct{ reason, message string }

func (d *denial) Error() string { return d.reason + ": " + d.message }

func deny(reason, format string, args ...any) error {
	return &denial{reason: reason, message: fmt.Sprintf(format, args...)}
}

// Answer issues or denies one request and writes its status. An error is
// a failure to retry (the API server or the CA's keys unavailable).
func (s *Signer) Answer(ctx context.Context, req *certv1.PodCertificateRequest) error {
	actor := req.Namespace + "/" + req.Name
	chain, e, err := s.issue(ctx, req)
	var d *denial
	if errors.As(err, &d) {
		s.cfg.Log.Info("denied a pod certificate request", "request", actor, "pod", req.Spec.PodName, "reason", d.reason, "message", d.message)
		if aerr := s.cfg.Audit.Write(audit.Record{Event: audit.RequestRefuse, Actor: "pod-certificate:" + actor, Node: string(req.Spec.NodeName),
			Method: "PodCertificateRequest", Result: audit.Refused, Reason: d.Error()}); aerr != nil {
			return aerr
		}
		req.Status.Conditions = append(req.Status.Conditions, metav1.Condition{Type: certv1.PodCertificateRequestConditionTypeDenied,
			Status: metav1.ConditionTrue, Reason: d.reason, Message: d.message, LastTransitionTime: metav1.Now()})
		_, err := s.cfg.Client.CertificatesV1().PodCertificateRequests(req.Namespace).UpdateStatus(ctx, req, metav1.UpdateOptions{})
		return ignoreGone(err)
	}
	if err != nil {
		return err
	}
	leaf := chain[0]
	var pemChain strings.Builder
	for _, c := range chain {
		pem.Encode(&pemChain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	refresh := s.cfg.RefreshAfter
	if refresh == 0 {
		refresh = life / 2
	}
	refresh = min(max(refresh, MinRefreshMargin), life-MinRefreshMargin)
	nb, na, br := metav1.NewTime(leaf.NotBefore), metav1.NewTime(leaf.NotAfter), metav1.NewTime(leaf.NotBefore.Add(refresh))
	req.Status.CertificateChain = pemChain.String()
	req.Status.NotBefore, req.Status.NotAfter, req.Status.BeginRefreshAt = &nb, &na, &br
	req.Status.Conditions = append(req.Status.Conditions, metav1.Condition{Type: certv1.PodCertificateRequestConditionTypeIssued,
		Status: metav1.ConditionTrue, Reason: "Issued", Message: "X509-SVID " + e.SPIFFEID.String(), LastTransitionTime: metav1.Now()})
	_, err = s.cfg.Client.CertificatesV1().PodCertificateRequests(req.Namespace).UpdateStatus(ctx, req, metav1.UpdateOptions{})
	if err == nil {
		s.cfg.Log.Debug("issued a pod certificate", "request", actor, "spiffe_id", e.SPIFFEID.String(), "not_after", leaf.NotAfter)
	}
	return ignoreGone(err)
}

func ignoreGone(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// issue checks a request and signs its certificate, or says why not.
func (s *Signer) issue(ctx context.Context, req *certv1.PodCertificateRequest) ([]*x509.Certificate, entry.Entry, error) {
	spec := req.Spec
	var want string
	for k, v := range spec.UnverifiedUserAnnotations {
		if k != SPIFFEIDAnnotation {
			return nil, entry.Entry{}, deny(ReasonInvalidAnnotation, "unknown annotation %q: this signer reads only %s", k, SPIFFEIDAnnotation)
		}
		want = v
	}
	csr, err := x509.ParseCertificateRequest(spec.StubPKCS10Request)
	if err != nil {
		return nil, entry.Entry{}, deny(ReasonUnsupportedKey, "stubPKCS10Request does not parse; use ECDSAP256")
	}
	if !supportedKey(csr) {
		return nil, entry.Entry{}, deny(ReasonUnsupportedKey, "key type not supported; use ECDSAP256 (or ECDSAP384, RSA3072, RSA4096)")
	}
	pod, err := s.checkClaims(ctx, req)
	if err != nil {
		return nil, entry.Entry{}, err
	}
	ids := s.cfg.Identities.ForPod(pod)
	sort.Slice(ids, func(i, j int) bool { return ids[i].SPIFFEID.String() < ids[j].SPIFFEID.String() })
	var e entry.Entry
	switch {
	case len(ids) == 0:
		return nil, entry.Entry{}, deny(ReasonNoIdentity, "no IdentityRule gives pod %s/%s an identity", pod.Namespace, pod.Name)
	case want != "":
		found := false
		for _, id := range ids {
			if id.SPIFFEID.String() == want {
				e, found = id, true
			}
		}
		if !found {
			return nil, entry.Entry{}, deny(ReasonNoIdentity, "pod %s/%s has no identity %s (it has %s)", pod.Namespace, pod.Name, want, idList(ids))
		}
	case len(ids) > 1:
		return nil, entry.Entry{}, deny(ReasonAmbiguous, "pod %s/%s has %d identities (%s): name one with the annotation %s",
			pod.Namespace, pod.Name, len(ids), idList(ids), SPIFFEIDAnnotation)
	default:
		e = ids[0]
	}
	if e.WorkloadKey {
		return nil, entry.Entry{}, deny(ReasonWorkloadKey, "%s is a workload-key identity: no node component may hold its key", e.SPIFFEID)
	}
	life := e.X509TTL
	if life == 0 {
		life = s.cfg.Lifetime
	}
	life = max(life, MinLifetime)
	if spec.MaxExpirationSeconds != nil {
		life = min(life, time.Duration(*spec.MaxExpirationSeconds)*time.Second)
	}
	chain, err := s.cfg.Sign(ctx, api.PodCertificate{PublicKey: csr.PublicKey, Entry: e, Node: string(spec.NodeName), Lifetime: life,
		Actor: req.Namespace + "/" + req.Name})
	return chain, e, err
}

func idList(es []entry.Entry) string {
	var s []string
	for _, e := range es {
		s = append(s, e.SPIFFEID.String())
	}
	return strings.Join(s, ", ")
}

func supportedKey(csr *x509.CertificateRequest) bool {
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return k.Curve == elliptic.P256() || k.Curve == elliptic.P384()
	case *rsa.PublicKey:
		return k.N.BitLen() >= 3072
	}
	return false
}

// checkClaims confirms with the API server what the request says of its
// pod: the pod of that name has that UID, runs as that service account
// (of that UID) on that node (of that UID), and is not finished.
func (s *Signer) checkClaims(ctx context.Context, req *certv1.PodCertificateRequest) (*corev1.Pod, error) {
	spec := req.Spec
	core := s.cfg.Client.CoreV1()
	pod, err := core.Pods(req.Namespace).Get(ctx, spec.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, deny(ReasonClaimsMismatch, "pod %s/%s does not exist", req.Namespace, spec.PodName)
	}
	if err != nil {
		return nil, err
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	switch {
	case pod.UID != spec.PodUID:
		return nil, deny(ReasonClaimsMismatch, "pod %s/%s has UID %s, not %s", req.Namespace, spec.PodName, pod.UID, spec.PodUID)
	case pod.Spec.NodeName != string(spec.NodeName):
		return nil, deny(ReasonClaimsMismatch, "pod %s/%s is on node %q, not %q", req.Namespace, spec.PodName, pod.Spec.NodeName, spec.NodeName)
	case sa != spec.ServiceAccountName:
		return nil, deny(ReasonClaimsMismatch, "pod %s/%s runs as %s, not %s", req.Namespace, spec.PodName, sa, spec.ServiceAccountName)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.DeletionTimestamp != nil:
		return nil, deny(ReasonClaimsMismatch, "pod %s/%s is finished", req.Namespace, spec.PodName)
	}
	acct, err := core.ServiceAccounts(req.Namespace).Get(ctx, sa, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || err == nil && acct.UID != spec.ServiceAccountUID {
		return nil, deny(ReasonClaimsMismatch, "service account %s/%s is not %s", req.Namespace, sa, spec.ServiceAccountUID)
	}
	if err != nil {
		return nil, err
	}
	node, err := core.Nodes().Get(ctx, string(spec.NodeName), metav1.GetOptions{})
	if apierrors.IsNotFound(err) || err == nil && node.UID != spec.NodeUID {
		return nil, deny(ReasonClaimsMismatch, "node %s is not %s", spec.NodeName, spec.NodeUID)
	}
	if err != nil {
		return nil, err
	}
	return pod, nil
}

// TrustBundleName is the ClusterTrustBundle a CA keeps for its signer:
// the signer name with ':' for '/', and a suffix of the trust domain and
// the CA's namespace (hashed: names are short), so that two installations
// never overwrite each other's.
func TrustBundleName(signerName, trustDomain, namespace string) string {
	h := sha256.Sum256([]byte(trustDomain + "/" + namespace))
	return strings.ReplaceAll(signerName, "/", ":") + ":" + hex.EncodeToString(h[:8])
}

// Labels of the ClusterTrustBundle: its trust domain, so that projected
// volumes may select it, and the namespace of the CA that keeps it (delete
// it by this label when uninstalling: it is cluster-scoped).
const (
	TrustDomainLabel = "signet.dev/trust-domain"
	CANamespaceLabel = "signet.dev/ca-namespace"
)

// PublishBundle keeps the signer's ClusterTrustBundle holding the trust
// bundle's roots until ctx ends (the leader runs it): at once, when the
// roots change, and every minute, which also undoes anyone else's edit.
func (s *Signer) PublishBundle(ctx context.Context, trustDomain, namespace string, roots cluster.RootsFunc) {
	name := TrustBundleName(s.cfg.SignerName, trustDomain, namespace)
	labels := map[string]string{TrustDomainLabel: trustDomain, CANamespaceLabel: namespace}
	ctbs := s.cfg.Client.CertificatesV1().ClusterTrustBundles()
	apply := func(ctx context.Context, pemRoots []byte) error {
		cur, err := ctbs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = ctbs.Create(ctx, &certv1.ClusterTrustBundle{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
				Spec: certv1.ClusterTrustBundleSpec{SignerName: s.cfg.SignerName, TrustBundle: string(pemRoots)}}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		if cur.Spec.TrustBundle == string(pemRoots) && cur.Labels[TrustDomainLabel] == trustDomain && cur.Labels[CANamespaceLabel] == namespace {
			return nil
		}
		cur.Spec.TrustBundle = string(pemRoots)
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		maps.Copy(cur.Labels, labels)
		_, err = ctbs.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	}
	cluster.FollowRoots(ctx, roots, nil, apply, func(err error) {
		s.cfg.Log.Warn("could not publish the ClusterTrustBundle; retrying", "name", name, "error", err)
	})
}
