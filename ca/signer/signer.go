// Package signer turns checked requests into SVIDs: X509-SVIDs from CSRs
// and JWT-SVIDs, each per its SPIFFE specification.
package signer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/jose"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/signet-id/signet/ca/authority"
	"github.com/signet-id/signet/internal/clock"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Backdate is how far NotBefore is set in the past, for clock skew: an
// SVID issued at t has NotBefore t - Backdate.
const Backdate = clock.Backdate

// CSRError is a refusal of a certificate request; its text is safe to return
// to the caller.
type CSRError struct{ Reason string }

func (e *CSRError) Error() string { return "csr: " + e.Reason }

func csrErr(format string, args ...any) error {
	return &CSRError{Reason: fmt.Sprintf(format, args...)}
}

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// ParseCSR parses a DER PKCS#10 request, checks its signature and key, and
// refuses requests that ask to be a CA.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, csrErr("empty")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, csrErr("malformed: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, csrErr("bad signature: %v", err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	for _, ext := range csr.Extensions {
		if ext.Id.Equal(oidBasicConstraints) {
			var bc struct {
				IsCA bool `asn1:"optional"`
			}
			if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil || bc.IsCA {
				return nil, csrErr("requests a CA certificate (basicConstraints CA=true)")
			}
		}
	}
	return csr, nil
}

func checkKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return csrErr("ECDSA key on %s; want P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return csrErr("RSA key of %d bits; want at least 2048", k.N.BitLen())
		}
	default:
		return csrErr("key type %T is not allowed; want ECDSA P-256/P-384, Ed25519 or RSA >= 2048", pub)
	}
	return nil
}

// checkSANs allows a CSR whose SANs are empty or exactly what the entry
// gives: the one SPIFFE ID and the entry's DNS names.
func checkSANs(csr *x509.CertificateRequest, id spiffeid.ID, dnsNames []string) error {
	if len(csr.EmailAddresses) > 0 || len(csr.IPAddresses) > 0 {
		return csrErr("email or IP SANs are not allowed")
	}
	if len(csr.URIs) == 0 && len(csr.DNSNames) == 0 {
		return nil
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		return csrErr("URI SANs %v do not equal the entry's SPIFFE ID %s", csr.URIs, id)
	}
	want := slices.Clone(dnsNames)
	got := slices.Clone(csr.DNSNames)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		return csrErr("DNS SANs %v do not equal the entry's %v", csr.DNSNames, dnsNames)
	}
	return nil
}

// X509Params describes one X509-SVID to sign.
type X509Params struct {
	// CSR is the workload's request, whose SANs must be exactly the
	// SPIFFE ID and DNS names. Without one, PublicKey is signed: a key
	// whose possession someone else checked (a PodCertificateRequest's,
	// which the API server verified).
	CSR       *x509.CertificateRequest
	PublicKey crypto.PublicKey
	SPIFFEID  spiffeid.ID
	DNSNames  []string
	TTL       time.Duration
	Now       time.Time
	// Units go into the subject's organizational units (what the CA
	// binds the SVID to beyond its SPIFFE ID, such as an agent's pod).
	Units []string
	// NotBeforeAtLeast, if later than Now - Backdate, is the SVID's
	// NotBefore: a revocation of the SPIFFE ID covers SVIDs with an
	// earlier one (typesv1.Revocation.not_before_under).
	NotBeforeAtLeast time.Time
}

// NotBefore is the NotBefore an SVID signed with p gets.
func NotBefore(p X509Params) time.Time { return notBefore(p) }

func notBefore(p X509Params) time.Time {
	nb := p.Now.Add(-Backdate)
	if p.NotBeforeAtLeast.After(nb) && !p.NotBeforeAtLeast.After(p.Now) {
		return p.NotBeforeAtLeast
	}
	return nb
}

// SignX509SVID signs an X509-SVID for p with ca and returns the SVID and
// the intermediate. The lifetime is p.TTL capped by ca's remaining life.
func SignX509SVID(ca *authority.X509CA, p X509Params) ([]*x509.Certificate, error) {
	pub := p.PublicKey
	if p.CSR != nil {
		if err := checkSANs(p.CSR, p.SPIFFEID, p.DNSNames); err != nil {
			return nil, err
		}
		pub = p.CSR.PublicKey
	}
	if pub == nil {
		return nil, errors.New("signer: no CSR and no public key")
	}
	if p.TTL <= 0 {
		return nil, errors.New("signer: TTL must be positive")
	}
	notAfter := p.Now.Add(p.TTL)
	if caEnd := ca.Certificate.NotAfter; notAfter.After(caEnd) {
		notAfter = caEnd
	}
	if !notAfter.After(p.Now) {
		return nil, errors.New("signer: signing CA has expired")
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"Signet"}, OrganizationalUnit: p.Units},
		URIs:                  []*url.URL{p.SPIFFEID.URL()},
		DNSNames:              p.DNSNames,
		NotBefore:             notBefore(p),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		PublicKey:             pub,
	}
	if len(p.DNSNames) > 0 {
		tmpl.Subject.CommonName = p.DNSNames[0]
	}
	// RSA keys need keyEncipherment for TLS 1.2 RSA key exchange.
	if _, ok := pub.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	resp, err := ca.CAS.CreateCertificate(&apiv1.CreateCertificateRequest{
		Template: tmpl,
		Lifetime: notAfter.Sub(p.Now),
	})
	if err != nil {
		return nil, fmt.Errorf("signer: sign X509-SVID for %s: %w", p.SPIFFEID, err)
	}
	return append([]*x509.Certificate{resp.Certificate}, resp.CertificateChain...), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	return n
}

// JWTParams describes one JWT-SVID to sign.
type JWTParams struct {
	SPIFFEID spiffeid.ID
	Audience []string
	TTL      time.Duration
	Now      time.Time
	// Issuer, if set, is the token's iss: the CA's OIDC issuer, which
	// relying parties outside SPIFFE (cloud IAM, the Kubernetes API)
	// require.
	Issuer string
}

// SignJWTSVID signs a JWT-SVID (ES256, ES384 or RS256 by the key's type)
// with key and returns it and its
// expiry, capped by the key's own.
func SignJWTSVID(key authority.JWTKey, p JWTParams) (string, time.Time, error) {
	if len(p.Audience) == 0 {
		return "", time.Time{}, errors.New("signer: JWT-SVID needs at least one audience")
	}
	for _, a := range p.Audience {
		if a == "" {
			return "", time.Time{}, errors.New("signer: empty audience")
		}
	}
	exp := p.Now.Add(p.TTL)
	if exp.After(key.NotAfter) {
		exp = key.NotAfter
	}
	if !exp.After(p.Now) {
		return "", time.Time{}, errors.New("signer: JWT signing key has expired")
	}
	sig, err := jwsSigner(key, "JWT")
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signer: %w", err)
	}
	claims := jose.Claims{
		Issuer:   p.Issuer,
		Subject:  p.SPIFFEID.String(),
		Audience: jose.Audience(p.Audience),
		Expiry:   jose.NewNumericDate(exp),
		IssuedAt: jose.NewNumericDate(p.Now),
	}
	tok, err := jose.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("signer: sign JWT-SVID for %s: %w", p.SPIFFEID, err)
	}
	return tok, exp.Truncate(time.Second), nil
}

// jwsSigner signs compact JWS of type typ with key, in the algorithm of
// the key's type, naming the key by its ID.
func jwsSigner(key authority.JWTKey, typ string) (jose.Signer, error) {
	alg, err := authority.JWTAlgorithm(key.Signer.Public())
	if err != nil {
		return nil, err
	}
	return jose.NewSigner(jose.SigningKey{
		Algorithm: jose.SignatureAlgorithm(alg),
		Key:       jose.JSONWebKey{Key: jose.NewOpaqueSigner(key.Signer), KeyID: key.ID},
	}, (&jose.SignerOptions{}).WithType(jose.ContentType(typ)))
}

// DenyListType is the JWS "typ" of a signed deny list.
const DenyListType = "signet-deny-list+jws"

// DenyListTTL is how long a signed deny list is valid; the CA signs a new
// one at half that, or when the revocations change.
const DenyListTTL = 24 * time.Hour

// DenyList is the payload of a signed deny list.
type DenyList struct {
	TrustDomain string `json:"trust_domain"`
	IssuedAt    int64  `json:"iat"`
	Expiry      int64  `json:"exp"`
	// Revocations in force, in their protojson form (serial, spiffe_id,
	// agent_id, not_before_under, expires_at...).
	Revocations []json.RawMessage `json:"revocations"`
}

// SignDenyList signs the revocations in force with the JWT-SVID key, as a
// compact JWS that any holder of the trust bundle can verify offline.
func SignDenyList(key authority.JWTKey, td spiffeid.TrustDomain, revs []*typesv1.Revocation, now time.Time) (string, error) {
	exp := now.Add(DenyListTTL)
	if exp.After(key.NotAfter) {
		exp = key.NotAfter
	}
	list := DenyList{TrustDomain: td.Name(), IssuedAt: now.Unix(), Expiry: exp.Unix(), Revocations: []json.RawMessage{}}
	for _, r := range revs {
		raw, err := protojson.Marshal(r)
		if err != nil {
			return "", err
		}
		list.Revocations = append(list.Revocations, raw)
	}
	payload, err := json.Marshal(list)
	if err != nil {
		return "", err
	}
	sig, err := jwsSigner(key, DenyListType)
	if err != nil {
		return "", fmt.Errorf("signer: %w", err)
	}
	jws, err := sig.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("signer: deny list: %w", err)
	}
	return jws.CompactSerialize()
}
