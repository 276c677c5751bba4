package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	sysunix "golang.org/x/sys/unix"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/signet-id/signet/internal/backoff"
)

// What a committed transaction changed, as announced to the replicas that
// share a PostgreSQL database (the payload of a notification on
// notifyChannel).
const (
	ChangedEntries     = "entries"
	ChangedPolicies    = "policies"
	ChangedRevocations = "revocations"
	ChangedAgents      = "agents"
	ChangedFederations = "federations"
	ChangedCAKeys      = "ca_keys"
	// ChangedTraffic: a replica handed traffic counts to the leader.
	ChangedTraffic = "traffic"
	// ChangedUnknown is reported when (re)connecting to listen: changes
	// made while not listening were not heard, so anything may have
	// changed.
	ChangedUnknown = ""
)

const (
	notifyChannel = "signet_changes"
	// leaderLockKey is the session advisory lock the leading replica
	// holds for as long as its connection lives.
	leaderLockKey = 0x5369676e65744c44 // "SignetLD"
)

func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors hide a password of the URL.
		return nil, fmt.Errorf("store: %w", err)
	}
	noticeDeadPeers(&cfg.Config)
	sqlDB := stdlib.OpenDB(*cfg)
	sqlDB.SetMaxOpenConns(16)
	sqlDB.SetMaxIdleConns(16)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	s := &Store{db: &db{DB: sqlDB, pg: true}, dsn: dsn}
	if err := sqlDB.PingContext(ctx); err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("store: connect to PostgreSQL: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		sqlDB.Close()
		return nil, err
	}
	return s, nil
}

// deadPeer is how long a TCP connection to PostgreSQL may go unanswered
// before it fails. Without it a partition holds every query on the
// connection, and a replica that no longer hears the others' changes
// goes on saying it does, until the kernel gives up: minutes to hours.
const deadPeer = 10 * time.Second

// noticeDeadPeers makes cfg's TCP connections fail once PostgreSQL has not
// answered for deadPeer: a connection attempt (unless the URL sets
// connect_timeout), unacknowledged data (TCP_USER_TIMEOUT), or an idle
// connection whose keepalive probes go unanswered.
func noticeDeadPeers(cfg *pgconn.Config) {
	if cfg.ConnectTimeout == 0 {
		// A dial on a dead path otherwise waits for the kernel's SYN
		// retries (about two minutes), holding whatever request needed a
		// new connection.
		cfg.ConnectTimeout = deadPeer
	}
	d := &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 2 * time.Second, Count: 3},
		Control: func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil
			}
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = sysunix.SetsockoptInt(int(fd), sysunix.IPPROTO_TCP, sysunix.TCP_USER_TIMEOUT, int(deadPeer/time.Millisecond))
			}); err != nil {
				return err
			}
			return serr
		},
	}
	cfg.DialFunc = d.DialContext
}

// Shared says whether other CA replicas may share this store (it is
// PostgreSQL), so that Listen and Lead mean something.
func (s *Store) Shared() bool { return s.db.pg }

// Listen calls changed with what each transaction committed by any replica
// changed (this one's included), until ctx ends. It reconnects after a
// lost connection and then calls changed(ChangedUnknown), since what was
// committed meanwhile was not heard; it does so once at the start too.
// connected reports the state of the listening connection. A SQLite store
// has no other writers: Listen returns at once.
func (s *Store) Listen(ctx context.Context, changed func(kind string), connected func(ok bool, err error)) {
	if !s.db.pg {
		return
	}
	b := backoff.Backoff{Max: 5 * time.Second}
	for ctx.Err() == nil {
		heard, err := s.listenOnce(ctx, changed, connected)
		if ctx.Err() != nil {
			return
		}
		connected(false, err)
		if heard {
			b.Reset()
		}
		if !sleep(ctx, b.Next()) {
			return
		}
	}
}

func (s *Store) listenOnce(ctx context.Context, changed func(string), connected func(bool, error)) (listened bool, err error) {
	conn, err := s.connect(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return false, fmt.Errorf("listen: %w", err)
	}
	connected(true, nil)
	changed(ChangedUnknown)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, fmt.Errorf("listen: %w", err)
		}
		changed(n.Payload)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// connect opens a connection of its own (for a LISTEN or a session lock),
// with TCP keepalives, so that a dead peer is noticed on both ends.
func (s *Store) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(s.dsn)
	if err != nil {
		return nil, err
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	// The server drops a silent client (and so its lock) within about
	// 10 s + 3 × 5 s.
	cfg.RuntimeParams["tcp_keepalives_idle"] = "10"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "5"
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	noticeDeadPeers(&cfg.Config)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return conn, nil
}

// Lead competes to lead the replicas sharing this store, until ctx ends:
// the leader is the replica whose connection holds a session advisory
// lock, which PostgreSQL releases when that connection ends (the replica
// stopped or died). lead is called with true when this replica gains the
// lead and with false when it loses it (its connection failed, so another
// replica may hold the lock). A SQLite store has no other replicas: Lead
// calls lead(true) and waits for ctx.
func (s *Store) Lead(ctx context.Context, lead func(bool), logErr func(error)) {
	if !s.db.pg {
		lead(true)
		<-ctx.Done()
		return
	}
	b := backoff.Backoff{Max: 5 * time.Second}
	for ctx.Err() == nil {
		held, err := s.leadOnce(ctx, lead)
		if held {
			lead(false)
		}
		if ctx.Err() != nil {
			return
		}
		logErr(err)
		if held {
			b.Reset()
		}
		if !sleep(ctx, b.Next()) {
			return
		}
	}
}

// leadOnce waits for the leader lock on a connection of its own and holds
// it while the connection answers; held says whether it got the lock.
func (s *Store) leadOnce(ctx context.Context, lead func(bool)) (held bool, err error) {
	conn, err := s.connect(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	// Blocks until the leader's session ends: a failover starts the moment
	// PostgreSQL sees the old leader's connection close.
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, int64(leaderLockKey)); err != nil {
		return false, fmt.Errorf("leader lock: %w", err)
	}
	lead(true)
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := conn.Ping(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			return true, fmt.Errorf("leader lock connection lost: %w", err)
		}
	}
}

func isPostgresUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}
