// Package pgtest runs a private PostgreSQL server for tests: initdb in a
// temporary folder, the server on a free loopback port, one database per
// test. It uses the PostgreSQL server programs installed on the machine
// (Debian's postgresql package); nothing is downloaded.
//
// The server is started on first use and stops with the test binary
// (even when the binary is killed: the kernel signals the server when its
// parent dies). Machines run tests as root, which PostgreSQL refuses, so
// as root the server runs as the postgres system user the package makes.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Install says how to get the server programs.
const Install = "PostgreSQL's server programs (initdb, postgres) are not installed: " +
	"install them with `apt-get install postgresql` (Debian, Ubuntu), " +
	"or set P2P_PG_BIN to the folder that holds them"

// ErrNotInstalled is returned when initdb and postgres cannot be found.
var ErrNotInstalled = errors.New(Install)

// Server is a running private PostgreSQL server.
type Server struct {
	dir  string
	port int
	bin  string
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{} // closed when the postgres process has ended
	n    atomic.Int64
	stop sync.Once
	// durable keeps PostgreSQL's crash-safe defaults (fsync,
	// full_page_writes) instead of turning them off for speed.
	durable bool
}

var (
	shared     *Server
	sharedErr  error
	sharedOnce sync.Once
)

// Shared returns the test binary's server, started on first use: fast
// (see Start), or durable (see StartDurable) when the environment has
// P2P_PG_DURABLE=1, for benchmarks whose writes should cost what they
// cost in production.
func Shared() (*Server, error) {
	sharedOnce.Do(func() { shared, sharedErr = start(os.Getenv("P2P_PG_DURABLE") == "1") })
	return shared, sharedErr
}

// Main runs the tests and stops the shared server if they started it:
// for a TestMain, os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	StopShared()
	return code
}

// StopShared stops the shared server if it was started.
func StopShared() {
	if shared != nil {
		shared.Stop()
	}
}

// binDir finds the folder of initdb and postgres.
func binDir() (string, error) {
	if d := os.Getenv("P2P_PG_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err != nil {
			return "", fmt.Errorf("P2P_PG_BIN=%s holds no initdb: %w", d, ErrNotInstalled)
		}
		return d, nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "postgres")); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start initializes a data folder and starts a server on it. The server
// does not flush to disk (fsync and full_page_writes off): a test's
// database need not survive a crash of the machine.
func Start() (*Server, error) { return start(false) }

// StartDurable is Start with PostgreSQL's crash-safe defaults (fsync,
// full_page_writes and synchronous_commit on), as a deployment runs it:
// for measurements whose writes must cost what they cost in production.
func StartDurable() (*Server, error) { return start(true) }

func start(durable bool) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	removeStale()
	dir, err := os.MkdirTemp("", fmt.Sprintf("p2p-pgtest-%d-", os.Getpid()))
	if err != nil {
		return nil, err
	}
	cred, err := credential(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale", "C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	s := &Server{dir: dir, durable: durable}
	// The port is free now; another process taking it before the server
	// does makes the server fail to start, and Start says so.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s.bin, s.cred = bin, cred
	if err := s.launch(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// launch starts postgres on s's folder and port and waits until it
// answers.
func (s *Server) launch() error {
	s.done = make(chan struct{})
	data := filepath.Join(s.dir, "data")
	args := []string{"-D", data, "-p", strconv.Itoa(s.port), "-k", s.dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "max_connections=300", "-c", "shared_buffers=64MB"}
	if !s.durable {
		// Crash safety of a test server does not matter: no fsync.
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if s.cred != nil {
		os.Chown(logf.Name(), int(s.cred.Uid), int(s.cred.Gid))
	}
	started := make(chan error, 1)
	done := s.done
	go func() {
		// Pdeathsig is sent when the thread that started the child ends:
		// this goroutine keeps its thread until the server has stopped.
		runtime.LockOSThread()
		cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGINT}
		s.cmd = cmd
		if err := cmd.Start(); err != nil {
			started <- err
			close(done)
			return
		}
		started <- nil
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
			return fmt.Errorf("pgtest: the server stopped: %s", log)
		case <-ctx.Done():
			s.halt()
			return fmt.Errorf("pgtest: the server does not answer: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// halt stops the postgres process (fast shutdown) and waits for it.
func (s *Server) halt() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGINT)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Shutdown stops the server (fast shutdown: the sessions are ended) and
// keeps its data, so that Restart starts it again as it was: what a
// database restart or an outage looks like to its clients.
func (s *Server) Shutdown() { s.halt() }

// Restart starts a server stopped by Shutdown again, on the same port
// and data.
func (s *Server) Restart() error { return s.launch() }

// credential returns who runs the server: the postgres user when this
// process is root (the folder is given to it), else nobody else.
func credential(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, PostgreSQL needs the postgres system user: %w (%s)", err, Install)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// removeStale removes the folders of servers whose test binary has gone.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "p2p-pgtest-*"))
	for _, d := range dirs {
		f := strings.SplitN(filepath.Base(d), "-", 4)
		if len(f) < 3 {
			continue
		}
		pid, err := strconv.Atoi(f[2])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// URL returns the URL of database db on the server.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// NewDatabase creates an empty database and returns its URL.
func (s *Server) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d", s.n.Add(1))
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: %w", err)
	}
	return s.URL(name), nil
}

// Stop stops the server (fast shutdown) and removes its folder. Calls
// after the first do nothing.
func (s *Server) Stop() {
	s.stop.Do(func() {
		s.halt()
		os.RemoveAll(s.dir)
	})
}

// Own starts a server of tb's own, not the shared one, for a test that
// stops it (to see what a client does when the database goes away), and
// returns it with the URL of a new database on it. The server stops when
// tb ends if the test has not stopped it. It fails tb (with how to install
// PostgreSQL) when the server cannot start.
func Own(tb testing.TB) (*Server, string) {
	tb.Helper()
	s, err := Start()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Stop)
	url, err := s.NewDatabase(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return s, url
}

// Database returns the URL of a new database for tb on the shared server,
// failing tb (with how to install PostgreSQL) when there is none.
func Database(tb testing.TB) string {
	tb.Helper()
	s, err := Shared()
	if err != nil {
		tb.Fatal(err)
	}
	url, err := s.NewDatabase(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return url
}
