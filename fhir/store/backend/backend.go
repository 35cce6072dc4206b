// Package backend is the ordered key-value contract the store keeps its
// data in, whatever the database: named buckets of byte keys in byte
// order, each with a sequence, read in snapshot transactions and written
// in serialized read-write ones. It is the subset of bbolt the store uses,
// so that bbolt serves it as it is (package boltdb) and another database
// maps it onto its own tables (package pgdb).
//
// Memory returned by Get and cursors is valid only during the transaction
// and must not be changed. A backend that can fail where bbolt cannot (a
// lost connection) remembers the first failure in the transaction, answers
// nothing after it, and returns it from View or Update: a transaction that
// saw a failure never commits.
package backend

import (
	"context"
	"errors"
)

// ErrUnreachable is wrapped by the errors of a database that could not be
// reached (a PostgreSQL server stopped, restarting or failing over): the
// transaction did nothing, and the same one may succeed later.
var ErrUnreachable = errors.New("the database is not reachable")

// DB is an open database.
type DB interface {
	// View runs fn in a read-only transaction: a consistent snapshot.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction and commits it when fn
	// returns nil (nothing of it when fn fails). Update transactions are
	// serialized: one at a time in the whole database, across processes.
	Update(ctx context.Context, fn func(Tx) error) error
	// Close releases the database; transactions must have ended.
	Close() error
}

// Tx is a transaction.
type Tx interface {
	// Bucket returns the bucket name, nil when it does not exist.
	Bucket(name []byte) Bucket
	// CreateBucket creates the bucket name, failing if it exists.
	CreateBucket(name []byte) (Bucket, error)
	// CreateBucketIfNotExists returns the bucket name, created if needed.
	CreateBucketIfNotExists(name []byte) (Bucket, error)
	// DeleteBucket removes the bucket name with every key it holds.
	DeleteBucket(name []byte) error
	// ForEach calls fn with every bucket, in name order, until it fails.
	ForEach(fn func(name []byte, b Bucket) error) error
}

// Bucket is an ordered collection of keys.
type Bucket interface {
	// Get returns the value at key, nil if absent.
	Get(key []byte) []byte
	// Put sets key to value (both non-empty key, any value).
	Put(key, value []byte) error
	// Delete removes key; removing an absent key is not an error.
	Delete(key []byte) error
	// Cursor returns a cursor over the bucket's keys in byte order.
	Cursor() Cursor
	// ForEach calls fn with every key and value in order until it fails.
	ForEach(fn func(k, v []byte) error) error
	// Sequence returns the bucket's sequence, 0 for a new bucket.
	Sequence() uint64
	// SetSequence sets the bucket's sequence.
	SetSequence(v uint64) error
	// NextSequence increments the bucket's sequence and returns it.
	NextSequence() (uint64, error)
}

// Cursor moves over a bucket's keys in byte order. Each move returns the
// key and value it lands on, nil when it leaves the bucket.
type Cursor interface {
	First() (key, value []byte)
	Last() (key, value []byte)
	// Seek lands on the first key at or after seek.
	Seek(seek []byte) (key, value []byte)
	Next() (key, value []byte)
	Prev() (key, value []byte)
}

// FillPercenter is a bucket whose pages can be filled fuller on a split,
// for keys that mostly grow at the end (bbolt's Bucket.FillPercent).
type FillPercenter interface {
	SetFillPercent(f float64)
}

// PrefixCursorer is a bucket that can read its values cut to their first
// n bytes, for a scan that needs only a record's head: a database that
// keeps the rest apart then does not read it.
type PrefixCursorer interface {
	PrefixCursor(n int) Cursor
}

// BoundedCursorer is a bucket whose cursor can be told where a scan
// stops: a database whose reads are round trips then reads no key past
// it, and reads the range in fewer round trips.
type BoundedCursorer interface {
	// BoundedCursor returns a cursor over the keys before end only:
	// its moves return nil where they would land at or after end, and
	// Last lands on the last key before end.
	BoundedCursor(end []byte) Cursor
}

// BoundedSeeker is a bucket that can place several bounded cursors (see
// BoundedCursorer) at once: a database whose reads are round trips reads
// the first keys of every range in one.
type BoundedSeeker interface {
	// SeekBounded returns, for each i, a cursor over the keys before
	// ends[i] moved by Seek(seeks[i]), and the key and value it is on
	// (nil when none).
	SeekBounded(seeks, ends [][]byte) (cs []Cursor, keys, vals [][]byte)
}

// Prefetcher is a bucket that can read many keys in one round trip, for
// the Gets that follow; a database whose reads are local need not be one.
type Prefetcher interface {
	Prefetch(keys [][]byte)
}

// Savepointer is a write transaction that can take back the changes made
// since a mark without reading what they replaced, for a write of a
// commit group that fails alone: a database whose reads are round trips
// then does not read a key before each change.
type Savepointer interface {
	// Savepoint marks the point RollbackTo takes the transaction back
	// to, forgetting an earlier mark.
	Savepoint()
	// RollbackTo takes back every change made since the mark.
	RollbackTo() error
}

// Join names what a read of a search index also reads (see Joiner): of
// the resources its entries name, the values in the bucket Records (a
// type's current versions) and, when Entries is not nil, in the bucket
// Entries (their index entries), at the resource's id. The read is of
// Read entries (fewer when its range holds fewer; 0: as many as the
// database reads at first), and of the first First of them reads the
// resources of those whose id sorts after After (in byte order): a page
// of results that starts after After.
//
// An index key is an entry key, 0x00, and the id in its index form: 0x01
// and 16 bytes for an id that is a UUID in lowercase hexadecimal with
// dashes (the bytes it spells), the id's own bytes for any other.
type Join struct {
	Records, Entries []byte
	After            []byte
	Read, First      int
}

// Joiner is a search index bucket whose reads can also read the
// resources their entries name (see Join), in the same round trip, for
// the Gets and Prefetches that follow, which then cost none: a database
// whose reads are round trips reads a page of search results in one.
// The store asks for it only where it reads those records next (a page
// of results), not for counts or checks of a write.
type Joiner interface {
	// Join returns the bucket with its keys and values as they are,
	// whose cursors' first read, when forward (a Seek, or
	// SeekBounded's), is of j.Read entries and also reads what j
	// names; its other reads are the bucket's own.
	Join(j Join) Bucket
}

// PrefetcherWith is a bucket that can prefetch (see Prefetcher) the
// values of its keys in another bucket of the same keys with them, in
// the same round trip: a type's current versions with their index
// entries, or without, where a Prefetcher reads both or guesses.
type PrefetcherWith interface {
	// PrefetchWith reads the keys of the bucket, and of the bucket
	// named also when it is not nil.
	PrefetchWith(keys [][]byte, also []byte)
}
