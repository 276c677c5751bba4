package signer_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/ca/signer"
)

// BenchmarkSignX509SVID is the CA's whole signing path for one CSR: parse
// and check the CSR, build the template, sign through softcas.
func BenchmarkSignX509SVID(b *testing.B) {
	a := newAuthority(b, nil)
	der := csrDER(b, ecKey(b), nil)
	ca := a.X509CA()
	b.ReportAllocs()
	for b.Loop() {
		c, err := signer.ParseCSR(der)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := signer.SignX509SVID(ca, signer.X509Params{CSR: c, SPIFFEID: id, TTL: time.Hour, Now: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawCreateCertificate is the baseline: x509.CreateCertificate with
// the same keys and an equivalent template, nothing else.
func BenchmarkRawCreateCertificate(b *testing.B) {
	a := newAuthority(b, nil)
	ca := a.X509CA()
	pub := ecKey(b).Public()
	b.ReportAllocs()
	for b.Loop() {
		now := time.Now()
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(now.UnixNano()),
			Subject:               pkix.Name{Organization: []string{"Signet"}},
			URIs:                  []*url.URL{id.URL()},
			NotBefore:             now,
			NotAfter:              now.Add(time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			BasicConstraintsValid: true,
		}
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate, pub, ca.Signer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignJWTSVID signs JWT-SVIDs with each --jwt-key-type.
func BenchmarkSignJWTSVID(b *testing.B) {
	for _, keyType := range []string{"ec-p256", "ec-p384", "rsa-2048"} {
		b.Run(keyType, func(b *testing.B) {
			key := newAuthorityWith(b, authority.Config{JWTKeyType: keyType}).JWTKey()
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := signer.SignJWTSVID(key, signer.JWTParams{SPIFFEID: id, Audience: []string{"a"}, TTL: 5 * time.Minute, Now: time.Now()}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseCSR is the proof-of-possession check alone: parsing the CSR
// and verifying its signature.
func BenchmarkParseCSR(b *testing.B) {
	der := csrDER(b, ecKey(b), nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := signer.ParseCSR(der); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSignParsedCSR is the signing path after the CSR was checked.
func BenchmarkSignParsedCSR(b *testing.B) {
	a := newAuthority(b, nil)
	c, err := signer.ParseCSR(csrDER(b, ecKey(b), nil))
	if err != nil {
		b.Fatal(err)
	}
	ca := a.X509CA()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := signer.SignX509SVID(ca, signer.X509Params{CSR: c, SPIFFEID: id, TTL: time.Hour, Now: time.Now()}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawCreateCertificateParallel is the raw baseline on every core,
// to set beside the CA's batch path, which also signs on every core.
func BenchmarkRawCreateCertificateParallel(b *testing.B) {
	a := newAuthority(b, nil)
	ca := a.X509CA()
	pub := ecKey(b).Public()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := time.Now()
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(now.UnixNano()), URIs: []*url.URL{id.URL()}, NotBefore: now, NotAfter: now.Add(time.Hour),
				KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				BasicConstraintsValid: true,
			}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Certificate, pub, ca.Signer); err != nil {
				b.Fatal(err)
			}
		}
	})
}
