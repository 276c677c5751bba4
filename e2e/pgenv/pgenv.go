// Package pgenv runs a PostgreSQL server of the machine's packages for
// tests: its own data directory, a Unix socket only, trust authentication.
// PostgreSQL refuses to run as root, so as root the server runs as the
// postgres user the package creates. Tests that need it fail, never skip,
// when it cannot start.
package pgenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Server is one running PostgreSQL server.
type Server struct {
	dir  string
	sock string
	bin  string
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
	n    atomic.Int64
	log  string
}

// binDir is the newest installed PostgreSQL's bin directory.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var found []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			found = append(found, d)
		}
	}
	if len(found) == 0 {
		return "", errors.New("pgenv: no PostgreSQL under /usr/lib/postgresql (make deps installs Debian's postgresql)")
	}
	sort.Slice(found, func(i, j int) bool {
		a, _ := strconv.Atoi(filepath.Base(filepath.Dir(found[i])))
		b, _ := strconv.Atoi(filepath.Base(filepath.Dir(found[j])))
		return a < b
	})
	return found[len(found)-1], nil
}

// Start initializes a new cluster in a directory of its own and starts
// its server, waiting until it accepts connections.
func Start() (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "signet-pg-")
	if err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgenv: PostgreSQL will not run as root, and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	s := &Server{dir: dir, sock: dir, bin: bin, cred: cred, log: filepath.Join(dir, "postgres.log")}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgenv: initdb: %v\n%s", err, out)
	}
	if err := s.launch(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// launch starts the server on its data directory and waits until it
// accepts connections.
func (s *Server) launch() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.done = make(chan struct{})
	s.cmd = exec.Command(filepath.Join(s.bin, "postgres"), "-D", filepath.Join(s.dir, "data"), "-k", s.sock, "-c", "listen_addresses=",
		"-c", "max_connections=300", "-c", "shared_buffers=64MB")
	s.cmd.Dir = s.dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// The server dies with the test process, whatever ends it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("pgenv: start postgres: %w", err)
	}
	done := s.done
	go func() { s.cmd.Wait(); close(done) }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.dsn("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-done:
			out, _ := os.ReadFile(s.log)
			return fmt.Errorf("pgenv: postgres exited: %s", out)
		case <-ctx.Done():
			s.halt()
			return fmt.Errorf("pgenv: postgres did not accept connections: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Pause stops the server (fast shutdown: clients are disconnected) and
// keeps its data, for Resume: a database that goes away.
func (s *Server) Pause() { s.halt() }

// Resume starts a paused server again on the same data.
func (s *Server) Resume() error { return s.launch() }

func (s *Server) halt() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

func (s *Server) dsn(db string) string {
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db,
		RawQuery: url.Values{"host": {s.sock}, "sslmode": {"disable"}}.Encode()}).String()
}

// Database creates a new, empty database and returns its URL. Its
// collation is ICU's en-US, as a database made with a language's locale
// has, rather than the server's C: text sorts there by language rules
// (punctuation and case weigh less), which Signet must not depend on.
func (s *Server) Database() (string, error) {
	name := fmt.Sprintf("t%d", s.n.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgenv: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"); err != nil {
		return "", fmt.Errorf("pgenv: create database: %w", err)
	}
	return s.dsn(name), nil
}

// Stop stops the server (fast shutdown) and removes its directory.
func (s *Server) Stop() {
	s.halt()
	os.RemoveAll(s.dir)
}

var shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// Database returns the URL of a new database of the test process's shared
// server, started at the first call; the test fails if it cannot start.
// Call StopShared from TestMain after the tests.
func Database(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() { shared.srv, shared.err = Start() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	dsn, err := shared.srv.Database()
	if err != nil {
		t.Fatal(err)
	}
	return dsn
}

// StopShared stops the shared server, if it was started.
func StopShared() {
	if shared.srv != nil {
		shared.srv.Stop()
	}
}
