package lease

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// Periodic runs a task (a sweep, a full sync) once per period among all
// the processes on the database: the process that finds it due takes its
// lease, runs it, and records when it is due next. A process that dies
// while running it leaves it due: another runs it once the lease expires.
type Periodic struct {
	m      *Manager
	name   string
	period time.Duration
	retry  time.Duration
	fn     func(ctx context.Context) error

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// dueRecord is when a periodic task is due next, kept under "due:" + name
// in Bucket. It is a schedule, not a lease: it outlives the run and a
// clean stop on purpose (a restart must not run the task again before
// it is due).
type dueRecord struct {
	Next time.Time `json:"next"`
}

// errNotDue is how RunIfDue's claim says the task is not due.
var errNotDue = errors.New("lease: not due")

func dueKey(name string) []byte { return []byte("due:" + name) }

// Periodic returns the task name, run by fn every period; after a run
// that fails it is due again after retry (at most period). Start it with
// Start.
func (m *Manager) Periodic(name string, period, retry time.Duration, fn func(ctx context.Context) error) *Periodic {
	if retry <= 0 || retry > period {
		retry = period
	}
	return &Periodic{m: m, name: name, period: period, retry: retry, fn: fn}
}

// Start looks whether the task is due now and then every min(period,
// lease duration), until ctx ends or Close is called.
func (p *Periodic) Start(ctx context.Context) {
	ctx, p.stop = context.WithCancel(ctx)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			p.RunIfDue(ctx)
			t.Reset(min(p.period, p.m.cfg.Duration))
		}
	}()
}

// Close stops the task's goroutine and waits for the run under way.
func (p *Periodic) Close() {
	if p.stop != nil {
		p.stop()
	}
	p.wg.Wait()
}

// RunIfDue runs the task now if it is due and no other process runs it;
// it reports whether it ran.
func (p *Periodic) RunIfDue(ctx context.Context) bool {
	key := "periodic:" + p.name
	now := p.m.now()
	due := false
	if err := p.m.st.View(ctx, func(tx *store.Tx) error {
		next, err := readDue(tx, p.name)
		due = err == nil && !now.Before(next) && p.m.Free(tx, key)
		return err
	}); err != nil || !due {
		return false
	}
	var l *Lease
	err := p.m.st.Write(ctx, func(tx *store.Tx) (err error) {
		next, err := readDue(tx, p.name)
		if err != nil {
			return err
		}
		if now.Before(next) {
			return errNotDue
		}
		l, err = p.m.AcquireTx(tx, key)
		return err
	})
	if err != nil || l == nil {
		if err != nil && !errors.Is(err, errNotDue) && ctx.Err() == nil {
			p.m.log.Error("lease: periodic task", "task", p.name, "err", err)
		}
		return false
	}
	rctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.Context(), cancel)
	runErr := p.fn(rctx)
	stop()
	cancel()
	after := p.period
	if runErr != nil {
		after = p.retry
		if ctx.Err() == nil {
			p.m.log.Warn("lease: periodic task failed", "task", p.name, "err", runErr, "again in", after)
		}
	}
	if ctx.Err() != nil {
		// Stopped: the task stays due; the lease expires or Close releases it.
		return true
	}
	err = p.m.st.Write(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		if err := l.Check(tx); err != nil {
			return err
		}
		raw, err := json.Marshal(dueRecord{Next: p.m.now().Add(after)})
		if err != nil {
			return err
		}
		if err := tx.KV(Bucket).Put(dueKey(p.name), raw); err != nil {
			return err
		}
		return l.ReleaseTx(tx)
	})
	if err != nil {
		l.Drop()
		if ctx.Err() == nil && !errors.Is(err, ErrLost) {
			p.m.log.Error("lease: record periodic task", "task", p.name, "err", err)
		}
	}
	return true
}

func readDue(tx *store.Tx, name string) (time.Time, error) {
	raw := tx.KV(Bucket).Get(dueKey(name))
	if raw == nil {
		return time.Time{}, nil
	}
	var d dueRecord
	if err := json.Unmarshal(raw, &d); err != nil {
		return time.Time{}, err
	}
	return d.Next, nil
}
