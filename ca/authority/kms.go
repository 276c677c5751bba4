package authority

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.step.sm/crypto/kms"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/softkms"
	"go.step.sm/crypto/kms/uri"
)

// ExternalKMS is a KMS outside the process that keeps the CA's keys and is
// asked to sign (ca/authority/awskms opens AWS KMS).
type ExternalKMS struct {
	kms.KeyManager
	// Scheme starts the URIs of its keys ("awskms").
	Scheme string
	// Delete schedules the deletion of a retired key (by its URI); nil if
	// the KMS cannot.
	Delete func(ctx context.Context, keyURI string) error
}

// KMSOpener opens the external KMS of a --kms URI. A program without one
// (signet dev) links no KMS client.
type KMSOpener func(ctx context.Context, uri string) (*ExternalKMS, error)

// keyManager is where the CA's private keys live: the in-process softkms,
// whose keys are stored (PEM) with their certificates, or an external KMS
// that keeps them and is asked to sign, whose keys are stored by name only.
type keyManager struct {
	kms.KeyManager
	// uri is the external KMS ("awskms:region=eu-west-1"); empty for softkms.
	uri string
	// scheme starts the URIs of the external KMS's keys.
	scheme string
	// prefix starts every key name: signet-<trust domain>.
	prefix string
	// delete removes a retired key from the external KMS; nil for softkms.
	delete func(ctx context.Context, name string) error
}

func openKeyManager(ctx context.Context, kmsURI string, td string, open KMSOpener) (*keyManager, error) {
	if kmsURI == "" {
		return &keyManager{KeyManager: &softkms.SoftKMS{}}, nil
	}
	if open == nil {
		return nil, fmt.Errorf("authority: kms %s: this program has no external KMS support (run signet-ca)", redactURI(kmsURI))
	}
	ext, err := open(ctx, kmsURI)
	if err != nil {
		return nil, fmt.Errorf("authority: kms %s: %w", redactURI(kmsURI), err)
	}
	// Key names allow letters, digits, '/', '_' and '-' (AWS aliases).
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, td)
	return &keyManager{KeyManager: ext.KeyManager, uri: kmsURI, scheme: ext.Scheme, prefix: "signet-" + clean, delete: ext.Delete}, nil
}

// external reports whether keys live outside the process.
func (m *keyManager) external() bool { return m.uri != "" }

// createKeyRequest names a new key for the external KMS; kind says what it
// is for, so that an operator browsing the KMS knows.
func (m *keyManager) createKeyRequest(req *kmsapi.CreateKeyRequest, kind string) *kmsapi.CreateKeyRequest {
	if !m.external() {
		return req
	}
	var r [8]byte
	rand.Read(r[:])
	name := fmt.Sprintf("%s-%s-%s-%s", m.prefix, strings.ReplaceAll(kind, "_", "-"), time.Now().UTC().Format("20060102T150405"), hex.EncodeToString(r[:]))
	req.Name = uri.New(m.scheme, url.Values{"name": []string{name}}).String()
	return req
}

// signer opens a stored key: PEM in the store, or a name in the KMS.
func (m *keyManager) signer(keyURI string, keyPEM []byte) (crypto.Signer, error) {
	if keyURI == "" {
		return parsePEMSigner(keyPEM)
	}
	if !m.external() {
		return nil, fmt.Errorf("the key lives in a KMS (%s) and signet-ca was started without --kms", keyURI)
	}
	if !strings.HasPrefix(keyURI, m.scheme+":") {
		return nil, fmt.Errorf("the key lives in a KMS this CA is not configured for (%s)", keyURI)
	}
	return m.CreateSigner(&kmsapi.CreateSignerRequest{SigningKey: keyURI})
}

// redactURI drops the query of a KMS URI, where PINs and secrets may be.
func redactURI(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}
