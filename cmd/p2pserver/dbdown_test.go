package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// linesSince returns the lines written to s after the first from.
func linesSince(s *syncBuffer, from int) []string {
	all := strings.Split(strings.TrimSuffix(s.String(), "\n"), "\n")
	if len(all) == 1 && all[0] == "" {
		all = nil
	}
	return all[min(from, len(all)):]
}

// TestDatabaseOutageLogsOneLine: with its PostgreSQL server stopped in
// the middle of a run, a process whose background work (notifications,
// batch jobs, eligibility checks, leases) keeps trying the database logs
// one "database unreachable" line, not a multi-line error per attempt of
// each worker; when the server is back, one "database reachable again"
// line. Lines that carry an unreachable database's error are summed up
// in those two.
func TestDatabaseOutageLogsOneLine(t *testing.T) {
	srv, dsn := pgtest.Own(t)
	logs := &syncBuffer{}
	cfg, err := parseConfig([]string{"-addr", "127.0.0.1:0", "-base-url", "http://127.0.0.1:8080",
		"-db", dsn, "-secret-key", testSecretKey, "-work-scan", "200ms"},
		func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); a.Close() }()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the workers' first scans
	mark := len(linesSince(logs, 0))

	srv.Shutdown()
	// The background loops try the database several times a second
	// (-work-scan 200ms, the outbox every second): two seconds make
	// dozens of attempts.
	time.Sleep(2 * time.Second)
	down := linesSince(logs, mark)
	if n := countContaining(down, "database unreachable"); n != 1 {
		t.Errorf("%d \"database unreachable\" lines while it is stopped, want 1", n)
	}
	if len(down) != 1 {
		t.Errorf("%d lines logged while the database was stopped, want 1:\n%s", len(down), strings.Join(down, "\n"))
	}
	for _, l := range down {
		if strings.Contains(l, "s3cret") || strings.Contains(l, "password") {
			t.Errorf("a line names a secret: %s", l)
		}
	}

	mark = len(linesSince(logs, 0))
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for countContaining(linesSince(logs, mark), "database reachable again") == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything more it would log
	up := linesSince(logs, mark)
	t.Logf("while stopped:\n%s\nonce back:\n%s", strings.Join(down, "\n"), strings.Join(up, "\n"))
	if n := countContaining(up, "database reachable again"); n != 1 {
		t.Errorf("%d \"database reachable again\" lines once it is back, want 1:\n%s", n, strings.Join(up, "\n"))
	}
	for _, l := range up {
		if strings.Contains(l, "level=ERROR") {
			t.Errorf("an error logged once the database is back: %s", l)
		}
	}
}

func countContaining(lines []string, s string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}
