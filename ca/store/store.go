// Package store keeps the CA's state in SQL: entries, join tokens, agents,
// CA keys and the revision counter. The embedded default is SQLite (pure Go,
// WAL, synchronous commits), so an acknowledged write survives kill -9.
// Several CA replicas share one PostgreSQL database instead: the same
// schema and behaviour, writers serialized by an advisory lock, changes
// announced to the other replicas with NOTIFY, and the leader chosen by
// another advisory lock.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/signet-id/signet/internal/datadir"
)

// Typed errors callers branch on; the API turns them into gRPC codes.
var (
	ErrNotFound     = errors.New("not found")
	ErrTokenUsed    = errors.New("join token already used")
	ErrTokenExpired = errors.New("join token expired")
	// ErrConflict: the stored state changed since it was read.
	ErrConflict = errors.New("conflicting write")
)

// ConflictError reports a write that would duplicate an existing row.
type ConflictError struct{ Msg string }

func (e *ConflictError) Error() string { return e.Msg }

// Store is the SQL state of one CA. It is safe for concurrent use.
type Store struct {
	db *db
	// dsn is the PostgreSQL connection string, for the connections that
	// listen and hold the leader lock; it may hold a password and is never
	// logged.
	dsn string

	// caKeysVersion is the version of the CA keys this Store last loaded
	// or saved.
	caKeysMu      sync.Mutex
	caKeysVersion string
}

// IsPostgres says whether location names a PostgreSQL database
// (postgres:// or postgresql://) rather than a SQLite file.
func IsPostgres(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}

// Open opens the store at location, a PostgreSQL URL or the path of a
// SQLite database (created if needed), and applies migrations.
func Open(ctx context.Context, location string) (*Store, error) {
	if IsPostgres(location) {
		return openPostgres(ctx, location)
	}
	return openSQLite(ctx, location)
}

func openSQLite(ctx context.Context, path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// The database holds the CA's private keys (also in its WAL until a
	// checkpoint). SQLite gives the WAL and shared-memory files the mode
	// of the database file, so that file is made 0600 before SQLite opens
	// it.
	if err := datadir.CreatePrivate(path); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// _txlock=immediate takes the write lock at BEGIN, so two writers queue
	// on busy_timeout instead of failing to upgrade a read lock.
	dsn := "file:" + path + "?_txlock=immediate" +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)" +
		"&_pragma=busy_timeout(10000)" +
		"&_pragma=foreign_keys(ON)"
	sqlDB, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	sqlDB.SetMaxOpenConns(8)
	s := &Store{db: &db{DB: sqlDB}}
	if err := s.migrate(ctx); err != nil {
		sqlDB.Close()
		return nil, err
	}
	// Files left by an older version, or made under a wider umask, are
	// tightened too.
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if _, err := datadir.Tighten(p); err != nil {
			sqlDB.Close()
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// migrations are applied in order, each once; never edit a released one.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO revision (id, value) VALUES (1, 0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
	id TEXT PRIMARY KEY,
	spiffe_id TEXT NOT NULL,
	parent_id TEXT NOT NULL,
	selectors TEXT NOT NULL,
	selector_key TEXT NOT NULL,
	x509_ttl INTEGER NOT NULL,
	jwt_ttl INTEGER NOT NULL,
	dns_names TEXT NOT NULL,
	revision INTEGER NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX entries_unique ON entries (spiffe_id, parent_id, selector_key);
CREATE INDEX entries_parent_revision ON entries (parent_id, revision);
CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
CREATE TABLE entry_selectors (
	entry_id TEXT NOT NULL REFERENCES entries(id) ON DELETE CASCADE,
	type TEXT NOT NULL,
	value TEXT NOT NULL
);
CREATE INDEX entry_selectors_tv ON entry_selectors (type, value);
CREATE INDEX entry_selectors_entry ON entry_selectors (entry_id);
CREATE TABLE deleted_entries (
	id TEXT NOT NULL,
	parent_id TEXT NOT NULL,
	revision INTEGER NOT NULL,
	deleted_at INTEGER NOT NULL
);
CREATE INDEX deleted_entries_parent_revision ON deleted_entries (parent_id, revision);
CREATE TABLE join_tokens (
	token_hash BLOB PRIMARY KEY,
	node_name TEXT NOT NULL,
	expires_at INTEGER NOT NULL,
	used_at INTEGER
);
CREATE TABLE agents (
	spiffe_id TEXT PRIMARY KEY,
	node_name TEXT NOT NULL,
	attestation_type TEXT NOT NULL,
	serial TEXT NOT NULL,
	prev_serial TEXT NOT NULL DEFAULT '',
	expires_at INTEGER NOT NULL,
	attested_at INTEGER NOT NULL,
	evicted_at INTEGER
);
CREATE TABLE ca_keys (
	id TEXT PRIMARY KEY,
	kind TEXT NOT NULL,
	state TEXT NOT NULL,
	parent_id TEXT NOT NULL DEFAULT '',
	key_pem BLOB NOT NULL,
	cert_der BLOB,
	not_before INTEGER NOT NULL,
	not_after INTEGER NOT NULL,
	activated_at INTEGER NOT NULL DEFAULT 0,
	chained_until INTEGER NOT NULL DEFAULT 0
);
`,
	// 2: access policies.
	`
CREATE TABLE access_policies (
	name TEXT PRIMARY KEY,
	policy BLOB NOT NULL,
	revision INTEGER NOT NULL
);
`,
	// 3: CA keys held by an external KMS.
	`
ALTER TABLE ca_keys ADD COLUMN key_uri TEXT NOT NULL DEFAULT '';
`,
	// 4: entries whose workloads make their own keys.
	`
ALTER TABLE entries ADD COLUMN workload_key INTEGER NOT NULL DEFAULT 0;
`,
	// 5: revocations.
	`
CREATE TABLE revocations (
	id TEXT PRIMARY KEY,
	revocation BLOB NOT NULL,
	expires_at INTEGER NOT NULL
);
`,
	// 6: what agents acknowledged holding of the trust bundle.
	`
CREATE TABLE bundle_acks (
	agent_id TEXT PRIMARY KEY,
	ack BLOB NOT NULL,
	acked_at INTEGER NOT NULL
);
`,
	// 7: traffic profiles and the anomalies found against them.
	`
CREATE TABLE traffic_profiles (
	server TEXT PRIMARY KEY,
	profile BLOB NOT NULL
);
CREATE TABLE anomalies (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	at INTEGER NOT NULL,
	anomaly BLOB NOT NULL
);
CREATE INDEX anomalies_at ON anomalies (at);
`,
	// 8: federation: the trust domains an entry federates with, and the
	// federated trust domains with their last fetched bundles.
	`
ALTER TABLE entries ADD COLUMN federates_with TEXT NOT NULL DEFAULT '[]';
CREATE TABLE federations (
	trust_domain TEXT PRIMARY KEY,
	federation BLOB NOT NULL
);
`,
	// 9: traffic counts replicas on a shared store hand to the leader.
	`
CREATE TABLE traffic_shards (
	id INTEGER PRIMARY KEY AUTOINCREMENT,
	replica TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	counts BLOB NOT NULL
);
`,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)`); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	// Each migration is one transaction that reads the version under the
	// write lock, so replicas starting together apply each once.
	for {
		done := false
		var v int
		err := s.tx(ctx, func(tx *txn) error {
			var have int
			if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
				return err
			}
			if have > len(migrations) {
				return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", have, len(migrations))
			}
			if have == len(migrations) {
				done = true
				return nil
			}
			v = have + 1
			m := migrations[v-1]
			if s.db.pg {
				m = postgresDDL(m)
			}
			if _, err := tx.ExecContext(ctx, m); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version) VALUES (?)`, v)
			return err
		})
		switch {
		case err != nil && v > 0:
			return fmt.Errorf("store: migration %d: %w", v, err)
		case err != nil:
			return fmt.Errorf("store: migrate: %w", err)
		case done:
			return nil
		}
	}
}

// tx runs fn in a write transaction and commits it if fn returns nil.
// With PostgreSQL, writers take the write lock first, and what the
// transaction changed is announced at its commit.
func (s *Store) tx(ctx context.Context, fn func(*txn) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if s.db.pg {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(writeLockKey)); err != nil {
			tx.Rollback()
			return err
		}
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	if s.db.pg {
		for _, k := range tx.kinds {
			if _, err := tx.ExecContext(ctx, `SELECT pg_notify(?, ?)`, notifyChannel, k); err != nil {
				tx.Rollback()
				return err
			}
		}
	}
	return tx.Commit()
}

// bumpRevision increments and returns the revision counter within tx.
func bumpRevision(ctx context.Context, tx *txn) (int64, error) {
	var rev int64
	err := tx.QueryRowContext(ctx, `UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value`).Scan(&rev)
	return rev, err
}

// Revision returns the current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.db.QueryRowContext(ctx, `SELECT value FROM revision WHERE id = 1`).Scan(&rev)
	return rev, err
}

// Meta returns a value of the key/value table, or "" if unset.
func (s *Store) Meta(ctx context.Context, key string) (string, error) { return getMeta(ctx, s.db, key) }

// SetMeta sets a value of the key/value table.
func (s *Store) SetMeta(ctx context.Context, key, value string) error {
	return putMeta(ctx, s.db, key, value)
}

// querier is what the database and a transaction share.
type querier interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
}

// getMeta reads a value of the key/value table, or "" if unset.
func getMeta(ctx context.Context, q querier, key string) (string, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

// putMeta sets a value of the key/value table.
func putMeta(ctx context.Context, q querier, key, value string) error {
	_, err := q.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	return err
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func unix(t time.Time) int64 { return t.Unix() }
