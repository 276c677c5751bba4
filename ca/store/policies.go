package store

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// PutPolicy creates or replaces the access policy of its name (already
// validated) and returns it with its revision.
func (s *Store) PutPolicy(ctx context.Context, p *typesv1.AccessPolicy) (*typesv1.AccessPolicy, error) {
	p = proto.CloneOf(p)
	err := s.tx(ctx, func(tx *txn) error {
		rev, err := bumpRevision(ctx, tx)
		if err != nil {
			return err
		}
		p.Revision = rev
		tx.notify(ChangedPolicies)
		raw, err := proto.Marshal(p)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO access_policies (name, policy, revision) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET policy = excluded.policy, revision = excluded.revision`, p.GetName(), raw, rev)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: put policy: %w", err)
	}
	return p, nil
}

// DeletePolicy deletes the policy of this name.
func (s *Store) DeletePolicy(ctx context.Context, name string) error {
	err := s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM access_policies WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		tx.notify(ChangedPolicies)
		_, err = bumpRevision(ctx, tx)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("store: delete policy: %w", err)
	}
	return err
}

// ListPolicies returns every policy, by name.
func (s *Store) ListPolicies(ctx context.Context) ([]*typesv1.AccessPolicy, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT policy FROM access_policies ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("store: list policies: %w", err)
	}
	defer rows.Close()
	var out []*typesv1.AccessPolicy
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, err
		}
		p := &typesv1.AccessPolicy{}
		if err := proto.Unmarshal(raw, p); err != nil {
			return nil, fmt.Errorf("store: policy: %w", err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}
