package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestHealthzFollowsPostgres: on a PostgreSQL of its own, /healthz stays
// ok when PostgreSQL ends the process's sessions (a dead connection is
// not a dead database: the next read takes another), and turns
// unavailable once PostgreSQL has stopped, within a read or two of
// healthTTL (the cache does not keep saying ok).
func TestHealthzFollowsPostgres(t *testing.T) {
	srv, dsn := pgtest.Own(t)
	ctx := context.Background()
	a, _ := testApp(t, "-db", dsn, "-secret-key", testSecretKey)
	defer a.Close()
	h := a.Handler()
	get := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code
	}
	// poll asks every tenth of healthTTL until /healthz answers want, for
	// at most 5 healthTTL, and returns how long that took.
	poll := func(want int) (time.Duration, bool) {
		t0 := time.Now()
		for time.Since(t0) < 5*healthTTL {
			if get() == want {
				return time.Since(t0), true
			}
			time.Sleep(healthTTL / 10)
		}
		return time.Since(t0), false
	}
	steps := []struct {
		name string
		do   func()
		want int
	}{
		{"running", func() {}, 200},
		{"its sessions ended by pg_terminate_backend", func() {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
	WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
				t.Fatal(err)
			}
		}, 200},
		{"PostgreSQL stopped", srv.Stop, 503},
	}
	for _, s := range steps {
		// The next answer is a read made after the step.
		s.do()
		time.Sleep(healthTTL + healthTTL/10)
		if s.want == 200 {
			for range 3 {
				if code := get(); code != 200 {
					t.Fatalf("%s: /healthz %d, want 200", s.name, code)
				}
				time.Sleep(healthTTL + healthTTL/10)
			}
			continue
		}
		if took, ok := poll(s.want); !ok {
			t.Fatalf("%s: /healthz did not answer %d within %s", s.name, s.want, took)
		}
	}
}
