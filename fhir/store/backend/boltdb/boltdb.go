// Package boltdb serves the store's backend contract (package backend)
// from a bbolt file, the embedded default: the contract is the subset of
// bbolt the store uses, so every call maps to the bbolt call of the same
// name and the file keeps the layout it has always had.
package boltdb

import (
	"context"
	"fmt"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	bolt "go.etcd.io/bbolt"
)

// Options qualify Open.
type Options struct {
	// Timeout is how long Open waits for another process to release the
	// file; zero waits 5 seconds.
	Timeout time.Duration
	// InitialMmapSize is the address space reserved for the file (not
	// memory): a file growing within it is not remapped, and a remap
	// waits for every read transaction while holding the writer.
	InitialMmapSize int
}

// DB is a bbolt database serving backend.DB.
type DB struct {
	db *bolt.DB
}

// Open opens (creating if missing) the bbolt file at path. The freelist
// is not written at every commit (it is rebuilt by a scan at open
// instead): on a large database that write dominates commits. bbolt's
// database statistics are not kept: nothing reads them, and keeping them
// took a lock shared by every transaction at its end.
func Open(path string, opts Options) (*DB, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: opts.Timeout, NoFreelistSync: true, FreelistType: bolt.FreelistMapType,
		InitialMmapSize: opts.InitialMmapSize, NoStatistics: true,
	})
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w (is another p2pserver using it?)", path, err)
	}
	return &DB{db: db}, nil
}

// Wrap serves an open bbolt database; closing the DB closes it.
func Wrap(db *bolt.DB) *DB { return &DB{db: db} }

// Bolt returns the bbolt database, for tools that read the file as it is.
func (d *DB) Bolt() *bolt.DB { return d.db }

// View runs fn in a bbolt read transaction.
func (d *DB) View(ctx context.Context, fn func(backend.Tx) error) error {
	return d.db.View(func(btx *bolt.Tx) error { return fn(tx{btx}) })
}

// Update runs fn in bbolt's single read-write transaction.
func (d *DB) Update(ctx context.Context, fn func(backend.Tx) error) error {
	return d.db.Update(func(btx *bolt.Tx) error { return fn(tx{btx}) })
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

type tx struct{ btx *bolt.Tx }

func wrap(b *bolt.Bucket) backend.Bucket {
	if b == nil {
		return nil // a nil interface, not an interface holding nil
	}
	return bucket{b}
}

func (t tx) Bucket(name []byte) backend.Bucket { return wrap(t.btx.Bucket(name)) }

func (t tx) CreateBucket(name []byte) (backend.Bucket, error) {
	b, err := t.btx.CreateBucket(name)
	return wrap(b), err
}

func (t tx) CreateBucketIfNotExists(name []byte) (backend.Bucket, error) {
	b, err := t.btx.CreateBucketIfNotExists(name)
	return wrap(b), err
}

func (t tx) DeleteBucket(name []byte) error { return t.btx.DeleteBucket(name) }

func (t tx) ForEach(fn func(name []byte, b backend.Bucket) error) error {
	return t.btx.ForEach(func(name []byte, b *bolt.Bucket) error { return fn(name, bucket{b}) })
}

type bucket struct{ b *bolt.Bucket }

func (b bucket) Get(key []byte) []byte                    { return b.b.Get(key) }
func (b bucket) Put(key, value []byte) error              { return b.b.Put(key, value) }
func (b bucket) Delete(key []byte) error                  { return b.b.Delete(key) }
func (b bucket) Cursor() backend.Cursor                   { return b.b.Cursor() }
func (b bucket) ForEach(fn func(k, v []byte) error) error { return b.b.ForEach(fn) }
func (b bucket) Sequence() uint64                         { return b.b.Sequence() }
func (b bucket) SetSequence(v uint64) error               { return b.b.SetSequence(v) }
func (b bucket) NextSequence() (uint64, error)            { return b.b.NextSequence() }
func (b bucket) SetFillPercent(f float64)                 { b.b.FillPercent = f }
