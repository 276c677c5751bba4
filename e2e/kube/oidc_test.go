package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	authnv1 "k8s.io/api/authentication/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/signet-id/signet/agent"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
	"github.com/signet-id/signet/e2e/testenv"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// authenticationConfig is the API server's structured authentication
// configuration that trusts Signet's OIDC issuer, as docs/oidc.md gives it
// (with the test's issuer, audience, trust domain and CA).
const authenticationConfig = `apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
`

// jwtAuthenticator is one entry of authenticationConfig's jwt list.
const jwtAuthenticator = `- issuer:
    url: %[1]s
    audiences: [%[2]s]
    certificateAuthority: |
%[3]s
  claimValidationRules:
  - expression: "claims.sub.startsWith('spiffe://%[4]s/')"
    message: "not an identity of trust domain %[4]s"
  claimMappings:
    username:
      expression: "claims.sub"
    groups:
      expression: "['spiffe://' + claims.sub.split('/')[2]]"
  userValidationRules:
  - expression: "!user.username.startsWith('system:')"
    message: "username may not use the system: prefix"
`

// TestKubernetesTrustsJWTSVIDs starts a kube-apiserver whose JWT
// authenticator trusts the CA's OIDC issuer: a workload calls the
// Kubernetes API with the JWT-SVID its agent gives it, RBAC allows exactly
// what is bound to its SPIFFE ID, and the tokens that must not pass (of
// another trust domain signed by another CA claiming the same issuer,
// expired, for another audience) are refused. A second issuer, a CA with
// RSA JWT keys (--jwt-key-type rsa-2048, as Microsoft Entra ID needs),
// is trusted the same way: its RS256 JWT-SVIDs pass the agent's
// validation and the API server's.
func TestKubernetesTrustsJWTSVIDs(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile, err := testenv.ServingCert(dir, "oidc", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	oidcAddr := systest.FreeAddr(t)
	issuer := "https://" + oidcAddr
	const audience = "kubernetes"
	ca := systest.StartCA(t, func(c *server.Config) {
		c.OIDC = &server.OIDCConfig{Issuer: issuer, ListenAddr: oidcAddr, CertFile: certFile, KeyFile: keyFile}
	})
	// Another trust domain's CA that claims the same issuer: its tokens
	// carry the right iss, and are signed by keys the issuer never
	// published.
	other := systest.StartCA(t, func(c *server.Config) {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString("other.test")
		c.OIDC = &server.OIDCConfig{Issuer: issuer}
	})

	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	authnPath := filepath.Join(dir, "authentication.yaml")
	indented := "      " + strings.ReplaceAll(strings.TrimSpace(string(caPEM)), "\n", "\n      ")
	td := systest.TrustDomain.Name()
	rsaAddr := systest.FreeAddr(t)
	rsaIssuer := "https://" + rsaAddr
	rsaCA := systest.StartCA(t, func(c *server.Config) {
		c.TrustDomain = spiffeid.RequireTrustDomainFromString("rsa.test")
		c.JWTKeyType = "rsa-2048"
		c.OIDC = &server.OIDCConfig{Issuer: rsaIssuer, ListenAddr: rsaAddr, CertFile: certFile, KeyFile: keyFile}
	})
	authn := authenticationConfig + fmt.Sprintf(jwtAuthenticator, issuer, audience, indented, td) +
		fmt.Sprintf(jwtAuthenticator, rsaIssuer, audience, indented, "rsa.test")
	if err := os.WriteFile(authnPath, []byte(authn), 0o600); err != nil {
		t.Fatal(err)
	}
	kube, err := testenv.StartWith(filepath.Join(dir, "cluster"), testenv.Options{APIServerArgs: []string{"--authentication-config=" + authnPath}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kube.Stop)

	ag := ca.StartAgent("node-oidc")
	reader := "spiffe://" + td + "/ns/apps/sa/reader"
	stranger := "spiffe://" + td + "/ns/apps/sa/stranger"
	short := "spiffe://" + td + "/ns/apps/sa/short"
	ca.CreateEntry(reader, ag.ID.String(), time.Hour, "unix:uid:0")
	ca.CreateEntry(stranger, ag.ID.String(), time.Hour, "unix:uid:0")
	if _, err := ca.Admin.CreateEntries(context.Background(), &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
		SpiffeId: short, ParentId: ag.ID.String(), JwtSvidTtlSeconds: 2,
		Selectors: []*typesv1.Selector{{Type: "unix", Value: "uid:0"}},
	}}}); err != nil {
		t.Fatal(err)
	}
	oag := other.StartAgent("node-other", func(c *agent.Config) { c.TrustDomain = other.TrustDomain() })
	rag := rsaCA.StartAgent("node-rsa", func(c *agent.Config) { c.TrustDomain = rsaCA.TrustDomain() })
	rsaReader := "spiffe://rsa.test/ns/apps/sa/reader"
	rsaCA.CreateEntry(rsaReader, rag.ID.String(), time.Hour, "unix:uid:0")
	foreign := "spiffe://other.test/ns/apps/sa/reader"
	other.CreateEntry(foreign, oag.ID.String(), time.Hour, "unix:uid:0")

	// RBAC: the reader may read ConfigMaps in apps, nothing else.
	ctx := context.Background()
	if err := kube.EnsureNamespace(ctx, "apps"); err != nil {
		t.Fatal(err)
	}
	rbac := kube.Client.RbacV1()
	if _, err := rbac.Roles("apps").Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "configmap-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings("apps").Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "reader"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "configmap-reader"},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: reader}, {APIGroup: rbacv1.GroupName, Kind: "User", Name: rsaReader}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	fetch := func(addr, id, aud string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud, Subject: spiffeid.RequireFromString(id)}, workloadapi.WithAddr(addr))
		if err != nil {
			t.Fatalf("fetch the JWT-SVID of %s: %v", id, err)
		}
		return svid.Marshal()
	}
	as := func(token string) kubernetes.Interface {
		cfg := &rest.Config{Host: kube.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: kube.CAFile}}
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	// claimsOf reads a token's claims, and checks its algorithm.
	claimsOf := func(tok string, alg jose.SignatureAlgorithm) jwt.Claims {
		t.Helper()
		var claims jwt.Claims
		parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{alg})
		if err != nil {
			t.Fatalf("JWT-SVID: %v, want one signed %s", err, alg)
		}
		if err := parsed.UnsafeClaimsWithoutVerification(&claims); err != nil {
			t.Fatal(err)
		}
		return claims
	}
	readerTok := fetch(ag.Addr, reader, audience)
	if claims := claimsOf(readerTok, jose.ES256); claims.Issuer != issuer {
		t.Fatalf("JWT-SVID iss %q, want the issuer %q", claims.Issuer, issuer)
	}
	rsaTok := fetch(rag.Addr, rsaReader, audience)
	if claims := claimsOf(rsaTok, jose.RS256); claims.Issuer != rsaIssuer {
		t.Fatalf("RS256 JWT-SVID iss %q, want the issuer %q", claims.Issuer, rsaIssuer)
	}
	if _, err := workloadapi.ValidateJWTSVID(ctx, rsaTok, audience, workloadapi.WithAddr(rag.Addr)); err != nil {
		t.Fatalf("the agent's validation of an RS256 JWT-SVID of its trust domain: %v", err)
	}

	// The JWT authenticator starts in the background: wait until the
	// reader's token is accepted, the condition under test.
	var review *authnv1.SelfSubjectReview
	eventually(t, time.Minute, "the API server accepts the reader's JWT-SVID", func() bool {
		review, err = as(readerTok).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return err == nil
	})
	if u := review.Status.UserInfo; u.Username != reader || !slices.Contains(u.Groups, "spiffe://"+td) {
		t.Fatalf("the API server sees %q in %v, want %q in spiffe://%s", u.Username, u.Groups, reader, td)
	}
	rc := as(readerTok).CoreV1()
	if _, err := rc.ConfigMaps("apps").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("the reader lists ConfigMaps in apps, which it is bound to: %v", err)
	}
	// The RS256 issuer's workload, the same way (each issuer's
	// authenticator starts on its own).
	eventually(t, time.Minute, "the API server accepts the RS256 JWT-SVID", func() bool {
		review, err = as(rsaTok).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
		return err == nil
	})
	if u := review.Status.UserInfo; u.Username != rsaReader {
		t.Fatalf("the API server sees %q for the RS256 JWT-SVID, want %q", u.Username, rsaReader)
	}
	if _, err := as(rsaTok).CoreV1().ConfigMaps("apps").List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("the RS256 reader lists ConfigMaps in apps, which it is bound to: %v", err)
	}
	if _, err := as(rsaTok).CoreV1().Secrets("apps").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the RS256 reader lists Secrets in apps: %v, want forbidden", err)
	}
	if _, err := rc.Secrets("apps").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the reader lists Secrets in apps: %v, want forbidden", err)
	}
	if _, err := rc.ConfigMaps("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the reader lists ConfigMaps in default: %v, want forbidden", err)
	}
	// A workload of the same trust domain is authenticated, and bound to
	// nothing.
	if _, err := as(fetch(ag.Addr, stranger, audience)).CoreV1().ConfigMaps("apps").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("a workload bound to nothing lists ConfigMaps in apps: %v, want forbidden", err)
	}

	refused := func(what, token string) {
		t.Helper()
		_, err := as(token).CoreV1().ConfigMaps("apps").List(ctx, metav1.ListOptions{})
		if !apierrors.IsUnauthorized(err) {
			t.Errorf("%s: %v, want 401 Unauthorized", what, err)
		}
	}
	refused("a JWT-SVID for another audience", fetch(ag.Addr, reader, "vault"))
	refused("a JWT-SVID of another trust domain, signed by its CA, with this issuer", fetch(oag.Addr, foreign, audience))
	shortTok := fetch(ag.Addr, short, audience)
	sc := claimsOf(shortTok, jose.ES256)
	// Wait for the condition itself: the token's expiry has passed.
	for time.Now().Before(sc.Expiry.Time().Add(time.Second)) {
		time.Sleep(time.Until(sc.Expiry.Time().Add(time.Second)))
	}
	refused("an expired JWT-SVID", shortTok)

	// The issuer's documents are all the endpoint serves, read-only.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsTrusting(t, caFile)}, Timeout: 10 * time.Second}
	for iss, want := range map[string]string{issuer: `"id_token_signing_alg_values_supported":["ES256"]`, rsaIssuer: `"id_token_signing_alg_values_supported":["RS256"]`} {
		resp, err := hc.Get(iss + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), want) {
			t.Errorf("%s discovery document: %s, want %s", iss, body, want)
		}
	}
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/.well-known/openid-configuration", 200}, {"GET", "/keys", 200},
		{"POST", "/keys", 405}, {"DELETE", "/.well-known/openid-configuration", 405},
		{"GET", "/metrics", 404}, {"GET", "/v1/bundle", 404}, {"GET", "/keys?x=1", 404},
	} {
		req, _ := http.NewRequest(c.method, issuer+c.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
		}
	}
}

func tlsTrusting(t *testing.T, caFile string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in " + caFile)
	}
	return &tls.Config{RootCAs: pool}
}
