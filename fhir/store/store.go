// Package store keeps FHIR resources in bbolt: every version, the history
// change log, and the search indexes, all written in one transaction per
// write. It is the only package that touches bbolt for resources.
//
// Buckets: "R:<Type>" current version by id; "H:<Type>" every version by
// id+version; "X:<Type>" the index entries each resource has (to remove them
// on update); "I:<Type>:<param>" one per search index, keys value 0x00 id;
// "C" the global change log and "C:<Type>" the per-type one, by sequence.
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
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/internal/errs"
	bolt "go.etcd.io/bbolt"
)

// Store is the resource store.
type Store struct {
	db  *bolt.DB
	reg *search.Registry
	log *slog.Logger

	mu    sync.RWMutex
	hooks []Hook

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
}

// Open wraps an open bbolt database. The registry decides what is indexed.
// The caller owns db and closes it after Close.
func Open(db *bolt.DB, reg *search.Registry, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := db.Update(func(btx *bolt.Tx) error {
		_, err := btx.CreateBucketIfNotExists([]byte("C"))
		return err
	}); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	s := &Store{
		db: db, reg: reg, log: log,
		writes:  make(chan *writeReq, 1024),
		closing: make(chan struct{}),
		stopped: make(chan struct{}),
	}
	if err := s.upgradeIndexes(); err != nil {
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
		if tx.btx.Bucket([]byte("C")) == nil {
			return errors.New("store: change log bucket missing")
		}
		return nil
	})
}

// View runs fn in a read-only transaction: a consistent snapshot.
func (s *Store) View(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(btx *bolt.Tx) error {
		return fn(&Tx{s: s, btx: btx, ctx: ctx})
	})
}

// ErrClosed is returned for writes after Close.
var ErrClosed = errs.E("store.write", errs.Transient, "the server is shutting down")

type writeReq struct {
	ctx  context.Context
	fn   func(tx *Tx) error
	done chan error
}

// Write runs fn in a read-write transaction and commits it, together with
// other writes waiting at the same moment. fn may be run more than once
// (when a write sharing its commit fails, the others are run again without
// it), so it must only have effects through tx, or reset what it sets.
// Either everything fn wrote is committed, or nothing.
func (s *Store) Write(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	select {
	case s.writes <- req:
	case <-s.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued, wait for the outcome even if ctx ends: the write may commit.
	return <-req.done
}

const maxGroup = 256

func (s *Store) writer() {
	defer close(s.stopped)
	for {
		var first *writeReq
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
		group := []*writeReq{first}
	drain:
		for len(group) < maxGroup {
			select {
			case r := <-s.writes:
				group = append(group, r)
			default:
				break drain
			}
		}
		s.commit(group)
	}
}

type groupFailure struct {
	index int
	err   error
}

func (g *groupFailure) Error() string { return g.err.Error() }

// commit runs a group in one transaction. When one write fails, it is
// reported alone and the others are committed without it.
func (s *Store) commit(group []*writeReq) {
	for len(group) > 0 {
		var after []func()
		err := s.db.Update(func(btx *bolt.Tx) error {
			after = after[:0]
			for i, r := range group {
				if err := r.ctx.Err(); err != nil {
					return &groupFailure{i, err}
				}
				tx := &Tx{s: s, btx: btx, ctx: r.ctx, writable: true}
				if err := r.fn(tx); err != nil {
					return &groupFailure{i, err}
				}
				after = append(after, tx.after...)
			}
			return nil
		})
		var gf *groupFailure
		if errors.As(err, &gf) {
			group[gf.index].done <- gf.err
			group = append(group[:gf.index:gf.index], group[gf.index+1:]...)
			continue
		}
		if err != nil {
			err = errs.E("store.commit", errs.Internal, err)
		}
		for _, r := range group {
			r.done <- err
		}
		if err == nil {
			for _, f := range after {
				f()
			}
		}
		return
	}
}

// now is the clock for lastUpdated; microsecond precision as stored.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }
