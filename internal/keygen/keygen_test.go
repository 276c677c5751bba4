package keygen

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
)

// The request is what crypto/x509 makes for the same key, up to the
// signature, and crypto/x509 (the CA's parser) accepts it.
func TestKeyAndCSRMatchesCryptoX509(t *testing.T) {
	for i := 0; i < 50; i++ {
		key, der, err := KeyAndCSR()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("signature: %v", err)
		}
		if csr.SignatureAlgorithm != x509.ECDSAWithSHA256 || csr.Version != 0 {
			t.Fatalf("algorithm %v, version %d", csr.SignatureAlgorithm, csr.Version)
		}
		if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
			t.Fatalf("public key %v is not the key's", csr.PublicKey)
		}
		ref, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.ParseCertificateRequest(ref)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(csr.RawTBSCertificateRequest, want.RawTBSCertificateRequest) {
			t.Fatalf("request info\n%x\nwant (crypto/x509)\n%x", csr.RawTBSCertificateRequest, want.RawTBSCertificateRequest)
		}
		if len(csr.Subject.Names) != 0 || len(csr.URIs) != 0 || len(csr.Extensions) != 0 {
			t.Fatalf("request carries a subject or extensions: %+v", csr)
		}
	}
}

// A request signed by another key than the one it carries fails the CA's
// check: the signature is over the request and by its key.
func TestKeyAndCSRSignatureIsChecked(t *testing.T) {
	_, der, err := KeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(der)
	bad[len(bad)-5] ^= 0xff // inside the signature
	if csr, err := x509.ParseCertificateRequest(bad); err == nil {
		if csr.CheckSignature() == nil {
			t.Fatal("a request with a changed signature passed the check")
		}
	}
	bad = bytes.Clone(der)
	bad[20] ^= 0x01 // inside the request info (the public key)
	if csr, err := x509.ParseCertificateRequest(bad); err == nil {
		if csr.CheckSignature() == nil {
			t.Fatal("a changed request passed the check")
		}
	}
}

// Against crypto/x509's CreateCertificateRequest, which checks the
// signature it made: go test -bench . ./internal/keygen
func BenchmarkKeyAndCSR(b *testing.B) {
	b.Run("keygen", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := KeyAndCSR(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("crypto-x509", func(b *testing.B) {
		for b.Loop() {
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key); err != nil {
				b.Fatal(err)
			}
		}
	})
}
