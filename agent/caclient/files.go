package caclient

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names in the agent's data directory.
const (
	svidFile   = "agent-svid.pem"
	keyFile    = "agent-key.pem"
	bundleFile = "bundle.pem"
)

// writeFileAtomic writes data to path through a temporary file and a
// rename, so a crash leaves either the old or the new file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func certsPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// saveSVID stores the agent SVID and key in dir; the key first, so a crash
// never leaves a certificate without its key.
func saveSVID(dir string, svid *x509svid.SVID) error {
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("agent SVID: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, keyFile+".new"), keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, svidFile+".new"), certPEM, 0o600); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, keyFile+".new"), filepath.Join(dir, keyFile)); err != nil {
		return err
	}
	return os.Rename(filepath.Join(dir, svidFile+".new"), filepath.Join(dir, svidFile))
}

// loadSVID reads the agent SVID from dir; (nil, nil) if there is none.
func loadSVID(dir string) (*x509svid.SVID, error) {
	svid, err := x509svid.Load(filepath.Join(dir, svidFile), filepath.Join(dir, keyFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("agent SVID in %s: %w", dir, err)
	}
	return svid, nil
}

// LoadBundleFile reads PEM certificates.
func LoadBundleFile(path string) ([]*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, raw = pem.Decode(raw)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return certs, nil
}

// StoredBundle returns the roots the agent last received from the CA and
// kept in its data directory.
func StoredBundle(dataDir string) ([]*x509.Certificate, error) {
	return LoadBundleFile(filepath.Join(dataDir, bundleFile))
}

// BundleTrustDomain returns the trust domain that roots name: Signet's
// roots carry spiffe://<trust domain> as their URI SAN. It is zero when
// no root names one (roots of another CA), and an error when they
// disagree.
func BundleTrustDomain(roots []*x509.Certificate) (spiffeid.TrustDomain, error) {
	var td spiffeid.TrustDomain
	for _, r := range roots {
		if len(r.URIs) != 1 {
			continue
		}
		id, err := spiffeid.FromURI(r.URIs[0])
		if err != nil || id.Path() != "" {
			continue
		}
		if !td.IsZero() && id.TrustDomain() != td {
			return spiffeid.TrustDomain{}, fmt.Errorf("its roots name two trust domains, %s and %s", td, id.TrustDomain())
		}
		td = id.TrustDomain()
	}
	return td, nil
}
