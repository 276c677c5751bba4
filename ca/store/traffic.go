package store

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// maxAnomalies is how many anomalies the store keeps; older ones go.
const maxAnomalies = 100_000

// SaveTrafficProfiles stores profiles (each an encoded profile, by
// server), replacing those of the same servers.
func (s *Store) SaveTrafficProfiles(ctx context.Context, profiles map[string][]byte) error {
	err := s.tx(ctx, func(tx *txn) error {
		for server, p := range profiles {
			if _, err := tx.ExecContext(ctx, `INSERT INTO traffic_profiles (server, profile) VALUES (?, ?)
				ON CONFLICT (server) DO UPDATE SET profile = excluded.profile`, server, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: save traffic profiles: %w", err)
	}
	return nil
}

// LoadTrafficProfiles returns every stored profile, by server.
func (s *Store) LoadTrafficProfiles(ctx context.Context) (map[string][]byte, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT server, profile FROM traffic_profiles`)
	if err != nil {
		return nil, fmt.Errorf("store: load traffic profiles: %w", err)
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var server string
		var p []byte
		if err := rows.Scan(&server, &p); err != nil {
			return nil, err
		}
		out[server] = p
	}
	return out, rows.Err()
}

// PutAnomalies stores anomalies, and drops the oldest past the store's
// bound.
func (s *Store) PutAnomalies(ctx context.Context, as []*typesv1.Anomaly) error {
	err := s.tx(ctx, func(tx *txn) error {
		for _, a := range as {
			raw, err := proto.Marshal(a)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO anomalies (at, anomaly) VALUES (?, ?)`, a.GetAt(), raw); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM anomalies WHERE id <= (SELECT MAX(id) FROM anomalies) - ?`, maxAnomalies)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: put anomalies: %w", err)
	}
	return nil
}

// ListAnomalies returns the anomalies seen at or after since, oldest
// first, of server if it is not empty.
func (s *Store) ListAnomalies(ctx context.Context, since time.Time, server string) ([]*typesv1.Anomaly, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT anomaly FROM anomalies WHERE at >= ? ORDER BY at, id`, since.Unix())
	if err != nil {
		return nil, fmt.Errorf("store: list anomalies: %w", err)
	}
	defer rows.Close()
	var out []*typesv1.Anomaly
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, err
		}
		a := &typesv1.Anomaly{}
		if err := proto.Unmarshal(raw, a); err != nil {
			return nil, fmt.Errorf("store: anomaly: %w", err)
		}
		if server == "" || a.GetServer() == server {
			out = append(out, a)
		}
	}
	return out, rows.Err()
}

// shardTTL is how long counts handed to the leader wait for it: past it
// (no replica led for that long) they are dropped; they are statistics.
const shardTTL = time.Hour

// PutTrafficShard stores counts (encoded) that replica hands to the
// leader, announced to the replicas, and drops those older than shardTTL.
func (s *Store) PutTrafficShard(ctx context.Context, replica string, counts []byte, now time.Time) error {
	err := s.tx(ctx, func(tx *txn) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO traffic_shards (replica, created_at, counts) VALUES (?, ?, ?)`, replica, now.Unix(), counts); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM traffic_shards WHERE created_at < ?`, now.Add(-shardTTL).Unix()); err != nil {
			return err
		}
		tx.notify(ChangedTraffic)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: put traffic shard: %w", err)
	}
	return nil
}

// TakeTrafficShards returns every stored shard's counts, oldest first,
// and deletes them, in one transaction: each shard is taken once.
func (s *Store) TakeTrafficShards(ctx context.Context) ([][]byte, error) {
	var out [][]byte
	err := s.tx(ctx, func(tx *txn) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT id, counts FROM traffic_shards ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		var last int64
		for rows.Next() {
			var c []byte
			if err := rows.Scan(&last, &c); err != nil {
				return err
			}
			out = append(out, c)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		if len(out) == 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM traffic_shards WHERE id <= ?`, last)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: take traffic shards: %w", err)
	}
	return out, nil
}
