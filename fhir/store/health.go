package store

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// Unreachable reports whether err is, or wraps, the failure of a database
// that could not be reached (a PostgreSQL server stopped, restarting or
// failing over; never on bbolt). Such a failure is logged by the store
// itself, once per outage (see outageLog): a caller that logs its own
// failures may leave these out (see QuietUnreachable).
func Unreachable(err error) bool { return errors.Is(err, backend.ErrUnreachable) }

// outageRemind is how often, while the database stays unreachable, the
// store says so again, with the number of transactions that failed since.
const outageRemind = time.Minute

// outageLog logs a database outage as the store's transactions see it:
// one "database unreachable" line when a first one fails so, one
// "database still unreachable" line per outageRemind while they go on
// failing, and one "database reachable again" line at the first that
// succeeds after. Every background worker of a process tries the database
// several times a second, and each logged its own multi-line error per
// attempt.
type outageLog struct {
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	down     bool
	since    time.Time // the first failure
	said     time.Time // the last line
	failures int       // transactions failed since the last line
}

// note records the outcome of a transaction: err nil, or its error.
func (o *outageLog) note(err error) {
	unreachable := Unreachable(err)
	if !unreachable && (err != nil || !o.isDown()) {
		return // nothing to say: up and still up, or another failure
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	switch {
	case unreachable && !o.down:
		o.down, o.since, o.said, o.failures = true, now, now, 0
		o.log.Error("database unreachable: transactions fail until it is back (503 with Retry-After to clients; background work waits and tries again)",
			"reason", oneLine(err))
	case unreachable:
		o.failures++
		if now.Sub(o.said) >= outageRemind {
			o.log.Error("database still unreachable", "for", now.Sub(o.since).Round(time.Second),
				"failed", o.failures, "reason", oneLine(err))
			o.said, o.failures = now, 0
		}
	case o.down:
		o.down = false
		o.log.Warn("database reachable again", "after", now.Sub(o.since).Round(time.Millisecond), "failed", o.failures)
	}
}

func (o *outageLog) isDown() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.down
}

// oneLine is the text of what made err unreachable (the driver's error,
// after the layers that wrap it), on one line: a driver's may span
// several.
func oneLine(err error) string {
	text := err.Error()
	if _, cause, ok := strings.Cut(text, backend.ErrUnreachable.Error()+": "); ok {
		text = cause
	}
	return strings.Join(strings.Fields(text), " ")
}

// QuietUnreachable wraps h so that it drops the records carrying an
// error of an unreachable database (see Unreachable) among their
// attributes: the store has logged the outage itself (see outageLog),
// and every worker's own line per attempt would bury everything else.
// Other records pass through unchanged.
func QuietUnreachable(h slog.Handler) slog.Handler { return quietHandler{h} }

type quietHandler struct{ slog.Handler }

func (q quietHandler) Handle(ctx context.Context, r slog.Record) error {
	drop := false
	r.Attrs(func(a slog.Attr) bool {
		drop = unreachableAttr(a)
		return !drop
	})
	if drop {
		return nil
	}
	return q.Handler.Handle(ctx, r)
}

func (q quietHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return quietHandler{q.Handler.WithAttrs(as)}
}

func (q quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{q.Handler.WithGroup(name)}
}

func unreachableAttr(a slog.Attr) bool {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		for _, g := range v.Group() {
			if unreachableAttr(g) {
				return true
			}
		}
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return Unreachable(err)
		}
	}
	return false
}
