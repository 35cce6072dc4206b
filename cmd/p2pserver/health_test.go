package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"
)

// TestHealthzAnswersFromAReadAtMostASecondOld: /healthz answers 200 while
// the database answered a read within healthTTL, and 503 once the read
// after that fails; polled many times within healthTTL it reads the
// database once.
func TestHealthzAnswersFromAReadAtMostASecondOld(t *testing.T) {
	a, _ := testApp(t, "-db", filepath.Join(t.TempDir(), "p2p.db"))
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a.health.now = func() time.Time { return clock }
	reads := 0
	ping := a.health.ping
	a.health.ping = func(ctx context.Context) error { reads++; return ping(ctx) }
	h := a.Handler()
	get := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			a.Close()
		}
	})
	steps := []struct {
		name     string
		advance  time.Duration
		close    bool
		status   int
		body     string
		wantRead int
	}{
		{"first request reads the database", 0, false, 200, `{"status":"ok"}`, 1},
		{"within the second: the last answer", healthTTL / 2, false, 200, `{"status":"ok"}`, 1},
		{"database closed, still within the second", 0, true, 200, `{"status":"ok"}`, 1},
		{"a second after the read: read again, fails", healthTTL / 2, false, 503, `{"status":"unavailable"}`, 2},
		{"the failure is remembered as well", healthTTL / 2, false, 503, `{"status":"unavailable"}`, 2},
		{"and read again a second later", healthTTL / 2, false, 503, `{"status":"unavailable"}`, 3},
	}
	for _, s := range steps {
		clock = clock.Add(s.advance)
		if s.close {
			a.Close()
			closed = true
		}
		for range 3 {
			status, body := get()
			if status != s.status || body != s.body {
				t.Fatalf("%s: %d %s, want %d %s", s.name, status, body, s.status, s.body)
			}
		}
		if reads != s.wantRead {
			t.Fatalf("%s: %d reads of the database so far, want %d", s.name, reads, s.wantRead)
		}
	}
}
