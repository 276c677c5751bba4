package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/signet-id/signet/e2e/systest"
	adminv1 "github.com/signet-id/signet/proto/signet/admin/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk"
	"github.com/signet-id/signet/sdk/authz"
)

// TestFederatedCAForgesPlaceMarks: the CA of a federated trust domain is
// compromised (the test holds its root key, whose bundle Signet fetches
// from the partner's https_web endpoint). It writes Signet's place marks
// (signet-ns:shop, signet-node:…) into the SVIDs it issues, to pass the
// rules of a Signet service that let in this trust domain's namespace
// shop, and the partner's workloads only from namespace shop. The service
// (the SDK, on its agent's bundles) refuses them at the handshake; the
// partner's SVID that a rule names by ID is let in, so the refusals are
// the marks', not the federation's.
func TestFederatedCAForgesPlaceMarks(t *testing.T) {
	const partner = "partner.test"
	ptd := spiffeid.RequireTrustDomainFromString(partner)
	rootKey, root := partnerRoot(t, ptd)
	raw, err := spiffebundle.FromX509Authorities(ptd, []*x509.Certificate{root}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ep := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(raw) }))
	defer ep.Close()

	ctx := context.Background()
	ca := systest.StartCA(t)
	td := ca.TrustDomain()
	if _, err := ca.Admin.CreateFederation(ctx, &adminv1.CreateFederationRequest{Federation: &typesv1.FederatedTrustDomain{
		TrustDomain: partner, BundleEndpointUrl: ep.URL, Profile: "https_web",
		EndpointCa: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ep.Certificate().Raw}),
	}}); err != nil {
		t.Fatal(err)
	}
	ag := ca.StartAgent("db-node")
	if _, err := ca.Admin.CreateEntries(ctx, &adminv1.CreateEntriesRequest{Entries: []*typesv1.Entry{{
		SpiffeId: td.IDString() + "/db", ParentId: ag.ID.String(), FederatesWith: []string{partner},
		Selectors: []*typesv1.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", os.Getuid())}},
	}}}); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	src, err := sdk.NewSource(sctx, sdk.WithAddr(ag.Addr), sdk.WithID(td.IDString()+"/db"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	eventually(t, time.Minute, "the service holds the partner's bundle", func() error {
		_, err := src.GetX509BundleForTrustDomain(ptd)
		return err
	})
	az, err := authz.New(td,
		authz.Allow(authz.PeerNamespace("shop")),
		authz.Allow(authz.PeerTrustDomain(partner)).FromSources(authz.Source{Namespace: "shop"}),
		authz.Allow(authz.PeerID("spiffe://"+partner+"/billing")),
	)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := sdk.Listen("tcp", "127.0.0.1:0", src, az)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go systest.Echo(lis)

	ours, err := src.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	call := func(id string, units ...string) error {
		svid := partnerSVID(t, rootKey, root, id, units)
		cfg := tlsconfig.MTLSClientConfig(svid, x509bundle.NewSet(ours), tlsconfig.AuthorizeID(spiffeid.RequireFromString(td.IDString()+"/db")))
		return roundTrip(func() (net.Conn, error) { return tls.Dial("tcp", lis.Addr().String(), cfg) })
	}
	if err := call("spiffe://" + partner + "/billing"); err != nil {
		t.Fatalf("the partner's workload a rule names was refused: %v", err)
	}
	marks := []string{authz.NamespaceUnit + "shop", authz.NodeUnit + "db-node"}
	for _, id := range []string{"spiffe://" + partner + "/ns/shop/sa/web", "spiffe://" + partner + "/intruder"} {
		if err := call(id, marks...); err == nil {
			t.Errorf("%s, its CA's SVID marked %v, reached the service", id, marks)
		}
	}
}

// partnerRoot is the federated trust domain's root CA and its key.
func partnerRoot(t *testing.T, td spiffeid.TrustDomain) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td.Name()}, NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs: []*url.URL{td.ID().URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, c
}

// partnerSVID is an X.509-SVID for id that the partner's root signs, with
// units as its subject's organizational units.
func partnerSVID(t *testing.T, caKey *ecdsa.PrivateKey, ca *x509.Certificate, id string, units []string) *x509svid.SVID {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{OrganizationalUnit: units},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{sid.URL()},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{c}, PrivateKey: key}
}
