package attack

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/signet-id/signet/ca/podcert"
	"github.com/signet-id/signet/e2e/nodeenv"
	"github.com/signet-id/signet/e2e/testenv"
)

// TestForgedPodCertificateRequests: someone who may create
// PodCertificateRequests (here a cluster admin, the strongest) asks
// Signet's signer for a pod's identity with claims that are not that
// pod's: another UID, another service account, another node, or an
// identity the pod does not have. The CA checks the claims with the API
// server and denies each; none gets a certificate. (The API server may
// refuse some at creation, which defeats the attack as well.)
func TestForgedPodCertificateRequests(t *testing.T) {
	ctx := context.Background()
	c := env.Cluster.Client
	const ns = "bank"
	if err := env.Namespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"teller", "admin"} {
		if err := env.ServiceAccount(ctx, ns, sa); err != nil {
			t.Fatal(err)
		}
	}
	victim, err := c.CoreV1().Pods(ns).Create(ctx, nodeenv.RestrictedPod(ns, "victim", "teller", nodeenv.WorkloadImage), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.DeletePod(t, victim) })
	admin, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "admin", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	teller, err := c.CoreV1().ServiceAccounts(ns).Get(ctx, "teller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node, err := c.CoreV1().Nodes().Get(ctx, testenv.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "elsewhere"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CoreV1().Nodes().Delete(ctx, "elsewhere", metav1.DeleteOptions{}) })

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	honest := certv1.PodCertificateRequestSpec{
		SignerName: podcert.DefaultSignerName, PodName: victim.Name, PodUID: victim.UID,
		ServiceAccountName: "teller", ServiceAccountUID: teller.UID, NodeName: types.NodeName(node.Name), NodeUID: node.UID,
		StubPKCS10Request: csr,
	}
	for _, a := range []struct {
		what   string
		forge  func(*certv1.PodCertificateRequestSpec)
		reason string // "" for the honest request, which is issued
	}{
		{"the honest request", func(*certv1.PodCertificateRequestSpec) {}, ""},
		{"another pod UID", func(s *certv1.PodCertificateRequestSpec) { s.PodUID = "6f1c0a3e-0000-4000-8000-000000000001" }, podcert.ReasonClaimsMismatch},
		{"another service account", func(s *certv1.PodCertificateRequestSpec) {
			s.ServiceAccountName, s.ServiceAccountUID = "admin", admin.UID
		}, podcert.ReasonClaimsMismatch},
		{"another node", func(s *certv1.PodCertificateRequestSpec) { s.NodeName, s.NodeUID = "elsewhere", other.UID }, podcert.ReasonClaimsMismatch},
		{"an identity the pod does not have", func(s *certv1.PodCertificateRequestSpec) {
			s.UnverifiedUserAnnotations = map[string]string{podcert.SPIFFEIDAnnotation: "spiffe://example.org/ns/bank/sa/admin"}
		}, podcert.ReasonNoIdentity},
		{"an annotation the signer does not know", func(s *certv1.PodCertificateRequestSpec) {
			s.UnverifiedUserAnnotations = map[string]string{"evil.example/dns": "bank.example"}
		}, podcert.ReasonInvalidAnnotation},
	} {
		spec := honest
		a.forge(&spec)
		req, err := c.CertificatesV1().PodCertificateRequests(ns).Create(ctx, &certv1.PodCertificateRequest{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "forged-"}, Spec: spec}, metav1.CreateOptions{})
		if err != nil {
			t.Logf("%s: the API server refused the request: %v", a.what, err)
			continue
		}
		deadline := time.Now().Add(time.Minute)
		for {
			got, err := c.CertificatesV1().PodCertificateRequests(ns).Get(ctx, req.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.CertificateChain != "" {
				if a.reason != "" {
					t.Fatalf("%s: the CA issued a certificate", a.what)
				}
				break
			}
			var denied *metav1.Condition
			for i, cond := range got.Status.Conditions {
				if cond.Type == certv1.PodCertificateRequestConditionTypeDenied {
					denied = &got.Status.Conditions[i]
				}
			}
			if denied != nil {
				if a.reason == "" {
					t.Fatalf("the honest request was denied: %s: %s", denied.Reason, denied.Message)
				}
				if denied.Reason != a.reason {
					t.Errorf("%s: denied %s (%s), want %s", a.what, denied.Reason, denied.Message, a.reason)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no answer from the CA in a minute: %+v", a.what, got.Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
