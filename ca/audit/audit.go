// Package audit writes the CA's audit log: one JSON object per line for
// every attestation, issuance, admin change and refusal, written before the
// caller gets its answer. Records never hold tokens or keys: the fields are
// fixed, and none of them is meant for secrets.
package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/signet-id/signet/internal/logfile"
)

// Event names.
const (
	NodeAttest    = "node.attest"
	AgentRenew    = "agent.renew"
	AgentEvict    = "agent.evict"
	X509Issue     = "svid.x509.issue"
	JWTIssue      = "svid.jwt.issue"
	EntryCreate   = "entry.create"
	EntryUpdate   = "entry.update"
	EntryDelete   = "entry.delete"
	TokenCreate   = "token.create"
	TokenRevoke   = "token.revoke"
	RequestRefuse = "request.refuse"
	// RefuseAggregate counts the refusals of unauthenticated calls from
	// one source in one interval beyond those recorded one by one.
	RefuseAggregate = "request.refuse.aggregate"
	PolicyPut       = "policy.put"
	PolicyDelete    = "policy.delete"
	// RevocationCreate and RevocationDelete: an operator revoked
	// credentials, or withdrew a revocation.
	RevocationCreate = "revocation.create"
	RevocationDelete = "revocation.delete"
	// FederationPut and FederationDelete: an operator federated with a
	// trust domain (or changed how), or stopped. FederationBundle is a
	// federated trust domain's bundle that changed when it was fetched.
	FederationPut    = "federation.put"
	FederationDelete = "federation.delete"
	FederationBundle = "federation.bundle"
	// AuthzDeny is one call a service refused; AuthzAllow a count of the
	// calls it allowed a peer in a minute; AuthzDropped records a service
	// lost (full buffer).
	AuthzDeny    = "authz.deny"
	AuthzAllow   = "authz.allow"
	AuthzDropped = "authz.dropped"
	// AuthzShadowDeny is a call that audit-mode policies would have
	// denied; nothing was refused.
	AuthzShadowDeny = "authz.shadow_deny"
	// KeyCreate, KeyState and KeyRetire follow the CA's own keys: a key
	// made (active at once, or prepared and published first), a key
	// changing state (prepared to active, active to old), a key leaving the
	// store (and the KMS).
	KeyCreate = "ca.key.create"
	KeyState  = "ca.key.state"
	KeyRetire = "ca.key.retire"
	// KeyActivateUnacknowledged warns that a root was activated while live
	// agents (Laggards) had not acknowledged holding it.
	KeyActivateUnacknowledged = "ca.key.activate_unacknowledged"
)

// Results.
const (
	Success = "success"
	Failure = "failure"
	Refused = "refused"
)

// Record is one audit line.
type Record struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"`
	Actor    string    `json:"actor"`
	SPIFFEID string    `json:"spiffe_id,omitempty"`
	EntryID  string    `json:"entry_id,omitempty"`
	Serial   string    `json:"serial,omitempty"`
	Node     string    `json:"node,omitempty"`
	// Source is the network address an unauthenticated caller came from.
	Source string `json:"source,omitempty"`
	// Policy names an access policy; Peer, Method and Count describe an
	// authorization decision a service reported (Count: allowed calls in
	// the minute from Window).
	Policy string `json:"policy,omitempty"`
	// Revocation is a revocation's ID.
	Revocation string `json:"revocation,omitempty"`
	// TrustDomain is a federated trust domain, and URL its bundle
	// endpoint.
	TrustDomain string    `json:"trust_domain,omitempty"`
	URL         string    `json:"url,omitempty"`
	Peer        string    `json:"peer,omitempty"`
	Method      string    `json:"method,omitempty"`
	Count       int64     `json:"count,omitempty"`
	Window      time.Time `json:"window,omitzero"`
	Dropped     int64     `json:"dropped,omitempty"`
	// Key describes a CA key event: kind, id, state, expiry and, for a key
	// in a KMS, its name there (never key material).
	Key *KeyInfo `json:"key,omitempty"`
	// Laggards are the agents and workloads that had not acknowledged a
	// root when it was activated.
	Laggards []string `json:"laggards,omitempty"`
	Result   string   `json:"result"`
	Reason   string   `json:"reason,omitempty"`
}

// KeyInfo is the CA key an event is about.
type KeyInfo struct {
	Kind     string    `json:"kind"`
	ID       string    `json:"id"`
	State    string    `json:"state"`
	NotAfter time.Time `json:"not_after"`
	KMSName  string    `json:"kms_name,omitempty"`
}

// Log writes records to one writer, each line chained to the one before
// by a hash (see chain.go), and hands every line to its sinks. It is safe
// for concurrent use.
type Log struct {
	mu  sync.Mutex
	w   io.Writer
	c   io.Closer
	now func() time.Time
	buf []byte
	// prev is the hash of the last line written, seq its number.
	prev  string
	seq   uint64
	sinks []Sink
	// failed is why the last write failed (nil once one succeeds); torn
	// says it left part of a line in the file.
	failed error
	torn   bool

	reopen func() error
}

// Sink takes every line the log writes, after the file has it (see
// Spool). Append must not block for long: it is called under the log's
// lock.
type Sink interface {
	Append(lines []byte) error
}

// Open returns a Log appending to path, or to stderr when path is "" or
// "-". The chain continues from the file's last line, if it has one.
func Open(path string) (*Log, error) {
	var last []byte
	if path != "" && path != "-" {
		var err error
		if last, err = lastLine(path); err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
	}
	f, err := logfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := New(f)
	l.c = f
	l.reopen = f.Reopen
	if h, err := parseHead(last); err == nil {
		l.prev, l.seq = h.hash, h.seq
	}
	return l, nil
}

// AddSink makes the log hand every line it writes from now on to s too.
func (l *Log) AddSink(s Sink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sinks = append(l.sinks, s)
}

// Position returns the number and hash of the last line written.
func (l *Log) Position() (uint64, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.prev
}

// Reopen reopens the file after a rotation (see internal/logfile).
func (l *Log) Reopen() error {
	if l.reopen == nil {
		return nil
	}
	return l.reopen()
}

// New returns a Log writing to w, its chain starting afresh.
func New(w io.Writer) *Log { return &Log{w: w, now: time.Now, prev: genesis} }

// Write writes the records, one line each, in one write call. It returns
// once the lines are handed to the operating system (not fsynced).
func (l *Log) Write(recs ...Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = l.buf[:0]
	if l.torn {
		// End the part of a line a failed write left, so that this
		// record starts a line of its own.
		l.buf = append(l.buf, '\n')
	}
	prev, seq := l.prev, l.seq
	now := l.now().UTC()
	for _, r := range recs {
		if r.Time.IsZero() {
			r.Time = now
		}
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		var line []byte
		line, l.prev = chainLine(l.prev, l.seq+1, b)
		l.seq++
		l.buf = append(l.buf, line...)
		l.buf = append(l.buf, '\n')
	}
	if n, err := l.w.Write(l.buf); err != nil {
		// The records are not in the file: the chain goes on from the
		// last line that is.
		l.prev, l.seq = prev, seq
		l.torn = l.torn || n > 0
		l.failed = fmt.Errorf("audit: %w", err)
		return l.failed
	}
	l.failed, l.torn = nil, false
	for _, s := range l.sinks {
		// The file has the records: a sink that cannot take them counts
		// the loss itself.
		s.Append(l.buf)
	}
	return nil
}

// Err is why the last write failed, or nil if it succeeded: while it is
// not nil, every request that must be audited is refused.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed
}

// Close closes the file, if Open opened one.
func (l *Log) Close() error {
	if l.c != nil {
		return l.c.Close()
	}
	return nil
}
