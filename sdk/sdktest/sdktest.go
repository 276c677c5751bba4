// Package sdktest serves the SPIFFE Workload API from an in-memory CA, for
// tests of services built on the sdk, like net/http/httptest: each
// WorkloadAPI listens on its own Unix socket and hands out one identity,
// which the test can rotate or replace at any time.
package sdktest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	workloadv1 "github.com/signet-id/signet/proto/signet/workload/v1"
)

// CA is a trust domain's certificate authority.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Root        *x509.Certificate
	key         crypto.Signer
}

// NewCA returns a CA for td.
func NewCA(t testing.TB, td string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tdom := spiffeid.RequireTrustDomainFromString(td)
	u, _ := url.Parse(tdom.IDString())
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &CA{TrustDomain: tdom, Root: root, key: key}
}

// SVID is an issued X.509-SVID.
type SVID struct {
	ID    spiffeid.ID
	Chain []*x509.Certificate
	Key   crypto.Signer
}

// Issue signs an X.509-SVID for id valid from notBefore to notAfter.
func (ca *CA) Issue(t testing.TB, id string, notBefore, notAfter time.Time) SVID {
	t.Helper()
	sid := spiffeid.RequireFromString(id)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	u, _ := url.Parse(sid.String())
	tmpl := &x509.Certificate{SerialNumber: serial, URIs: []*url.URL{u}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Root, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return SVID{ID: sid, Chain: []*x509.Certificate{cert}, Key: key}
}

// WorkloadAPI serves one workload's identity.
type WorkloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	// Addr is the address for sdk.WithAddr.
	Addr string

	mu      sync.Mutex
	svid    SVID
	bundles []*CA
	revs    []*typesv1.Revocation
	changed chan struct{}
}

// NewWorkloadAPI serves svid and the roots of bundles (the trust domains
// the workload trusts) until the test ends.
func NewWorkloadAPI(t testing.TB, svid SVID, bundles ...*CA) *WorkloadAPI {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdkt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	w := &WorkloadAPI{Addr: "unix://" + sock, svid: svid, bundles: bundles, changed: make(chan struct{})}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, w)
	workloadv1.RegisterRevocationsServer(srv, revocations{w: w})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return w
}

// SetSVID replaces the identity; open streams get it at once, as after a
// rotation.
func (w *WorkloadAPI) SetSVID(svid SVID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.svid = svid
	close(w.changed)
	w.changed = make(chan struct{})
}

// SetRevocations replaces the revocations in force, as Signet's agent
// serves them (signet.workload.v1.Revocations); sources following this
// API enforce them at once.
func (w *WorkloadAPI) SetRevocations(rs ...*typesv1.Revocation) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.revs = rs
	close(w.changed)
	w.changed = make(chan struct{})
}

// Revoke returns a revocation of svid's leaf certificate, for
// SetRevocations.
func Revoke(svid SVID) *typesv1.Revocation {
	return &typesv1.Revocation{Id: "rv-" + svid.Chain[0].SerialNumber.Text(16), Serial: svid.Chain[0].SerialNumber.Text(16)}
}

type revocations struct {
	workloadv1.UnimplementedRevocationsServer
	w *WorkloadAPI
}

func (r revocations) Watch(_ *workloadv1.WatchRevocationsRequest, stream workloadv1.Revocations_WatchServer) error {
	for {
		r.w.mu.Lock()
		revs, changed := r.w.revs, r.w.changed
		r.w.mu.Unlock()
		if err := stream.Send(&workloadv1.WatchRevocationsResponse{Revocations: revs}); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// FetchX509SVID implements the Workload API.
func (w *WorkloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	for {
		w.mu.Lock()
		svid, changed := w.svid, w.changed
		var bundle []byte
		var federated map[string][]byte
		for i, ca := range w.bundles {
			if i == 0 {
				bundle = ca.Root.Raw
				continue
			}
			if federated == nil {
				federated = map[string][]byte{}
			}
			federated[ca.TrustDomain.IDString()] = ca.Root.Raw
		}
		w.mu.Unlock()
		var chain []byte
		for _, c := range svid.Chain {
			chain = append(chain, c.Raw...)
		}
		key, err := x509.MarshalPKCS8PrivateKey(svid.Key)
		if err != nil {
			return err
		}
		if err := stream.Send(&workload.X509SVIDResponse{
			Svids:            []*workload.X509SVID{{SpiffeId: svid.ID.String(), X509Svid: chain, X509SvidKey: key, Bundle: bundle}},
			FederatedBundles: federated,
		}); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}
