package authority

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awskmssdk "github.com/aws/aws-sdk-go-v2/service/kms"
	"go.step.sm/crypto/kms"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	_ "go.step.sm/crypto/kms/awskms" // registers awskms: for --kms
	"go.step.sm/crypto/kms/softkms"
	"go.step.sm/crypto/kms/uri"
)

// keyManager is where the CA's private keys live: the in-process softkms,
// whose keys are stored (PEM) with their certificates, or an external KMS
// that keeps them and is asked to sign, whose keys are stored by name only.
type keyManager struct {
	kms.KeyManager
	// uri is the external KMS ("awskms:region=eu-west-1"); empty for softkms.
	uri string
	// prefix starts every key name: signet-<trust domain>.
	prefix string
	// delete removes a retired key from the external KMS; nil for softkms.
	delete func(ctx context.Context, name string) error
}

// externalKMSTypes are the KMS types --kms accepts: those whose keys can be
// named by the CA and shared by its replicas, and that are compiled in.
var externalKMSTypes = []kmsapi.Type{kmsapi.AmazonKMS}

func openKeyManager(ctx context.Context, kmsURI string, td string) (*keyManager, error) {
	if kmsURI == "" {
		return &keyManager{KeyManager: &softkms.SoftKMS{}}, nil
	}
	typ, err := kmsapi.TypeOf(kmsURI)
	if err != nil {
		return nil, fmt.Errorf("authority: kms %q: %w", redactURI(kmsURI), err)
	}
	if typ != kmsapi.AmazonKMS {
		return nil, fmt.Errorf("authority: kms type %q is not supported (supported: %v)", typ, externalKMSTypes)
	}
	km, err := kms.New(ctx, kmsapi.Options{URI: kmsURI})
	if err != nil {
		return nil, fmt.Errorf("authority: kms %s: %w", redactURI(kmsURI), err)
	}
	del, err := awsKeyDeleter(ctx, kmsURI)
	if err != nil {
		km.Close()
		return nil, err
	}
	// AWS alias names allow letters, digits, '/', '_' and '-'.
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, td)
	return &keyManager{KeyManager: km, uri: kmsURI, prefix: "signet-" + clean, delete: del}, nil
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
	req.Name = uri.New("awskms", url.Values{"name": []string{name}}).String()
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
	t, err := kmsapi.TypeOf(keyURI)
	if err != nil || t != kmsapi.AmazonKMS {
		return nil, fmt.Errorf("the key lives in a KMS this CA is not configured for (%s)", keyURI)
	}
	return m.CreateSigner(&kmsapi.CreateSignerRequest{SigningKey: keyURI})
}

// awsKeyDeleter schedules deletion of retired keys: AWS KMS bills every key
// kept, and the CA makes a new intermediate key at each rotation.
// go.step.sm/crypto's awskms has no deletion, so this uses the AWS SDK it is
// built on, configured from the same URI and environment.
func awsKeyDeleter(ctx context.Context, kmsURI string) (func(context.Context, string) error, error) {
	u, err := uri.ParseWithScheme(string(kmsapi.AmazonKMS), kmsURI)
	if err != nil {
		return nil, fmt.Errorf("authority: kms: %w", err)
	}
	var opts []func(*awsconfig.LoadOptions) error
	if v := u.Get("profile"); v != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(v))
	}
	if v := u.Get("region"); v != "" {
		opts = append(opts, awsconfig.WithRegion(v))
	}
	if v := u.Get("credentials-file"); v != "" {
		opts = append(opts, awsconfig.WithSharedConfigFiles([]string{v}))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("authority: kms: AWS configuration: %w", err)
	}
	client := awskmssdk.NewFromConfig(cfg)
	return func(ctx context.Context, name string) error {
		ku, err := uri.ParseWithScheme(string(kmsapi.AmazonKMS), name)
		if err != nil {
			return err
		}
		id := ku.Get("key-id")
		if id == "" {
			return errors.New("no key-id in the key's name")
		}
		// Seven days, the shortest AWS allows: the key can still be
		// restored (CancelKeyDeletion) if it was retired by mistake.
		_, err = client.ScheduleKeyDeletion(ctx, &awskmssdk.ScheduleKeyDeletionInput{KeyId: aws.String(id), PendingWindowInDays: aws.Int32(7)})
		return err
	}, nil
}

// redactURI drops the query of a KMS URI, where PINs and secrets may be.
func redactURI(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}
