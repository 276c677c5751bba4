package store

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// PutBundleAck stores what an agent last acknowledged holding, replacing
// what it acknowledged before.
func (s *Store) PutBundleAck(ctx context.Context, ack *typesv1.BundleAck) error {
	raw, err := proto.Marshal(ack)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO bundle_acks (agent_id, ack, acked_at) VALUES (?, ?, ?)
		ON CONFLICT (agent_id) DO UPDATE SET ack = excluded.ack, acked_at = excluded.acked_at`, ack.GetAgentId(), raw, ack.GetAckedAt())
	if err != nil {
		return fmt.Errorf("store: put bundle ack: %w", err)
	}
	return nil
}

// ListBundleAcks returns every agent's last acknowledgement, by agent ID.
func (s *Store) ListBundleAcks(ctx context.Context) ([]*typesv1.BundleAck, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT ack FROM bundle_acks ORDER BY agent_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list bundle acks: %w", err)
	}
	defer rows.Close()
	var out []*typesv1.BundleAck
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, err
		}
		a := &typesv1.BundleAck{}
		if err := proto.Unmarshal(raw, a); err != nil {
			return nil, fmt.Errorf("store: bundle ack: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// PruneBundleAcks forgets the acknowledgements older than before (agents
// long gone).
func (s *Store) PruneBundleAcks(ctx context.Context, before time.Time) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM bundle_acks WHERE acked_at < ?`, before.Unix())
	if err != nil {
		return fmt.Errorf("store: prune bundle acks: %w", err)
	}
	return nil
}
