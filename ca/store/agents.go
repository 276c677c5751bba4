package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// CreateJoinToken stores a join token by its SHA-256 hash: the database
// never holds a usable token.
func (s *Store) CreateJoinToken(ctx context.Context, token, nodeName string, expiresAt time.Time) error {
	h := sha256.Sum256([]byte(token))
	_, err := s.db.ExecContext(ctx, `INSERT INTO join_tokens (token_hash, node_name, expires_at) VALUES (?, ?, ?)`, h[:], nodeName, unix(expiresAt))
	if err != nil {
		return fmt.Errorf("store: create join token: %w", err)
	}
	return nil
}

// ConsumeJoinToken marks token used and returns its node name. A token works
// once, and only before it expires.
func (s *Store) ConsumeJoinToken(ctx context.Context, token string, now time.Time) (string, error) {
	h := sha256.Sum256([]byte(token))
	var node string
	err := s.tx(ctx, func(tx *txn) error {
		var expires int64
		var used sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT node_name, expires_at, used_at FROM join_tokens WHERE token_hash = ?`, h[:]).Scan(&node, &expires, &used)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case used.Valid:
			return ErrTokenUsed
		case unix(now) >= expires:
			return ErrTokenExpired
		}
		_, err = tx.ExecContext(ctx, `UPDATE join_tokens SET used_at = ? WHERE token_hash = ?`, unix(now), h[:])
		return err
	})
	if err != nil {
		return "", fmt.Errorf("store: join token: %w", err)
	}
	return node, nil
}

// JoinToken is a join token as stored: by its hash, never the token.
type JoinToken struct {
	// ID is the first 16 hex digits of the token's SHA-256 hash.
	ID        string
	NodeName  string
	ExpiresAt time.Time
	// UsedAt is zero for an unused token.
	UsedAt time.Time
}

// ListJoinTokens returns the join tokens kept, by expiry.
func (s *Store) ListJoinTokens(ctx context.Context) ([]JoinToken, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT token_hash, node_name, expires_at, used_at FROM join_tokens ORDER BY expires_at, node_name`)
	if err != nil {
		return nil, fmt.Errorf("store: list join tokens: %w", err)
	}
	defer rows.Close()
	var out []JoinToken
	for rows.Next() {
		var h []byte
		var t JoinToken
		var expires int64
		var used sql.NullInt64
		if err := rows.Scan(&h, &t.NodeName, &expires, &used); err != nil {
			return nil, fmt.Errorf("store: list join tokens: %w", err)
		}
		t.ID, t.ExpiresAt = hex.EncodeToString(h)[:16], time.Unix(expires, 0).UTC()
		if used.Valid {
			t.UsedAt = time.Unix(used.Int64, 0).UTC()
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeJoinTokens deletes the unused tokens with ID id, or of node node,
// and returns those it deleted.
func (s *Store) RevokeJoinTokens(ctx context.Context, id, node string) ([]JoinToken, error) {
	var revoked []JoinToken
	err := s.tx(ctx, func(tx *txn) error {
		rows, err := tx.QueryContext(ctx, `SELECT token_hash, node_name FROM join_tokens WHERE used_at IS NULL`)
		if err != nil {
			return err
		}
		var hashes [][]byte
		for rows.Next() {
			var h []byte
			var n string
			if err := rows.Scan(&h, &n); err != nil {
				rows.Close()
				return err
			}
			if tid := hex.EncodeToString(h)[:16]; id != "" && tid == id || node != "" && n == node {
				hashes, revoked = append(hashes, h), append(revoked, JoinToken{ID: tid, NodeName: n})
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, h := range hashes {
			if _, err := tx.ExecContext(ctx, `DELETE FROM join_tokens WHERE token_hash = ?`, h); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: revoke join tokens: %w", err)
	}
	return revoked, nil
}

// PruneJoinTokens deletes tokens that expired before t.
func (s *Store) PruneJoinTokens(ctx context.Context, t time.Time) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM join_tokens WHERE expires_at < ?`, unix(t))
	return err
}

// Agent is an attested node agent as stored.
type Agent struct {
	SPIFFEID        string
	NodeName        string
	AttestationType string
	// Serial is the hex serial of the current SVID; PrevSerial the one it
	// renewed from, still accepted until it expires.
	Serial     string
	PrevSerial string
	ExpiresAt  time.Time
	AttestedAt time.Time
	EvictedAt  time.Time
}

// Evicted reports whether the agent was evicted.
func (a Agent) Evicted() bool { return !a.EvictedAt.IsZero() }

// AcceptsSerial reports whether an SVID with this serial may act for the
// agent.
func (a Agent) AcceptsSerial(serial string) bool {
	return !a.Evicted() && serial != "" && (serial == a.Serial || serial == a.PrevSerial)
}

const agentColumns = `spiffe_id, node_name, attestation_type, serial, prev_serial, expires_at, attested_at, evicted_at`

func scanAgent(row scanner) (Agent, error) {
	var a Agent
	var expires, attested int64
	var evicted sql.NullInt64
	if err := row.Scan(&a.SPIFFEID, &a.NodeName, &a.AttestationType, &a.Serial, &a.PrevSerial, &expires, &attested, &evicted); err != nil {
		return Agent{}, err
	}
	a.ExpiresAt = time.Unix(expires, 0).UTC()
	a.AttestedAt = time.Unix(attested, 0).UTC()
	if evicted.Valid {
		a.EvictedAt = time.Unix(evicted.Int64, 0).UTC()
	}
	return a, nil
}

// RegisterAgent records a newly attested agent, replacing (and so evicting)
// any earlier agent with the same SPIFFE ID. It returns the replaced agent,
// if one was live.
func (s *Store) RegisterAgent(ctx context.Context, a Agent) (*Agent, error) {
	var prev *Agent
	err := s.tx(ctx, func(tx *txn) error {
		old, err := scanAgent(tx.QueryRowContext(ctx, `SELECT `+agentColumns+` FROM agents WHERE spiffe_id = ?`, a.SPIFFEID))
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		case !old.Evicted():
			prev = &old
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO agents (`+agentColumns+`) VALUES (?, ?, ?, ?, '', ?, ?, NULL)
			ON CONFLICT (spiffe_id) DO UPDATE SET node_name = excluded.node_name, attestation_type = excluded.attestation_type,
			serial = excluded.serial, prev_serial = '', expires_at = excluded.expires_at, attested_at = excluded.attested_at, evicted_at = NULL`,
			a.SPIFFEID, a.NodeName, a.AttestationType, a.Serial, unix(a.ExpiresAt), unix(a.AttestedAt))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: register agent: %w", err)
	}
	return prev, nil
}

// FetchAgent returns one agent.
func (s *Store) FetchAgent(ctx context.Context, spiffeID string) (Agent, error) {
	a, err := scanAgent(s.db.QueryRowContext(ctx, `SELECT `+agentColumns+` FROM agents WHERE spiffe_id = ?`, spiffeID))
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("store: agent %q: %w", spiffeID, ErrNotFound)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("store: agent %q: %w", spiffeID, err)
	}
	return a, nil
}

// ListAgents returns every agent, evicted ones included.
func (s *Store) ListAgents(ctx context.Context) ([]Agent, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+agentColumns+` FROM agents ORDER BY spiffe_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list agents: %w", err)
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list agents: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// RenewAgent moves the agent to a new SVID serial if currentSerial is still
// accepted for it.
func (s *Store) RenewAgent(ctx context.Context, spiffeID, currentSerial, newSerial string, expiresAt time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE agents SET prev_serial = serial, serial = ?, expires_at = ?
		WHERE spiffe_id = ? AND evicted_at IS NULL AND (serial = ? OR prev_serial = ?)`,
		newSerial, unix(expiresAt), spiffeID, currentSerial, currentSerial)
	if err != nil {
		return fmt.Errorf("store: renew agent: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("store: renew agent %q: %w", spiffeID, ErrNotFound)
	}
	return nil
}

// EvictAgent marks the agent evicted; its SVIDs are refused from then on.
func (s *Store) EvictAgent(ctx context.Context, spiffeID string, now time.Time) error {
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `UPDATE agents SET evicted_at = ? WHERE spiffe_id = ? AND evicted_at IS NULL`, unix(now), spiffeID)
		if err != nil {
			return fmt.Errorf("store: evict agent: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("store: evict agent %q: %w", spiffeID, ErrNotFound)
		}
		tx.notify(ChangedAgents)
		return nil
	})
}
