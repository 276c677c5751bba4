package store

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// PutFederation stores a federated trust domain, replacing the one of the
// same name.
func (s *Store) PutFederation(ctx context.Context, f *typesv1.FederatedTrustDomain) error {
	b, err := proto.Marshal(f)
	if err != nil {
		return err
	}
	err = s.tx(ctx, func(tx *txn) error {
		tx.notify(ChangedFederations)
		_, err := tx.ExecContext(ctx, `INSERT INTO federations (trust_domain, federation) VALUES (?, ?)
		ON CONFLICT (trust_domain) DO UPDATE SET federation = excluded.federation`, f.GetTrustDomain(), b)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: put federation %s: %w", f.GetTrustDomain(), err)
	}
	return nil
}

// ListFederations returns every federated trust domain, by name.
func (s *Store) ListFederations(ctx context.Context) ([]*typesv1.FederatedTrustDomain, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT trust_domain, federation FROM federations ORDER BY trust_domain`)
	if err != nil {
		return nil, fmt.Errorf("store: list federations: %w", err)
	}
	defer rows.Close()
	var out []*typesv1.FederatedTrustDomain
	for rows.Next() {
		var td string
		var b []byte
		if err := rows.Scan(&td, &b); err != nil {
			return nil, fmt.Errorf("store: list federations: %w", err)
		}
		f := &typesv1.FederatedTrustDomain{}
		if err := proto.Unmarshal(b, f); err != nil {
			return nil, fmt.Errorf("store: federation %s: %w", td, err)
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// DeleteFederation forgets a federated trust domain.
func (s *Store) DeleteFederation(ctx context.Context, td string) error {
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM federations WHERE trust_domain = ?`, td)
		if err != nil {
			return fmt.Errorf("store: delete federation %s: %w", td, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("store: federation %q: %w", td, ErrNotFound)
		}
		tx.notify(ChangedFederations)
		return nil
	})
}
