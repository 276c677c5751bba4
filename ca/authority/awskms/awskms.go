// Package awskms opens AWS KMS for the CA's keys: go.step.sm/crypto's
// awskms key manager for creating keys and signing, and the AWS SDK for
// scheduling the deletion of retired keys, which that key manager lacks.
// signet-ca links it; programs without --kms (signet dev) do not.
package awskms

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	awskmssdk "github.com/aws/aws-sdk-go-v2/service/kms"
	"go.step.sm/crypto/kms"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	_ "go.step.sm/crypto/kms/awskms" // registers awskms:
	"go.step.sm/crypto/kms/uri"

	"github.com/signet-id/signet/ca/authority"
)

// Open opens the AWS KMS of an awskms: URI (awskms:region=eu-west-1).
func Open(ctx context.Context, kmsURI string) (*authority.ExternalKMS, error) {
	typ, err := kmsapi.TypeOf(kmsURI)
	if err != nil {
		return nil, err
	}
	if typ != kmsapi.AmazonKMS {
		return nil, fmt.Errorf("kms type %q is not supported (supported: %s)", typ, kmsapi.AmazonKMS)
	}
	km, err := kms.New(ctx, kmsapi.Options{URI: kmsURI})
	if err != nil {
		return nil, err
	}
	del, err := keyDeleter(ctx, kmsURI)
	if err != nil {
		km.Close()
		return nil, err
	}
	return &authority.ExternalKMS{KeyManager: km, Scheme: string(kmsapi.AmazonKMS), Delete: del}, nil
}

// keyDeleter schedules deletion of retired keys: AWS KMS bills every key
// kept, and the CA makes a new intermediate key at each rotation.
// go.step.sm/crypto's awskms has no deletion, so this uses the AWS SDK it is
// built on, configured from the same URI and environment.
func keyDeleter(ctx context.Context, kmsURI string) (func(context.Context, string) error, error) {
	u, err := uri.ParseWithScheme(string(kmsapi.AmazonKMS), kmsURI)
	if err != nil {
		return nil, fmt.Errorf("kms: %w", err)
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
		return nil, fmt.Errorf("AWS configuration: %w", err)
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
