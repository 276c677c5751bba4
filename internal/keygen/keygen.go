// Package keygen makes the private keys the agent holds (its own and its
// workloads'), with a certificate request for each: keys are made on the
// node and never leave it; the CA sees the requests only.
package keygen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// oidECDSAWithSHA256 is the signature algorithm of the request (RFC 5758).
var oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}

// KeyAndCSR makes a P-256 key and a DER certificate request signed by
// it, with no subject: the CA sets the SPIFFE ID.
//
// The request is the one x509.CreateCertificateRequest makes for an empty
// template, byte for byte up to the signature, without its check of the
// signature just made. That check guards against a faulty crypto.Signer
// (a hardware key); for a key in memory it is a second P-256 verification
// per SVID, a third of what an agent spends minting.
func KeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := csrFor(key)
	return key, csr, err
}

// csrFor is the PKCS #10 request (RFC 2986) of key: version 0, an empty
// subject, key's public key, no attributes; signed with ECDSA-SHA256.
func csrFor(key *ecdsa.PrivateKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	var info cryptobyte.Builder
	info.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)                                        // version
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {}) // subject: empty RDNSequence
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(*cryptobyte.Builder) {}) // attributes
	})
	tbs, err := info.Bytes()
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(tbs)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return nil, err
	}
	var req cryptobyte.Builder
	req.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidECDSAWithSHA256)
		})
		b.AddASN1BitString(sig)
	})
	return req.Bytes()
}
