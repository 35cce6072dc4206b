// Package store keeps FHIR resources: every version, the history change
// log, and the search indexes, all written in one transaction per write.
// It keeps them in ordered key-value buckets of a backend (package
// backend): a bbolt file (package backend/boltdb) by default. No package
// outside the store knows which backend runs.
//
// Buckets: "R:<Type>" current version by id; "H:<Type>" the earlier
// versions by id+version (each version is kept once, its JSON compressed:
// record.go); "X:<Type>" the index entries each resource has, packed (to
// remove them on update, and to check a candidate against a search's
// clauses: entries.go); "I:<Type>:<param>" one per search index, keys
// value 0x00 id (none for _id: the ids are the keys of "R:<Type>"; none for
// a parameter whose entries are all in other parameters' indexes, such as
// Observation patient in subject's: search.Source); "C"
// the global change log and "C:<Type>" the per-type one, by sequence; "M"
// the index format and the parameter numbers of packed entries.
//
// Writes go through one writer goroutine that commits whatever writes are
// waiting together (group commit), so that concurrent clients share the
// cost of a sync without any added delay for a lone client.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Store is the resource store.
type Store struct {
	db  backend.DB
	reg *search.Registry
	log *slog.Logger

	mu    sync.RWMutex
	hooks []Hook

	params params // the parameter numbers of packed index entries

	// format is the index format the store writes and reads its indexes
	// in (see keyFormat): 0 for this version's, an earlier one for tests
	// writing a database as the version of that format did.
	format int

	// stampFloor is the latest lastUpdated written to the database, by
	// this process or, as of its current commit group, another one (Unix
	// microseconds): a version is never stamped before it, so that
	// history, newest first, is in lastUpdated order and _since can stop
	// at the first older version (see writtenAt and stampBucket).
	stampFloor atomic.Int64

	// clock, when set (SetClock), is what versions are stamped by
	// instead of time.Now.
	clock atomic.Pointer[func() time.Time]

	// outage logs the database's outages (see outageLog).
	outage outageLog

	// held is how long the writer has been busy committing, and longest
	// its longest commit group (nanoseconds), since Open.
	held, longest atomic.Int64

	writes  chan *writeReq
	closing chan struct{}
	stopped chan struct{}
	once    sync.Once
}

// Hook is called inside the write transaction after each resource write; an
// error aborts the whole transaction. Domain packages use it to keep their
// own records (an outbox, a link) in the same transaction as the write.
type Hook func(tx *Tx, ev Event) error

// Op says what a write did.
type Op string

// The write operations.
const (
	OpCreate Op = "create"
	OpUpdate Op = "update"
	OpDelete Op = "delete"
)

// Event describes one resource write to hooks.
type Event struct {
	Op       Op
	Version  *Version // the new version (Deleted for a delete)
	Previous *Version // the version before, nil on create
	// Entries are the new version's index entries (none for a delete), so
	// that a hook can match the write against searches without reading.
	Entries []search.Entry
}

// Open wraps an open database (see OpenDB). The registry decides what is
// indexed.
// The caller owns db and closes it after Close.
func Open(db backend.DB, reg *search.Registry, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := db.Update(context.Background(), func(btx backend.Tx) error {
		if _, err := btx.CreateBucketIfNotExists([]byte("C")); err != nil {
			return err
		}
		_, err := btx.CreateBucketIfNotExists(stampBucket)
		return err
	}); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	s := &Store{
		db: db, reg: reg, log: log, outage: outageLog{log: log, now: time.Now},
		writes:  make(chan *writeReq, 1024),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if err := s.upgradeIndexes(); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if err := db.View(context.Background(), func(btx backend.Tx) error {
		s.loadParams(btx)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	go s.writer()
	return s, nil
}

// Registry returns the search parameter registry the store indexes with.
func (s *Store) Registry() *search.Registry { return s.reg }

// Close stops the writer after the writes already queued are committed.
func (s *Store) Close() error {
	s.once.Do(func() { close(s.closing) })
	<-s.stopped
	return nil
}

// AddHook registers h for every later write.
func (s *Store) AddHook(h Hook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks = append(s.hooks, h)
}

func (s *Store) hookList() []Hook {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.hooks
}

// Ping reports whether the database answers a read.
func (s *Store) Ping(ctx context.Context) error {
	return s.View(ctx, func(tx *Tx) error {
		b := tx.btx.Bucket([]byte("C"))
		if b == nil {
			return errors.New("store: change log bucket missing")
		}
		b.Sequence() // a read the database answers
		return nil
	})
}

// ChangeSeq returns the sequence of the last resource write the
// transaction sees: when two transactions give the same, no resource was
// written between them.
func (tx *Tx) ChangeSeq() uint64 {
	if b := tx.btx.Bucket([]byte("C")); b != nil {
		return b.Sequence()
	}
	return 0
}

// View runs fn in a read-only transaction: a consistent snapshot.
func (s *Store) View(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.View(ctx, func(btx backend.Tx) error {
		return fn(&Tx{s: s, btx: btx, ctx: ctx})
	})
	s.outage.note(err)
	return err
}

// Queued returns how many writes wait for the writer (not counting the
// group being committed).
func (s *Store) Queued() int { return len(s.writes) }

// ErrClosed is returned for writes after Close.
var ErrClosed = errs.E("store.write", errs.Transient, "the server is shutting down")

type writeReq struct {
	ctx  context.Context
	fn   func(tx *Tx) error
	done chan error
	// alone: committed in a group of its own (WriteAlone).
	alone bool
	// reads are the resources whose current versions fn reads
	// (WriteReading).
	reads []Key
}

// Write runs fn in a read-write transaction and commits it, together with
// other writes waiting at the same moment (group commit). fn runs once, in
// the single writer: it should find everything it needs prepared (decoded,
// validated, indexed with Prepare) so that it holds the writer briefly.
// Either everything fn wrote is committed, or nothing: when fn fails, what
// it wrote is taken back and the other writes of the group are committed
// without it (they are not run again).
//
// ctx is honoured until fn starts: a write whose ctx ends while it waits
// for the writer is not run and returns ctx's error. A long fn should
// check tx.Context() itself (a transaction Bundle does, per entry); once
// fn has returned, the write commits whatever ctx says, and Write returns
// the commit's outcome.
func (s *Store) Write(ctx context.Context, fn func(tx *Tx) error) error {
	return s.write(ctx, fn, false)
}

// WriteAlone is Write for a large write (a transaction Bundle of many
// entries): it is committed in a group of its own, so that the writes
// queued before it are committed first, without waiting for it, and it
// keeps no record to take itself back (a lone write that fails is rolled
// back with its transaction). The writes queued after it wait for it.
func (s *Store) WriteAlone(ctx context.Context, fn func(tx *Tx) error) error {
	return s.write(ctx, fn, true)
}

// Key names a resource: its type and id.
type Key struct{ Type, ID string }

// WriteReading is Write for a write that reads the current versions of
// the resources reads (a create, update or delete of them): on a backend
// whose reads are round trips (backend.Prefetcher), the current versions
// every write of a commit group reads are read at once before the writes
// run, instead of a round trip each in the single writer.
func (s *Store) WriteReading(ctx context.Context, reads []Key, fn func(tx *Tx) error) error {
	return s.write(ctx, fn, false, reads...)
}

func (s *Store) write(ctx context.Context, fn func(tx *Tx) error, alone bool, reads ...Key) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1), alone: alone, reads: reads}
	select {
	case s.writes <- req:
	case <-s.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued, wait for the outcome even if ctx ends: the write may
	// already be running, and then it may commit.
	return <-req.done
}

const maxGroup = 256

func (s *Store) writer() {
	defer close(s.stopped)
	var next *writeReq // taken from the queue, not yet committed
	for {
		first := next
		next = nil
		if first == nil {
			select {
			case first = <-s.writes:
			case <-s.closing:
				// Finish what is queued, then stop.
				for {
					select {
					case r := <-s.writes:
						s.commit([]*writeReq{r})
					default:
						return
					}
				}
			}
		}
		group := []*writeReq{first}
	drain:
		for !first.alone && len(group) < maxGroup {
			select {
			case r := <-s.writes:
				if r.alone {
					next = r // after this group, on its own
					break drain
				}
				group = append(group, r)
			default:
				break drain
			}
		}
		s.commit(group)
	}
}

// WriterHeld returns how long the single writer has spent committing
// since Open: in all, and in its longest commit group (a group's database
// transaction, its sync included). The writes queued behind a group wait
// for it as long.
func (s *Store) WriterHeld() (total, longest time.Duration) {
	return time.Duration(s.held.Load()), time.Duration(s.longest.Load())
}

// errNothingToCommit rolls back a group in which every write failed.
var errNothingToCommit = errors.New("store: no write of the group succeeded")

// commit runs a group in one database transaction. Each write is isolated:
// when one fails (or its client has gone), its own changes are taken back
// and it alone is answered with its error; the others commit together.
func (s *Store) commit(group []*writeReq) {
	t0 := time.Now()
	results := make([]error, len(group))
	var after []func()
	single := len(group) == 1
	err := s.db.Update(context.Background(), func(btx backend.Tx) error {
		floor := s.readFloor(btx)
		prefetchReads(btx, group)
		ok := 0
		index := &groupIndex{}
		// A backend that can take a write back by itself needs no undo
		// records; its index changes are made at once, as they cost it
		// no page writes.
		sp, _ := btx.(backend.Savepointer)
		for i, r := range group {
			if err := r.ctx.Err(); err != nil {
				results[i] = err // the client went away before its turn
				continue
			}
			tx := &Tx{s: s, btx: btx, ctx: r.ctx, writable: true, group: index}
			switch {
			case single:
			case sp != nil:
				sp.Savepoint()
				tx.group = nil
			default:
				tx.undo = &undoLog{}
			}
			if err := s.run(tx, r.fn); err != nil {
				results[i] = err
				if single {
					return err // rolls back the whole transaction
				}
				var uerr error
				if sp != nil {
					uerr = sp.RollbackTo()
				} else {
					uerr = tx.undo.rollback(btx)
				}
				if uerr != nil {
					return fmt.Errorf("store: take back a failed write: %w", uerr)
				}
				continue
			}
			ok++
			if sp != nil {
				if err := tx.applyIndex(tx.index); err != nil {
					return err
				}
			} else {
				index.add(tx.index)
			}
			after = append(after, tx.after...)
		}
		if ok == 0 {
			return errNothingToCommit
		}
		// The index changes of every write that succeeded, at once.
		gtx := &Tx{s: s, btx: btx, ctx: context.Background(), writable: true}
		if err := gtx.applyIndex(index.ops); err != nil {
			return err
		}
		return s.writeFloor(btx, floor)
	})
	if err != nil && !errors.Is(err, errNothingToCommit) && !(single && results[0] != nil) {
		// The commit itself failed: nothing of the group is written. A
		// database unreachable for now stays Transient (503); any other
		// failure is Internal.
		err = errs.E("store.commit", err)
		for i := range results {
			if results[i] == nil {
				results[i] = err
			}
		}
		after = nil
	}
	if errors.Is(err, errNothingToCommit) {
		s.outage.note(nil)
	} else {
		s.outage.note(err)
	}
	// Counted before the writes are answered, so that a writer sees its
	// own write's time.
	held := int64(time.Since(t0))
	s.held.Add(held)
	if held > s.longest.Load() {
		s.longest.Store(held)
	}
	// The committed transactions' hooks run before their writes are
	// answered, so that a Write returns with its hooks' effects in place
	// (a lease it took is held, a worker it woke is poked).
	for _, f := range after {
		f()
	}
	for i, r := range group {
		r.done <- results[i]
	}
}

// prefetchReads has a backend that prefetches read the current versions
// of the resources the group's writes read (WriteReading), a type at a
// time.
func prefetchReads(btx backend.Tx, group []*writeReq) {
	var byType map[string][][]byte
	for _, r := range group {
		for _, k := range r.reads {
			if byType == nil {
				byType = map[string][][]byte{}
			}
			byType[k.Type] = append(byType[k.Type], []byte(k.ID))
		}
	}
	for typ, ids := range byType {
		if p, ok := btx.Bucket(bucketName("R", typ)).(backend.Prefetcher); ok {
			p.Prefetch(ids)
		}
	}
}

// run calls fn, turning a panic into an internal error so that one bad
// write cannot stop the writer (and with it every later write).
func (s *Store) run(tx *Tx, fn func(tx *Tx) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("store: a write panicked", "panic", v, "stack", string(debug.Stack()))
			err = errs.E("store.write", errs.Internal, fmt.Errorf("panic: %v", v))
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	// The index changes wait for the end of the group (see commit); only
	// a failure to make them when something read an index fails the write.
	return tx.flushErr
}

// writtenAt returns t, or the latest stamp written (see stampFloor) when t
// is before it (a version prepared before another but written after it),
// and at least a microsecond after prev's, the version it follows (nil:
// none), and records the result as the latest. Called by the writer only.
func (s *Store) writtenAt(t time.Time, prev *Version) time.Time {
	if floor := time.UnixMicro(s.stampFloor.Load()).UTC(); t.Before(floor) {
		t = floor
	}
	if prev != nil && !t.After(prev.LastUpdated) {
		t = prev.LastUpdated.Add(time.Microsecond)
	}
	s.stampFloor.Store(t.UnixMicro())
	return t
}

// stampBucket's sequence is the latest lastUpdated written to the
// database (Unix microseconds), by any process: each commit group reads it
// under the write lock before its writes are stamped (see writtenAt) and
// raises it with what they were stamped. Several processes on one
// database then stamp as one would, although each prepares versions
// before knowing what the others wrote meanwhile. On PostgreSQL the
// sequence comes with the write's BEGIN, so this costs no round trip.
var stampBucket = []byte("T")

// readFloor raises the stamp floor to what the database records (see
// stampBucket) and returns that.
func (s *Store) readFloor(btx backend.Tx) uint64 {
	b := btx.Bucket(stampBucket)
	if b == nil {
		return 0
	}
	floor := b.Sequence()
	for {
		cur := s.stampFloor.Load()
		if int64(floor) <= cur || s.stampFloor.CompareAndSwap(cur, int64(floor)) {
			return floor
		}
	}
}

// writeFloor records the stamp floor in the database when the group
// raised it above floor, what the database recorded at its start.
func (s *Store) writeFloor(btx backend.Tx, floor uint64) error {
	cur := s.stampFloor.Load()
	if cur <= int64(floor) {
		return nil
	}
	b := btx.Bucket(stampBucket)
	if b == nil {
		return nil
	}
	return b.SetSequence(uint64(cur))
}

// now is the clock for lastUpdated; microsecond precision as stored.
func (s *Store) now() time.Time {
	t := time.Now()
	if c := s.clock.Load(); c != nil {
		t = (*c)()
	}
	return t.UTC().Truncate(time.Microsecond)
}

// SetClock sets the clock versions are stamped by (meta.lastUpdated,
// truncated to the microsecond stored); nil restores time.Now. A clock
// that goes back stamps no version before one already written (see
// PrepareAt). It is for tests that need versions stamped at chosen
// instants, such as several within one millisecond.
func (s *Store) SetClock(now func() time.Time) {
	if now == nil {
		s.clock.Store(nil)
		return
	}
	s.clock.Store(&now)
}
