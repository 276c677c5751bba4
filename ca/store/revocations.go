package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// PutRevocation stores a revocation (already validated, its ID and times
// set) and returns it with its revision.
func (s *Store) PutRevocation(ctx context.Context, r *typesv1.Revocation) (*typesv1.Revocation, error) {
	r = proto.CloneOf(r)
	err := s.tx(ctx, func(tx *txn) error {
		rev, err := bumpRevision(ctx, tx)
		if err != nil {
			return err
		}
		r.Revision = rev
		tx.notify(ChangedRevocations)
		raw, err := proto.Marshal(r)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO revocations (id, revocation, expires_at) VALUES (?, ?, ?)`, r.GetId(), raw, r.GetExpiresAt())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: put revocation: %w", err)
	}
	return r, nil
}

// DeleteRevocation withdraws the revocation of this ID.
func (s *Store) DeleteRevocation(ctx context.Context, id string) error {
	err := s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM revocations WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		tx.notify(ChangedRevocations)
		_, err = bumpRevision(ctx, tx)
		return err
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("store: delete revocation: %w", err)
	}
	return err
}

// ListRevocations returns the revocations in force at now, oldest first.
func (s *Store) ListRevocations(ctx context.Context, now time.Time) ([]*typesv1.Revocation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT revocation FROM revocations WHERE expires_at > ?`, now.Unix())
	if err != nil {
		return nil, fmt.Errorf("store: list revocations: %w", err)
	}
	defer rows.Close()
	var out []*typesv1.Revocation
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, err
		}
		r := &typesv1.Revocation{}
		if err := proto.Unmarshal(raw, r); err != nil {
			return nil, fmt.Errorf("store: revocation: %w", err)
		}
		out = append(out, r)
	}
	// Each revocation took a revision of its own when it was stored.
	slices.SortFunc(out, func(a, b *typesv1.Revocation) int { return cmp.Compare(a.GetRevision(), b.GetRevision()) })
	return out, rows.Err()
}

// PruneRevocations deletes the revocations that expired by now and
// returns their IDs.
func (s *Store) PruneRevocations(ctx context.Context, now time.Time) ([]string, error) {
	var ids []string
	err := s.tx(ctx, func(tx *txn) error {
		rows, err := tx.QueryContext(ctx, `DELETE FROM revocations WHERE expires_at <= ? RETURNING id`, now.Unix())
		if err != nil {
			return err
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) > 0 {
			tx.notify(ChangedRevocations)
			_, err = bumpRevision(ctx, tx)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: prune revocations: %w", err)
	}
	return ids, nil
}
