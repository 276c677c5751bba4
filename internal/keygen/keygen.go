// Package keygen makes the private keys the agent holds (its own and its
// workloads'), with a certificate request for each: keys are made on the
// node and never leave it; the CA sees the requests only.
package keygen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
)

// KeyAndCSR makes a P-256 key and a DER certificate request signed by
// it, with no subject: the CA sets the SPIFFE ID.
func KeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	return key, csr, err
}
