package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/internal/entry"
	"github.com/signet-id/signet/internal/selector"
)

// BatchError names the item of a batch that failed.
type BatchError struct {
	Index int
	Err   error
}

func (e *BatchError) Error() string { return fmt.Sprintf("entry %d: %v", e.Index, e.Err) }
func (e *BatchError) Unwrap() error { return e.Err }

// CreateEntries stores entries in one transaction, assigning ids, the new
// revision and the creation time. It is all or nothing.
func (s *Store) CreateEntries(ctx context.Context, entries []entry.Entry, now time.Time) ([]entry.Entry, error) {
	out := make([]entry.Entry, len(entries))
	err := s.tx(ctx, func(tx *txn) error {
		rev, err := bumpRevision(ctx, tx)
		if err != nil {
			return err
		}
		tx.notify(ChangedEntries)
		ins, err := tx.PrepareContext(ctx, `INSERT INTO entries (id, spiffe_id, parent_id, selectors, selector_key, x509_ttl, jwt_ttl, dns_names, workload_key, revision, created_at, federates_with) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		insSel, err := tx.PrepareContext(ctx, `INSERT INTO entry_selectors (entry_id, type, value) VALUES (?, ?, ?)`)
		if err != nil {
			return err
		}
		defer insSel.Close()
		for i, e := range entries {
			if e.ID != "" {
				return &BatchError{Index: i, Err: &entry.FieldError{Field: "id", Err: errors.New("must be empty on create")}}
			}
			e.ID = newID()
			e.Revision = rev
			e.CreatedAt = now.UTC().Truncate(time.Second)
			if err := insertEntry(ctx, ins, insSel, e); err != nil {
				return &BatchError{Index: i, Err: err}
			}
			out[i] = e
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: create entries: %w", err)
	}
	return out, nil
}

func insertEntry(ctx context.Context, ins, insSel *stmt, e entry.Entry) error {
	sels, _ := json.Marshal(selectorStrings(e.Selectors))
	dns, _ := json.Marshal(nonNil(e.DNSNames))
	fed := []string{}
	for _, td := range e.FederatesWith {
		fed = append(fed, td.Name())
	}
	feds, _ := json.Marshal(fed)
	key := e.SelectorKey()
	if ins.d.pg {
		// PostgreSQL's text holds no NUL, which SelectorKey joins with.
		k, _ := json.Marshal(strings.Split(key, "\x00"))
		key = string(k)
	}
	_, err := ins.ExecContext(ctx, e.ID, e.SPIFFEID.String(), e.ParentID.String(), string(sels), key,
		int64(e.X509TTL/time.Second), int64(e.JWTTTL/time.Second), string(dns), e.WorkloadKey, e.Revision, unix(e.CreatedAt), string(feds))
	if err != nil {
		if isUniqueViolation(err) {
			return &ConflictError{Msg: fmt.Sprintf("an entry for %s under %s with the same selectors already exists", e.SPIFFEID, e.ParentID)}
		}
		return err
	}
	for _, sel := range e.Selectors {
		if _, err := insSel.ExecContext(ctx, e.ID, sel.Type, sel.Value); err != nil {
			return err
		}
	}
	return nil
}

// UpdateEntries replaces entries by id in one transaction.
func (s *Store) UpdateEntries(ctx context.Context, entries []entry.Entry, now time.Time) ([]entry.Entry, error) {
	out := make([]entry.Entry, len(entries))
	err := s.tx(ctx, func(tx *txn) error {
		rev, err := bumpRevision(ctx, tx)
		if err != nil {
			return err
		}
		tx.notify(ChangedEntries)
		ins, err := tx.PrepareContext(ctx, `INSERT INTO entries (id, spiffe_id, parent_id, selectors, selector_key, x509_ttl, jwt_ttl, dns_names, workload_key, revision, created_at, federates_with) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		insSel, err := tx.PrepareContext(ctx, `INSERT INTO entry_selectors (entry_id, type, value) VALUES (?, ?, ?)`)
		if err != nil {
			return err
		}
		defer insSel.Close()
		for i, e := range entries {
			var oldParent string
			var created int64
			err := tx.QueryRowContext(ctx, `SELECT parent_id, created_at FROM entries WHERE id = ?`, e.ID).Scan(&oldParent, &created)
			if errors.Is(err, sql.ErrNoRows) {
				return &BatchError{Index: i, Err: fmt.Errorf("entry %q: %w", e.ID, ErrNotFound)}
			}
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM entries WHERE id = ?`, e.ID); err != nil {
				return err
			}
			if oldParent != e.ParentID.String() {
				// The old parent must drop the entry on its next sync.
				if _, err := tx.ExecContext(ctx, `INSERT INTO deleted_entries (id, parent_id, revision, deleted_at) VALUES (?, ?, ?, ?)`,
					e.ID, oldParent, rev, unix(now)); err != nil {
					return err
				}
			}
			e.Revision = rev
			e.CreatedAt = time.Unix(created, 0).UTC()
			if err := insertEntry(ctx, ins, insSel, e); err != nil {
				return &BatchError{Index: i, Err: err}
			}
			out[i] = e
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: update entries: %w", err)
	}
	return out, nil
}

// DeleteEntries removes entries by id in one transaction and leaves
// tombstones so that agents resuming a sync learn of the deletion.
func (s *Store) DeleteEntries(ctx context.Context, ids []string, now time.Time) ([]entry.Entry, error) {
	var deleted []entry.Entry
	err := s.tx(ctx, func(tx *txn) error {
		rev, err := bumpRevision(ctx, tx)
		if err != nil {
			return err
		}
		tx.notify(ChangedEntries)
		for i, id := range ids {
			row := tx.QueryRowContext(ctx, `DELETE FROM entries WHERE id = ? RETURNING `+entryColumns, id)
			e, err := scanEntry(row)
			if errors.Is(err, sql.ErrNoRows) {
				return &BatchError{Index: i, Err: fmt.Errorf("entry %q: %w", id, ErrNotFound)}
			}
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO deleted_entries (id, parent_id, revision, deleted_at) VALUES (?, ?, ?, ?)`,
				id, e.ParentID.String(), rev, unix(now)); err != nil {
				return err
			}
			deleted = append(deleted, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: delete entries: %w", err)
	}
	return deleted, nil
}

const entryColumns = `id, spiffe_id, parent_id, selectors, x509_ttl, jwt_ttl, dns_names, workload_key, revision, created_at, federates_with`

type scanner interface{ Scan(...any) error }

func scanEntry(row scanner) (entry.Entry, error) {
	var (
		e                           entry.Entry
		id, parent, sels, dns, feds string
		x509TTL, jwtTTL, createdAt  int64
	)
	if err := row.Scan(&e.ID, &id, &parent, &sels, &x509TTL, &jwtTTL, &dns, &e.WorkloadKey, &e.Revision, &createdAt, &feds); err != nil {
		return entry.Entry{}, err
	}
	var err error
	if e.SPIFFEID, err = spiffeid.FromString(id); err != nil {
		return entry.Entry{}, fmt.Errorf("entry %s: stored spiffe_id: %w", e.ID, err)
	}
	if e.ParentID, err = spiffeid.FromString(parent); err != nil {
		return entry.Entry{}, fmt.Errorf("entry %s: stored parent_id: %w", e.ID, err)
	}
	var selStrs []string
	if err := json.Unmarshal([]byte(sels), &selStrs); err != nil {
		return entry.Entry{}, fmt.Errorf("entry %s: stored selectors: %w", e.ID, err)
	}
	for _, s := range selStrs {
		typ, val, _ := strings.Cut(s, ":")
		e.Selectors = append(e.Selectors, selector.Selector{Type: typ, Value: val})
	}
	if err := json.Unmarshal([]byte(dns), &e.DNSNames); err != nil {
		return entry.Entry{}, fmt.Errorf("entry %s: stored dns_names: %w", e.ID, err)
	}
	if len(e.DNSNames) == 0 {
		e.DNSNames = nil
	}
	var fed []string
	if err := json.Unmarshal([]byte(feds), &fed); err != nil {
		return entry.Entry{}, fmt.Errorf("entry %s: stored federates_with: %w", e.ID, err)
	}
	for _, n := range fed {
		td, err := spiffeid.TrustDomainFromString(n)
		if err != nil {
			return entry.Entry{}, fmt.Errorf("entry %s: stored federates_with: %w", e.ID, err)
		}
		e.FederatesWith = append(e.FederatesWith, td)
	}
	e.X509TTL = time.Duration(x509TTL) * time.Second
	e.JWTTTL = time.Duration(jwtTTL) * time.Second
	e.CreatedAt = time.Unix(createdAt, 0).UTC()
	return e, nil
}

// FetchEntry returns one entry by id.
func (s *Store) FetchEntry(ctx context.Context, id string) (entry.Entry, error) {
	e, err := scanEntry(s.db.QueryRowContext(ctx, `SELECT `+entryColumns+` FROM entries WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return entry.Entry{}, fmt.Errorf("store: entry %q: %w", id, ErrNotFound)
	}
	return e, err
}

// ListFilter selects entries; empty fields match everything.
type ListFilter struct {
	SPIFFEID string
	ParentID string
	// Selectors all must be among an entry's.
	Selectors []selector.Selector
	// IDs, if any, are the entries to look at.
	IDs       []string
	PageSize  int
	PageToken string
}

// ListEntries returns one page of entries in id order and the token of the
// next page ("" on the last).
func (s *Store) ListEntries(ctx context.Context, f ListFilter) ([]entry.Entry, string, error) {
	q := `SELECT ` + entryColumns + ` FROM entries WHERE id > ?`
	args := []any{f.PageToken}
	if f.SPIFFEID != "" {
		q += ` AND spiffe_id = ?`
		args = append(args, f.SPIFFEID)
	}
	if f.ParentID != "" {
		q += ` AND parent_id = ?`
		args = append(args, f.ParentID)
	}
	for _, sel := range f.Selectors {
		q += ` AND id IN (SELECT entry_id FROM entry_selectors WHERE type = ? AND value = ?)`
		args = append(args, sel.Type, sel.Value)
	}
	if len(f.IDs) > 0 {
		q += ` AND id IN (?` + strings.Repeat(`, ?`, len(f.IDs)-1) + `)`
		for _, id := range f.IDs {
			args = append(args, id)
		}
	}
	size := f.PageSize
	if size <= 0 {
		size = 500
	}
	q += ` ORDER BY id LIMIT ?`
	args = append(args, size+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("store: list entries: %w", err)
	}
	defer rows.Close()
	var out []entry.Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, "", fmt.Errorf("store: list entries: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("store: list entries: %w", err)
	}
	next := ""
	if len(out) > size {
		out = out[:size]
		next = out[size-1].ID
	}
	return out, next, nil
}

// Changes is what a parent's view of the entries gained and lost since a
// revision.
type Changes struct {
	// Revision is the revision the changes bring the reader up to.
	Revision int64
	// Full means Entries is the complete set: the reader's revision was
	// unknown or older than the retained deletion history.
	Full    bool
	Entries []entry.Entry
	Deleted []string
}

const tombstoneFloorKey = "tombstone_floor"

// EntriesSince returns the changes to the entries parented to parentID after
// revision since. The reads are one snapshot.
func (s *Store) EntriesSince(ctx context.Context, parentID string, since int64) (Changes, error) {
	var ch Changes
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return ch, fmt.Errorf("store: entries since: %w", err)
	}
	defer tx.Rollback()
	if err := tx.QueryRowContext(ctx, `SELECT value FROM revision WHERE id = 1`).Scan(&ch.Revision); err != nil {
		return ch, fmt.Errorf("store: entries since: %w", err)
	}
	var floor int64
	if v, err := getMeta(ctx, tx, tombstoneFloorKey); err == nil && v != "" {
		fmt.Sscan(v, &floor)
	}
	if since <= 0 || since < floor || since > ch.Revision {
		ch.Full = true
		since = 0
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+entryColumns+` FROM entries WHERE parent_id = ? AND revision > ? ORDER BY id`, parentID, since)
	if err != nil {
		return ch, fmt.Errorf("store: entries since: %w", err)
	}
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			rows.Close()
			return ch, fmt.Errorf("store: entries since: %w", err)
		}
		ch.Entries = append(ch.Entries, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return ch, fmt.Errorf("store: entries since: %w", err)
	}
	if ch.Full {
		return ch, nil
	}
	rows, err = tx.QueryContext(ctx, `SELECT id FROM deleted_entries WHERE parent_id = ? AND revision > ?`, parentID, since)
	if err != nil {
		return ch, fmt.Errorf("store: entries since: %w", err)
	}
	defer rows.Close()
	live := make(map[string]bool, len(ch.Entries))
	for _, e := range ch.Entries {
		live[e.ID] = true
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return ch, fmt.Errorf("store: entries since: %w", err)
		}
		if !live[id] {
			ch.Deleted = append(ch.Deleted, id)
		}
	}
	return ch, rows.Err()
}

// PruneDeleted forgets deletions older than before; agents whose revision is
// older than what remains get a full sync instead.
func (s *Store) PruneDeleted(ctx context.Context, before time.Time) error {
	return s.tx(ctx, func(tx *txn) error {
		var maxRev sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT MAX(revision) FROM deleted_entries WHERE deleted_at < ?`, unix(before)).Scan(&maxRev); err != nil {
			return err
		}
		if !maxRev.Valid {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM deleted_entries WHERE revision <= ?`, maxRev.Int64); err != nil {
			return err
		}
		return putMeta(ctx, tx, tombstoneFloorKey, fmt.Sprint(maxRev.Int64))
	})
}

func selectorStrings(sels []selector.Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.String()
	}
	return out
}

// nonNil gives SQL an empty value rather than NULL.
func nonNil[S ~[]E, E any](s S) S {
	if s == nil {
		return S{}
	}
	return s
}

func isUniqueViolation(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "UNIQUE constraint failed") || isPostgresUniqueViolation(err))
}

// FetchEntries returns the entries with these ids that exist, by id, in
// one read.
func (s *Store) FetchEntries(ctx context.Context, ids []string) (map[string]entry.Entry, error) {
	out := make(map[string]entry.Entry, len(ids))
	for start := 0; start < len(ids); start += 500 {
		chunk := ids[start:min(start+500, len(ids))]
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		q := `SELECT ` + entryColumns + ` FROM entries WHERE id IN (?` + strings.Repeat(",?", len(chunk)-1) + `)`
		rows, err := s.db.QueryContext(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("store: fetch entries: %w", err)
		}
		for rows.Next() {
			e, err := scanEntry(rows)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("store: fetch entries: %w", err)
			}
			out[e.ID] = e
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("store: fetch entries: %w", err)
		}
	}
	return out, nil
}
