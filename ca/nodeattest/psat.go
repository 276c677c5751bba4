// Package nodeattest proves a node agent's identity. PSAT checks a
// Kubernetes projected service-account token with the API server.
package nodeattest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/signet-id/signet/internal/signetid"
)

// Extra keys the API server sets on pod-bound service-account tokens.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// Refusal is an attestation the CA refuses, with a reason safe to return
// and audit (it never holds the token).
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

// AgentFault reports that a refusal is the attesting agent's fault.
func (r *Refusal) AgentFault() bool { return true }

func refuse(format string, args ...any) error { return &Refusal{Reason: fmt.Sprintf(format, args...)} }

// PSAT verifies projected service-account tokens.
type PSAT struct {
	Client kubernetes.Interface
	// Audience the token must carry. If empty, "signet-ca".
	Audience string
	// ServiceAccounts are the agents' accounts, "namespace/name".
	ServiceAccounts []string
}

// Agent is what a verified token proves.
type Agent struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	NodeName       string
}

// Attest reviews token with the API server and checks that it is bound to
// a live pod of an agent service account scheduled on node. Errors of type
// *Refusal are the caller's fault; others are the CA's or API server's.
func (p *PSAT) Attest(ctx context.Context, token, node string) (Agent, error) {
	aud := p.Audience
	if aud == "" {
		aud = signetid.AgentAudience
	}
	if token == "" {
		return Agent{}, refuse("token is empty")
	}
	if node == "" {
		return Agent{}, refuse("node name is empty")
	}
	tr, err := p.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}},
	}, metav1.CreateOptions{})
	if err != nil {
		return Agent{}, fmt.Errorf("nodeattest: token review: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := "token not authenticated"
		if st.Error != "" {
			reason += ": " + sanitize(st.Error, token)
		}
		return Agent{}, refuse("%s", reason)
	}
	if !slices.Contains(st.Audiences, aud) {
		return Agent{}, refuse("token is not for audience %q", aud)
	}
	ns, sa, ok := serviceAccount(st.User.Username)
	if !ok {
		return Agent{}, refuse("token is not a service-account token (user %q)", st.User.Username)
	}
	if !slices.Contains(p.ServiceAccounts, ns+"/"+sa) {
		return Agent{}, refuse("service account %s/%s is not an agent service account", ns, sa)
	}
	a := Agent{Namespace: ns, ServiceAccount: sa, PodName: extra(st.User, extraPodName), PodUID: extra(st.User, extraPodUID), NodeName: node}
	if a.PodName == "" || a.PodUID == "" {
		return Agent{}, refuse("token is not bound to a pod")
	}
	if tn := extra(st.User, extraNodeName); tn != "" && tn != node {
		return Agent{}, refuse("token is bound to node %q, agent claims %q", tn, node)
	}
	pod, err := p.Client.CoreV1().Pods(ns).Get(ctx, a.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Agent{}, refuse("pod %s/%s of the token does not exist", ns, a.PodName)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("nodeattest: get pod: %w", err)
	}
	if string(pod.UID) != a.PodUID {
		return Agent{}, refuse("pod %s/%s of the token was deleted (a new pod has its name)", ns, a.PodName)
	}
	if pod.DeletionTimestamp != nil {
		return Agent{}, refuse("pod %s/%s of the token is being deleted", ns, a.PodName)
	}
	if pod.Spec.NodeName != node {
		return Agent{}, refuse("pod %s/%s runs on node %q, agent claims %q", ns, a.PodName, pod.Spec.NodeName, node)
	}
	if _, err := p.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return Agent{}, refuse("node %q does not exist", node)
	} else if err != nil {
		return Agent{}, fmt.Errorf("nodeattest: get node: %w", err)
	}
	return a, nil
}

// IsRefusal reports whether err is the attesting agent's fault.
func IsRefusal(err error) bool {
	var r *Refusal
	return errors.As(err, &r)
}

func serviceAccount(user string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != ""
}

func extra(u authnv1.UserInfo, key string) string {
	if v := u.Extra[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// sanitize keeps an API server message from echoing the token.
func sanitize(msg, token string) string {
	if len(token) >= 8 {
		msg = strings.ReplaceAll(msg, token, "[token]")
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return msg
}
