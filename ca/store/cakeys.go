package store

import (
	"context"
	"fmt"
	"time"
)

// CAKey is one signing key of the CA and, for X.509 kinds, its certificate.
type CAKey struct {
	ID string
	// Kind is "x509_root", "x509_intermediate" or "jwt".
	Kind string
	// State is "prepared", "active" or "old".
	State string
	// ParentID is the root that signed an intermediate.
	ParentID string
	// KeyPEM is the private key, for keys of the in-process KMS; empty when
	// the key lives in an external KMS.
	KeyPEM []byte
	// KeyURI names the key in an external KMS (go.step.sm/crypto/kms URI,
	// such as awskms:key-id=...); empty for in-process keys.
	KeyURI      string
	CertDER     []byte
	NotBefore   time.Time
	NotAfter    time.Time
	ActivatedAt time.Time
	// ChainedUntil is, for a root, the latest expiry of anything it signed.
	ChainedUntil time.Time
}

const bundleSequenceKey = "bundle_sequence"

// LoadCAKeys returns every stored CA key and the trust bundle's sequence
// number.
func (s *Store) LoadCAKeys(ctx context.Context) ([]CAKey, uint64, error) {
	var seq uint64
	if v, err := s.Meta(ctx, bundleSequenceKey); err != nil {
		return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
	} else if v != "" {
		fmt.Sscan(v, &seq)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, kind, state, parent_id, key_pem, key_uri, cert_der, not_before, not_after, activated_at, chained_until FROM ca_keys ORDER BY not_before, id`)
	if err != nil {
		return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
	}
	defer rows.Close()
	var out []CAKey
	for rows.Next() {
		var k CAKey
		var nb, na, act, chained int64
		if err := rows.Scan(&k.ID, &k.Kind, &k.State, &k.ParentID, &k.KeyPEM, &k.KeyURI, &k.CertDER, &nb, &na, &act, &chained); err != nil {
			return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
		}
		k.NotBefore, k.NotAfter = time.Unix(nb, 0).UTC(), time.Unix(na, 0).UTC()
		if act != 0 {
			k.ActivatedAt = time.Unix(act, 0).UTC()
		}
		if chained != 0 {
			k.ChainedUntil = time.Unix(chained, 0).UTC()
		}
		out = append(out, k)
	}
	return out, seq, rows.Err()
}

// SaveCAKeys replaces the stored CA keys and bundle sequence, atomically.
func (s *Store) SaveCAKeys(ctx context.Context, keys []CAKey, bundleSequence uint64) error {
	err := s.tx(ctx, func(tx *txn) error {
		tx.notify(ChangedCAKeys)
		if _, err := tx.ExecContext(ctx, `DELETE FROM ca_keys`); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`,
			bundleSequenceKey, fmt.Sprint(bundleSequence)); err != nil {
			return err
		}
		for _, k := range keys {
			var act, chained int64
			if !k.ActivatedAt.IsZero() {
				act = unix(k.ActivatedAt)
			}
			if !k.ChainedUntil.IsZero() {
				chained = unix(k.ChainedUntil)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO ca_keys (id, kind, state, parent_id, key_pem, key_uri, cert_der, not_before, not_after, activated_at, chained_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				k.ID, k.Kind, k.State, k.ParentID, nonNil(k.KeyPEM), k.KeyURI, k.CertDER, unix(k.NotBefore), unix(k.NotAfter), act, chained); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: save CA keys: %w", err)
	}
	return nil
}
