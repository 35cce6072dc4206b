package store

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// TestOutageLogOneLinePerOutage: the store's transactions failing on an
// unreachable database are logged as one line when the first fails, one
// more per outageRemind with the count of those that failed since, and
// one line at the first that succeeds after; other failures and
// successes while the database is up log nothing.
func TestOutageLogOneLinePerOutage(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	o := &outageLog{log: slog.New(slog.NewTextHandler(&buf, nil)), now: func() time.Time { return now }}
	down := errs.E("database", errs.Transient, "the database is not reachable at the moment",
		fmt.Errorf("%w: %w", backend.ErrUnreachable, errors.New("dial tcp 127.0.0.1:5432:\nconnect: connection refused")))
	steps := []struct {
		name  string
		after time.Duration
		err   error
		want  string // the line logged, "" for none
	}{
		{"a success while up", 0, nil, ""},
		{"another failure while up", 0, errs.E("store.put", errs.Conflict, "exists"), ""},
		{"the first unreachable", 0, down, `level=ERROR msg="database unreachable`},
		{"the next, at once", time.Second, down, ""},
		{"another failure meanwhile", time.Second, errs.E("store.put", errs.Conflict, "exists"), ""},
		{"one more", 30 * time.Second, down, ""},
		{"a minute after the first line", 30 * time.Second, down, `msg="database still unreachable" for=1m2s failed=3`},
		{"soon after", time.Second, down, ""},
		{"a success", time.Second, nil, `level=WARN msg="database reachable again" after=1m4s failed=1`},
		{"another success", time.Second, nil, ""},
		{"a second outage", time.Second, down, `msg="database unreachable`},
	}
	for _, s := range steps {
		buf.Reset()
		now = now.Add(s.after)
		o.note(s.err)
		got := strings.TrimSpace(buf.String())
		switch {
		case s.want == "" && got != "":
			t.Errorf("%s: logged %s, want nothing", s.name, got)
		case s.want != "" && (!strings.Contains(got, s.want) || strings.Count(got, "\n") > 0):
			t.Errorf("%s: logged %q, want one line with %s", s.name, got, s.want)
		case s.want != "" && strings.Contains(s.want, "unreachable") && !strings.Contains(got, `reason="dial tcp 127.0.0.1:5432: connect: connection refused"`):
			t.Errorf("%s: logged %q, want the driver's reason on one line", s.name, got)
		}
	}
}

// TestQuietUnreachableDropsOnlyOutageErrors: the wrapped handler drops a
// record carrying an unreachable database's error (as "err", under
// another key, or in a group), and passes every other record.
func TestQuietUnreachableDropsOnlyOutageErrors(t *testing.T) {
	down := fmt.Errorf("database: %w", errs.E("database", errs.Transient, "not reachable", fmt.Errorf("%w: refused", backend.ErrUnreachable)))
	other := errs.E("store.put", errs.Internal, "disk full")
	for _, c := range []struct {
		name string
		log  func(*slog.Logger)
		kept bool
	}{
		{"unreachable as err", func(l *slog.Logger) { l.Error("notify: read the outbox", "err", down) }, false},
		{"unreachable under another key", func(l *slog.Logger) { l.Warn("lease: renewal failed", "cause", down) }, false},
		{"unreachable in a group", func(l *slog.Logger) { l.Error("batch", slog.Group("job", "id", "j1", "err", down)) }, false},
		{"another error", func(l *slog.Logger) { l.Error("store: put", "err", other) }, true},
		{"no error", func(l *slog.Logger) { l.Info("listening", "addr", "127.0.0.1:80") }, true},
		{"with attributes bound", func(l *slog.Logger) { l.With("worker", "w1").Error("scan", "err", down) }, false},
	} {
		var buf bytes.Buffer
		c.log(slog.New(QuietUnreachable(slog.NewTextHandler(&buf, nil))))
		if kept := buf.Len() > 0; kept != c.kept {
			t.Errorf("%s: kept %v (%q), want %v", c.name, kept, buf.String(), c.kept)
		}
	}
}
