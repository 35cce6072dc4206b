package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	return storetest.Open(t, search.NewRegistry(spec.R4()), nil)
}

// clock is a wall clock the test moves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func twoProcesses(t *testing.T) (*store.Store, *clock, *Manager, *Manager) {
	st := openStore(t)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a := New(st, Config{Owner: "a", Duration: 30 * time.Second, Now: c.now})
	b := New(st, Config{Owner: "b", Duration: 30 * time.Second, Now: c.now})
	return st, c, a, b
}

// TestLeaseTakenOverOnlyAfterExpiry: a lease held by a process that stops
// renewing it (it died) is refused to others until it expires, then taken
// over; the first holder's writes are then refused (fencing), and its
// context ends at its next renewal.
func TestLeaseTakenOverOnlyAfterExpiry(t *testing.T) {
	st, c, a, b := twoProcesses(t)
	ctx := context.Background()
	la, err := a.Acquire(ctx, "job/1")
	if err != nil || la == nil {
		t.Fatalf("a: acquire a free lease: %v, %v", la, err)
	}
	if lb, err := b.Acquire(ctx, "job/1"); err != nil || lb != nil {
		t.Fatalf("b took a live lease: %v, %v", lb, err)
	}
	c.add(29 * time.Second)
	if lb, _ := b.Acquire(ctx, "job/1"); lb != nil {
		t.Fatal("b took the lease before it expired")
	}
	// a renews: the lease lasts another full duration from now.
	a.renew(ctx)
	c.add(29 * time.Second)
	if lb, _ := b.Acquire(ctx, "job/1"); lb != nil {
		t.Fatal("b took a renewed lease")
	}
	// a dies: no more renewals.
	c.add(2 * time.Second)
	lb, err := b.Acquire(ctx, "job/1")
	if err != nil || lb == nil {
		t.Fatalf("b: acquire an expired lease: %v, %v", lb, err)
	}
	err = st.Write(ctx, func(tx *store.Tx) error { return la.Check(tx) })
	if !errors.Is(err, ErrLost) {
		t.Fatalf("a's fenced write after the takeover: %v, want ErrLost", err)
	}
	if context.Cause(la.Context()) != ErrLost {
		t.Fatalf("a's lease context after the fencing failed: %v", context.Cause(la.Context()))
	}
	if err := st.Write(ctx, func(tx *store.Tx) error { return lb.Check(tx) }); err != nil {
		t.Fatalf("b's fenced write: %v", err)
	}
}

// TestLeaseRenewalFindsTakeover: a holder that stalled past the expiry
// learns at its next renewal that another process took over, and its
// lease's context ends.
func TestLeaseRenewalFindsTakeover(t *testing.T) {
	_, c, a, b := twoProcesses(t)
	ctx := context.Background()
	la, _ := a.Acquire(ctx, "k")
	c.add(31 * time.Second)
	if lb, _ := b.Acquire(ctx, "k"); lb == nil {
		t.Fatal("b could not take an expired lease")
	}
	a.renew(ctx)
	if context.Cause(la.Context()) != ErrLost {
		t.Fatalf("a's lease after a renewal that found b: %v", context.Cause(la.Context()))
	}
	if a.Holding("k") || !b.Holding("k") {
		t.Fatalf("holding: a %v, b %v", a.Holding("k"), b.Holding("k"))
	}
}

// TestLeaseReleaseHandsOverAtOnce: a released lease (the work is done, or
// the process shuts down cleanly) is free for another process at once, and
// Close releases what is still held.
func TestLeaseReleaseHandsOverAtOnce(t *testing.T) {
	_, _, a, b := twoProcesses(t)
	ctx := context.Background()
	la, _ := a.Acquire(ctx, "k1")
	if _, err := a.Acquire(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if la.Context().Err() == nil || la.Valid() {
		t.Fatal("a released lease's context goes on")
	}
	if lb, _ := b.Acquire(ctx, "k1"); lb == nil {
		t.Fatal("b could not take a released lease")
	}
	if lb, _ := b.Acquire(ctx, "k2"); lb != nil {
		t.Fatal("b took k2 while a holds it")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if lb, _ := b.Acquire(ctx, "k2"); lb == nil {
		t.Fatal("b could not take k2 after a closed")
	}
}

// TestLeaseOneHolderUnderContention: processes racing for the same units
// each get a unit only when no other has it.
func TestLeaseOneHolderUnderContention(t *testing.T) {
	st := openStore(t)
	const procs, units = 4, 50
	var ms []*Manager
	for i := range procs {
		ms = append(ms, New(st, Config{Owner: fmt.Sprint("p", i)}))
	}
	won := make([]atomic.Int32, units)
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range units {
				l, err := m.Acquire(context.Background(), fmt.Sprint("u/", u))
				if err != nil {
					t.Error(err)
					return
				}
				if l != nil {
					won[u].Add(1)
				}
			}
		}()
	}
	wg.Wait()
	for u := range units {
		if n := won[u].Load(); n != 1 {
			t.Errorf("unit %d was acquired by %d processes", u, n)
		}
	}
}

// TestPeriodicOncePerPeriodAcrossProcesses: a periodic task runs once per
// period whichever process looks, and a run cut short by a dying process
// is run by another once its lease expires.
func TestPeriodicOncePerPeriodAcrossProcesses(t *testing.T) {
	_, c, a, b := twoProcesses(t)
	ctx := context.Background()
	var runs atomic.Int32
	task := func(context.Context) error { runs.Add(1); return nil }
	pa := a.Periodic("sweep", time.Hour, 0, task)
	pb := b.Periodic("sweep", time.Hour, 0, task)
	if !pa.RunIfDue(ctx) || pb.RunIfDue(ctx) || pa.RunIfDue(ctx) {
		t.Fatal("the task ran more than once in its first period")
	}
	c.add(time.Hour)
	if !pb.RunIfDue(ctx) || pa.RunIfDue(ctx) {
		t.Fatal("the task did not run exactly once in its second period")
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("runs = %d, want 2", n)
	}

	// a dies in the middle of a run: the task stays due, and b runs it
	// once a's lease has expired.
	c.add(time.Hour)
	dying, die := context.WithCancel(ctx)
	pa2 := a.Periodic("sweep", time.Hour, 0, func(context.Context) error { die(); return nil })
	pa2.RunIfDue(dying)
	if pb.RunIfDue(ctx) {
		t.Fatal("b ran the task while a's lease was live")
	}
	c.add(31 * time.Second)
	if !pb.RunIfDue(ctx) {
		t.Fatal("b did not run the task left by a")
	}
}

// TestPeriodicRetryAfterFailure: a failed run is due again after the retry
// delay, not the whole period.
func TestPeriodicRetryAfterFailure(t *testing.T) {
	_, c, a, _ := twoProcesses(t)
	ctx := context.Background()
	fail := true
	p := a.Periodic("sync", 15*time.Minute, time.Minute, func(context.Context) error {
		if fail {
			return errors.New("vendor down")
		}
		return nil
	})
	p.RunIfDue(ctx)
	c.add(59 * time.Second)
	if p.RunIfDue(ctx) {
		t.Fatal("ran again before the retry delay")
	}
	c.add(time.Second)
	fail = false
	if !p.RunIfDue(ctx) {
		t.Fatal("did not retry after the retry delay")
	}
	c.add(14 * time.Minute)
	if p.RunIfDue(ctx) {
		t.Fatal("ran again before the period after a success")
	}
}

// TestLeaseTakeoverIsLogged: the process that takes over a lease another
// process let expire (it died) says so once, naming the work and the
// process it came from, so that an operator finds where a dead process's
// job went; taking a free lease, or one released cleanly, says nothing.
func TestLeaseTakeoverIsLogged(t *testing.T) {
	st := openStore(t)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var logs bytes.Buffer
	a := New(st, Config{Owner: "a", Duration: 30 * time.Second, Now: c.now})
	b := New(st, Config{Owner: "b", Duration: 30 * time.Second, Now: c.now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx := context.Background()
	if l, err := a.Acquire(ctx, "job/1"); err != nil || l == nil {
		t.Fatalf("a: %v %v", l, err)
	}
	if l, err := a.Acquire(ctx, "job/2"); err != nil || l == nil {
		t.Fatalf("a: %v %v", l, err)
	} else if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	c.add(31 * time.Second) // a died holding job/1
	for _, key := range []string{"job/1", "job/2", "job/3"} {
		if l, err := b.Acquire(ctx, key); err != nil || l == nil {
			t.Fatalf("b: %s: %v %v", key, l, err)
		}
	}
	got := logs.String()
	if strings.Count(got, "lease: taken over") != 1 || !strings.Contains(got, "key=job/1 from=a") {
		t.Errorf("logs:\n%s\nwant one takeover, of job/1 from a", got)
	}
}

// TestCleanStopLeavesOnlySchedules: after a clean stop (the periodic
// tasks closed, then Close) no lease record is left in the bucket, not
// even the one of a periodic run the stop cut short; what stays is one
// "due:" schedule per periodic task that has run (when it is due next),
// so that the next start, or another process, does not run it again
// before then.
func TestCleanStopLeavesOnlySchedules(t *testing.T) {
	st, _, a, b := twoProcesses(t)
	ctx := context.Background()
	if _, err := a.Acquire(ctx, "job/1"); err != nil {
		t.Fatal(err)
	}
	done := a.Periodic("sweep", time.Hour, 0, func(context.Context) error { return nil })
	if !done.RunIfDue(ctx) {
		t.Fatal("the sweep did not run")
	}
	// A task whose run the stop cuts short: its lease is held at Close.
	stopping, stop := context.WithCancel(ctx)
	cut := a.Periodic("sync", time.Hour, 0, func(context.Context) error { stop(); return nil })
	if !cut.RunIfDue(stopping) || !a.Holding("periodic:sync") {
		t.Fatal("the cut run does not hold its lease")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	if err := st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(Bucket).Scan(nil, func(k, _ []byte) (bool, error) {
			keys[string(k)] = true
			return true, nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || !keys["due:sweep"] {
		t.Errorf("after a clean stop the bucket holds %v, want only due:sweep", keys)
	}
	// The schedule is what keeps the sweep from running again at once; the
	// cut task is due and runs on the next process at once.
	if b.Periodic("sweep", time.Hour, 0, func(context.Context) error { return nil }).RunIfDue(ctx) {
		t.Error("the sweep ran again within its period after a restart")
	}
	if !b.Periodic("sync", time.Hour, 0, func(context.Context) error { return nil }).RunIfDue(ctx) {
		t.Error("the task cut short by the stop did not run at once on the next process")
	}
}
