// Package lease gives each unit of background work (a batch job, a Bulk
// Data job, an outbox delivery, an eligibility check, a periodic task) to
// one process at a time, so that several p2pserver processes can share
// one database, and hands it to another process when its holder dies.
//
// A lease is a record in the store's "leases" bucket, key -> {owner,
// expires}: owner is the id of the process holding it (random per process
// start, Manager.Owner), expires the wall-clock time after which anyone
// may take it. It is taken in a write transaction when absent, expired or
// already the taker's, renewed by the holder's heartbeat every third of
// the lease duration, and deleted when the work is done. A process that
// dies stops renewing; another takes the unit once the lease has expired
// and resumes it from its durable checkpoint.
//
// The bucket also holds one schedule record per periodic task that has
// run, "due:" + name -> {next} (see Periodic). It is no lease: nobody
// holds it, and it stays across a clean stop by design, so that the next
// start, or another process, does not run the task again before it is
// due. A clean stop (Close) releases every lease held, so what is left in
// the bucket after one is these schedules only: one per periodic task of
// the configuration (bulk/sweep always, auth/prune-jti with -secret-key,
// healthie/sync with Healthie).
//
// Work is done only under a live lease: every write that records progress
// calls Lease.Check in its own transaction (fencing), so a holder that lost
// its lease (it stalled past the expiry and another took over) cannot
// commit anything, and Lease.Context ends when the heartbeat finds the
// lease gone or cannot renew it in time, which stops the holder's work in
// flight.
//
// The package uses only the store's contract (key-value buckets and write
// transactions), so it is the same on every backend. Its correctness rests
// on two things the store promises: write transactions are serializable
// (a read and a write of the same key in one transaction cannot interleave
// with another's), and the processes' clocks agree to well within the
// lease duration.
package lease

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Bucket is the store bucket of the lease records and of the periodic
// tasks' schedules ("due:" + name).
const Bucket = "leases"

// DefaultDuration is how long a lease lasts without renewal
// (-lease-duration): the longest a unit of work waits after its holder
// dies before another process takes it over.
const DefaultDuration = 30 * time.Second

// ErrLost is returned by Check when the lease is no longer the holder's:
// another process has taken the unit over. What the caller was about to
// write must not be written.
var ErrLost = errs.E("lease.check", errs.Conflict, "the work was taken over by another process")

// record is a lease as stored.
type record struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

func (r *record) free(owner string, now time.Time) bool {
	return r == nil || r.Owner == owner || !now.Before(r.Expires)
}

func read(tx *store.Tx, key string) (*record, error) {
	raw := tx.KV(Bucket).Get([]byte(key))
	if raw == nil {
		return nil, nil
	}
	var r record
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("lease: record %q: %w", key, err)
	}
	return &r, nil
}

func write(tx *store.Tx, key string, r record) error {
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return tx.KV(Bucket).Put([]byte(key), raw)
}

// NewOwner returns a fresh owner id: the host name, the process id and
// random bytes, so that it names the process in logs and differs at every
// start.
func NewOwner() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Config sets up a Manager. The zero value of every field means its
// default.
type Config struct {
	// Owner is this process's id; default NewOwner().
	Owner string
	// Duration is how long a lease lasts without renewal; default
	// DefaultDuration. The heartbeat renews every Duration/3.
	Duration time.Duration
	// Scan is how often the workers look in the database for work made by
	// other processes (-work-scan); default Duration/10, at least 100 ms.
	Scan time.Duration
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Manager takes, renews and releases the leases of one process. Build it
// with New, start the heartbeat with Start, and Close it after the
// workers that use it.
type Manager struct {
	st  *store.Store
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	held    map[string]*Lease
	started bool
	stop    context.CancelFunc
	done    chan struct{}
}

// New builds a Manager over st.
func New(st *store.Store, cfg Config) *Manager {
	if cfg.Owner == "" {
		cfg.Owner = NewOwner()
	}
	if cfg.Duration <= 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.Scan <= 0 {
		cfg.Scan = max(cfg.Duration/10, 100*time.Millisecond)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Manager{st: st, cfg: cfg, log: cfg.Logger, held: map[string]*Lease{}}
}

// Owner is the id this Manager's leases are held under.
func (m *Manager) Owner() string { return m.cfg.Owner }

// Duration is how long a lease lasts without renewal.
func (m *Manager) Duration() time.Duration { return m.cfg.Duration }

// Scan is how often workers should look for work made by other processes.
func (m *Manager) Scan() time.Duration { return m.cfg.Scan }

func (m *Manager) now() time.Time { return m.cfg.Now() }

// Lease is one held unit of work.
type Lease struct {
	m      *Manager
	key    string
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	until time.Time // the holder may count on the lease until then
}

// Key is the unit's key.
func (l *Lease) Key() string { return l.key }

// Context ends when the lease is released or lost: work under way for the
// unit should stop. Its cause is ErrLost when lost.
func (l *Lease) Context() context.Context { return l.ctx }

// Check returns ErrLost unless tx sees the lease held by its holder. Call
// it in every transaction that records the unit's progress: the write then
// commits only if no other process has taken the unit over.
func (l *Lease) Check(tx *store.Tx) error {
	r, err := read(tx, l.key)
	if err != nil {
		return err
	}
	if r == nil || r.Owner != l.m.cfg.Owner {
		l.lose()
		return ErrLost
	}
	return nil
}

// Free reports whether tx sees key free for this Manager to take (absent,
// expired, or already its own): a scan for work reads it before trying a
// write.
func (m *Manager) Free(tx *store.Tx, key string) bool {
	r, err := read(tx, key)
	return err == nil && r.free(m.cfg.Owner, m.now())
}

// Holding reports whether this process holds key.
func (m *Manager) Holding(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held[key] != nil
}

// Acquire takes key in a transaction of its own. It returns nil and no
// error when another process holds it.
func (m *Manager) Acquire(ctx context.Context, key string) (*Lease, error) {
	var l *Lease
	err := m.st.Write(ctx, func(tx *store.Tx) (err error) {
		l, err = m.AcquireTx(tx, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// AcquireTx takes key in the write transaction tx, with what the caller
// writes there. It returns nil and no error when another process holds it.
// The lease is renewed from the commit on; if tx does not commit, the
// lease is not held and must not be used.
func (m *Manager) AcquireTx(tx *store.Tx, key string) (*Lease, error) {
	r, err := read(tx, key)
	if err != nil {
		return nil, err
	}
	now := m.now()
	if !r.free(m.cfg.Owner, now) {
		return nil, nil
	}
	if err := write(tx, key, record{Owner: m.cfg.Owner, Expires: now.Add(m.cfg.Duration)}); err != nil {
		return nil, err
	}
	// Another process's expired lease: it died or stalled, and its work
	// goes on here. Said once, so that an operator sees where it went.
	var from *record
	if r != nil && r.Owner != m.cfg.Owner {
		from = r
	}
	m.mu.Lock()
	l := m.held[key]
	m.mu.Unlock()
	if l == nil || l.ctx.Err() != nil {
		l = &Lease{m: m, key: key}
		l.ctx, l.cancel = context.WithCancelCause(context.Background())
	}
	tx.AfterCommit(func() {
		l.mu.Lock()
		l.until = now.Add(m.cfg.Duration)
		l.mu.Unlock()
		m.mu.Lock()
		m.held[key] = l
		m.mu.Unlock()
		if from != nil {
			m.log.Info("lease: taken over from a process that stopped renewing it; its work goes on here from its last checkpoint",
				"key", key, "from", from.Owner, "expired", from.Expires)
		}
	})
	return l, nil
}

// Release gives the unit up in a transaction of its own: another process
// may take it at once. The lease's context ends.
func (l *Lease) Release(ctx context.Context) error {
	err := l.m.st.Write(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		return l.ReleaseTx(tx)
	})
	l.forget()
	return err
}

// ReleaseTx gives the unit up in the write transaction tx (typically the
// one that records the unit's end). The lease's context ends once tx
// commits.
func (l *Lease) ReleaseTx(tx *store.Tx) error {
	r, err := read(tx, l.key)
	if err != nil {
		return err
	}
	if r != nil && r.Owner == l.m.cfg.Owner {
		if err := tx.KV(Bucket).Delete([]byte(l.key)); err != nil {
			return err
		}
	}
	tx.AfterCommit(l.forget)
	return nil
}

// Drop forgets the lease without writing: the heartbeat stops renewing it
// and it expires after the lease duration. For work abandoned without a
// chance to write (a failing database).
func (l *Lease) Drop() { l.forget() }

func (l *Lease) forget() {
	l.m.mu.Lock()
	if l.m.held[l.key] == l {
		delete(l.m.held, l.key)
	}
	l.m.mu.Unlock()
	l.cancel(context.Canceled)
}

func (l *Lease) lose() {
	l.m.mu.Lock()
	if l.m.held[l.key] == l {
		delete(l.m.held, l.key)
	}
	l.m.mu.Unlock()
	l.cancel(ErrLost)
}

// Start starts the heartbeat: every Duration/3 one write renews every
// lease held. It runs until ctx ends or Close is called; when ctx ends the
// leases are not released (they expire, as when the process dies).
func (m *Manager) Start(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return
	}
	m.started = true
	ctx, m.stop = context.WithCancel(ctx)
	m.done = make(chan struct{})
	go m.heartbeat(ctx)
}

// Close stops the heartbeat and releases every lease still held, so that
// other processes take the work over at once. Close the workers first:
// they stop at their checkpoints.
func (m *Manager) Close() error {
	m.mu.Lock()
	stop, done := m.stop, m.done
	var keys []*Lease
	for _, l := range m.held {
		keys = append(keys, l)
	}
	m.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	if len(keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := m.st.Write(ctx, func(tx *store.Tx) error {
		for _, l := range keys {
			if err := l.ReleaseTx(tx); err != nil {
				return err
			}
		}
		return nil
	})
	for _, l := range keys {
		l.forget()
	}
	return err
}

func (m *Manager) heartbeat(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.cfg.Duration / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.renew(ctx)
	}
}

// renew extends every lease held in one write; a lease found taken is
// lost, and so is one that could not be renewed before it expired.
func (m *Manager) renew(ctx context.Context) {
	m.mu.Lock()
	held := make([]*Lease, 0, len(m.held))
	for _, l := range m.held {
		held = append(held, l)
	}
	m.mu.Unlock()
	if len(held) == 0 {
		return
	}
	now := m.now()
	var lost []*Lease
	err := m.st.Write(ctx, func(tx *store.Tx) error {
		lost = lost[:0]
		for _, l := range held {
			r, err := read(tx, l.key)
			if err != nil {
				return err
			}
			if r == nil || r.Owner != m.cfg.Owner {
				lost = append(lost, l)
				continue
			}
			if err := write(tx, l.key, record{Owner: m.cfg.Owner, Expires: now.Add(m.cfg.Duration)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("lease: renewal failed", "leases", len(held), "err", err)
		}
		for _, l := range held {
			l.mu.Lock()
			over := !m.now().Before(l.until)
			l.mu.Unlock()
			if over {
				m.log.Warn("lease: expired without renewal; its work stops", "key", l.key)
				l.lose()
			}
		}
		return
	}
	gone := map[*Lease]bool{}
	for _, l := range lost {
		gone[l] = true
		m.log.Warn("lease: taken over by another process; its work stops here", "key", l.key)
		l.lose()
	}
	for _, l := range held {
		if !gone[l] {
			l.mu.Lock()
			l.until = now.Add(m.cfg.Duration)
			l.mu.Unlock()
		}
	}
}

// Valid reports whether the holder may still count on the lease: it has
// not been released or lost, and its last renewal has not run out. Check
// it before work outside the database that another holder would repeat
// (writing a file).
func (l *Lease) Valid() bool {
	if l.ctx.Err() != nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m.now().Before(l.until)
}
