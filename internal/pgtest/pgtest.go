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
	cmd  *exec.Cmd
	done chan struct{}
	n    atomic.Int64
	stop sync.Once
}

var (
	shared     *Server
	sharedErr  error
	sharedOnce sync.Once
)

// Shared returns the test binary's server, started on first use.
func Shared() (*Server, error) {
	sharedOnce.Do(func() { shared, sharedErr = Start() })
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

// Start initializes a data folder and starts a server on it.
func Start() (*Server, error) {
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
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale", "C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	// The port is free now; another process taking it before the server
	// does makes the server fail to start, and Start says so.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// Crash safety of a test server does not matter: no fsync.
	args := []string{"-D", data, "-p", strconv.Itoa(s.port), "-k", dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB"}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if cred != nil {
		os.Chown(logf.Name(), int(cred.Uid), int(cred.Gid))
	}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig is sent when the thread that started the child ends:
		// this goroutine keeps its thread until the server has stopped.
		runtime.LockOSThread()
		s.cmd = exec.Command(filepath.Join(bin, "postgres"), args...)
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT}
		if err := s.cmd.Start(); err != nil {
			started <- err
			close(s.done)
			return
		}
		started <- nil
		s.cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	if err := <-started; err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return s, nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: the server stopped: %s", log)
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("pgtest: the server does not answer: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

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
		if s.cmd != nil && s.cmd.Process != nil {
			s.cmd.Process.Signal(syscall.SIGINT)
		}
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
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
