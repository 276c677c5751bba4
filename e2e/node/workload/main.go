// Command workload is the test workload of the real-node tests. It asks
// the Workload API (SPIFFE_ENDPOINT_SOCKET) for its X509-SVIDs, retrying
// every 20 ms, prints one JSON line saying what it got (the default SVID's
// ID and all IDs) and how long that took from its own start, then waits to
// be stopped.
//
// With POD_CERTIFICATE_DIR set it reads no socket: it watches the pod
// certificate projected there (credentialbundle.pem: key and chain;
// bundle.pem: the ClusterTrustBundle), verifies the SVID against the
// bundle, and prints a JSON line each time the certificate changes.
package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

type result struct {
	SPIFFEID  string   `json:"spiffe_id,omitempty"`
	SPIFFEIDs []string `json:"spiffe_ids,omitempty"`
	MS        float64  `json:"ms"`
	Attempts  int      `json:"attempts"`
	Errors    []string `json:"errors,omitempty"`
}

func main() {
	start := time.Now()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if dir := os.Getenv("POD_CERTIFICATE_DIR"); dir != "" {
		watchPodCertificate(ctx, dir)
		return
	}
	var r result
	for {
		r.Attempts++
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		x, err := workloadapi.FetchX509Context(actx)
		cancel()
		if err == nil {
			r.SPIFFEID = x.DefaultSVID().ID.String()
			for _, s := range x.SVIDs {
				r.SPIFFEIDs = append(r.SPIFFEIDs, s.ID.String())
			}
			break
		}
		if len(r.Errors) < 10 {
			r.Errors = append(r.Errors, status.Convert(err).Code().String()+": "+status.Convert(err).Message())
		}
		if time.Since(start) > time.Minute || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	r.MS = float64(time.Since(start).Microseconds()) / 1000
	json.NewEncoder(os.Stdout).Encode(r)
	<-ctx.Done()
}

// podCert is one line of the pod certificate watch.
type podCert struct {
	SPIFFEID  string    `json:"spiffe_id,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	Roots     int       `json:"roots"`
	Verified  bool      `json:"verified"`
	Error     string    `json:"error,omitempty"`
}

func watchPodCertificate(ctx context.Context, dir string) {
	var last string
	for {
		cred, err1 := os.ReadFile(filepath.Join(dir, "credentialbundle.pem"))
		roots, err2 := os.ReadFile(filepath.Join(dir, "bundle.pem"))
		if err1 == nil && err2 == nil && string(cred)+string(roots) != last {
			last = string(cred) + string(roots)
			json.NewEncoder(os.Stdout).Encode(checkPodCertificate(cred, roots))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// checkPodCertificate parses the credential bundle (a private key, then
// the certificate chain) and verifies it as an X509-SVID with the roots.
func checkPodCertificate(cred, rootsPEM []byte) podCert {
	var out podCert
	var certs [][]byte
	var keyDER []byte
	for rest := cred; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certs = append(certs, b.Bytes)
		} else if strings.Contains(b.Type, "PRIVATE KEY") {
			keyDER = b.Bytes
		}
	}
	var roots []*x509.Certificate
	for rest := rootsPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			roots = append(roots, c)
		}
	}
	out.Roots = len(roots)
	if len(certs) == 0 || keyDER == nil {
		out.Error = "no key or no certificate in the credential bundle"
		return out
	}
	leaf, err := x509.ParseCertificate(certs[0])
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.Serial, out.NotBefore, out.NotAfter = leaf.SerialNumber.Text(16), leaf.NotBefore, leaf.NotAfter
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		if key, err = x509.ParseECPrivateKey(keyDER); err != nil {
			out.Error = "private key: " + err.Error()
			return out
		}
	}
	if pub, ok := key.(crypto.Signer); !ok || !pub.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		out.Error = "the private key is not the certificate's"
		return out
	}
	if len(leaf.URIs) == 1 {
		td, err := spiffeid.TrustDomainFromString(leaf.URIs[0].Host)
		if err == nil {
			id, _, err := x509svid.ParseAndVerify(certs, x509bundle.FromX509Authorities(td, roots))
			if err != nil {
				out.Error = err.Error()
				return out
			}
			out.SPIFFEID, out.Verified = id.String(), true
			return out
		}
	}
	out.Error = "not an X509-SVID"
	return out
}
