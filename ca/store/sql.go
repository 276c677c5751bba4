package store

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
)

// db is the store's *sql.DB in one of its two dialects. The store's
// queries are written once, with ? placeholders; for PostgreSQL they are
// rewritten to $n, and booleans are sent as the integers both schemas
// store.
type db struct {
	*sql.DB
	pg bool
}

// writeLockKey is the PostgreSQL advisory lock every write transaction
// takes first: writers queue one after the other, as SQLite's write lock
// makes them, so a read-then-write is never interleaved with another
// replica's.
const writeLockKey = 0x5369676e65745752 // "SignetWR"

func (d *db) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return d.DB.ExecContext(ctx, d.bind(q), d.args(args)...)
}

func (d *db) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return d.DB.QueryContext(ctx, d.bind(q), d.args(args)...)
}

func (d *db) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return d.DB.QueryRowContext(ctx, d.bind(q), d.args(args)...)
}

// BeginTx begins a transaction. A read-only one is one snapshot in both
// dialects (PostgreSQL's default takes one per statement).
func (d *db) BeginTx(ctx context.Context, opts *sql.TxOptions) (*txn, error) {
	if d.pg && opts != nil && opts.ReadOnly {
		opts = &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead}
	}
	tx, err := d.DB.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &txn{Tx: tx, d: d}, nil
}

// txn is a transaction of db. notify names what it changed, for the other
// replicas sharing a PostgreSQL database.
type txn struct {
	*sql.Tx
	d     *db
	kinds []string
}

func (t *txn) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.Tx.ExecContext(ctx, t.d.bind(q), t.d.args(args)...)
}

func (t *txn) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.Tx.QueryContext(ctx, t.d.bind(q), t.d.args(args)...)
}

func (t *txn) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return t.Tx.QueryRowContext(ctx, t.d.bind(q), t.d.args(args)...)
}

func (t *txn) PrepareContext(ctx context.Context, q string) (*stmt, error) {
	s, err := t.Tx.PrepareContext(ctx, t.d.bind(q))
	if err != nil {
		return nil, err
	}
	return &stmt{Stmt: s, d: t.d}, nil
}

// notify records that the transaction changed kind; the replicas sharing
// the database hear of it when it commits.
func (t *txn) notify(kind string) {
	for _, k := range t.kinds {
		if k == kind {
			return
		}
	}
	t.kinds = append(t.kinds, kind)
}

type stmt struct {
	*sql.Stmt
	d *db
}

func (s *stmt) ExecContext(ctx context.Context, args ...any) (sql.Result, error) {
	return s.Stmt.ExecContext(ctx, s.d.args(args)...)
}

// bind rewrites the ? placeholders of q for PostgreSQL ($1, $2, ...),
// leaving quoted text alone.
func (d *db) bind(q string) string {
	if !d.pg || !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			quoted = !quoted
		case c == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// args sends booleans as 0 or 1 to PostgreSQL, whose columns for them are
// integers as in SQLite.
func (d *db) args(args []any) []any {
	if !d.pg {
		return args
	}
	for i, a := range args {
		if v, ok := a.(bool); ok {
			if v {
				args[i] = int64(1)
			} else {
				args[i] = int64(0)
			}
		}
	}
	return args
}

// postgresDDL turns a migration, written for SQLite, into PostgreSQL's:
// 64-bit integers, byte arrays, identity columns, and text compared byte
// by byte (collation "C", as SQLite's BINARY), whatever the database's
// collation: lists come in the same order from both stores, and a
// page's key (`id > ?`) means the same.
func postgresDDL(m string) string {
	return strings.NewReplacer(
		"INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY",
		"INTEGER", "BIGINT",
		"BLOB", "BYTEA",
		"TEXT", `TEXT COLLATE "C"`,
	).Replace(m)
}
