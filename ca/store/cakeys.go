package store

import (
	"context"
	"database/sql"
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

const (
	bundleSequenceKey = "bundle_sequence"
	// caKeysVersionKey counts the saves of the CA keys, so that a replica
	// storing keys it derived from an older set gets ErrConflict.
	caKeysVersionKey = "ca_keys_version"
)

// LoadCAKeys returns every stored CA key and the trust bundle's sequence
// number, read in one snapshot. SaveCAKeys stores only on top of what this
// Store last loaded or saved.
func (s *Store) LoadCAKeys(ctx context.Context) ([]CAKey, uint64, error) {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
	}
	defer tx.Rollback()
	var seq uint64
	if v, err := getMeta(ctx, tx, bundleSequenceKey); err != nil {
		return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
	} else if v != "" {
		fmt.Sscan(v, &seq)
	}
	version, err := getMeta(ctx, tx, caKeysVersionKey)
	if err != nil {
		return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, kind, state, parent_id, key_pem, key_uri, cert_der, not_before, not_after, activated_at, chained_until FROM ca_keys ORDER BY not_before, id`)
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
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("store: load CA keys: %w", err)
	}
	s.setCAKeysVersion(version)
	return out, seq, nil
}

func (s *Store) setCAKeysVersion(v string) {
	s.caKeysMu.Lock()
	s.caKeysVersion = v
	s.caKeysMu.Unlock()
}

// SaveCAKeys replaces the stored CA keys and the bundle sequence number.
// It returns ErrConflict if another replica saved keys since this Store
// last loaded or saved them.
func (s *Store) SaveCAKeys(ctx context.Context, keys []CAKey, bundleSequence uint64) error {
	s.caKeysMu.Lock()
	defer s.caKeysMu.Unlock()
	var next string
	err := s.tx(ctx, func(tx *txn) error {
		cur, err := getMeta(ctx, tx, caKeysVersionKey)
		if err != nil {
			return err
		}
		if cur != s.caKeysVersion {
			return ErrConflict
		}
		var n int64
		fmt.Sscan(cur, &n)
		next = fmt.Sprint(n + 1)
		if err := putMeta(ctx, tx, caKeysVersionKey, next); err != nil {
			return err
		}
		tx.notify(ChangedCAKeys)
		if _, err := tx.ExecContext(ctx, `DELETE FROM ca_keys`); err != nil {
			return err
		}
		if err := putMeta(ctx, tx, bundleSequenceKey, fmt.Sprint(bundleSequence)); err != nil {
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
	s.caKeysVersion = next
	return nil
}
