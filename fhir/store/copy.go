package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// copyProgress is the bucket, in the database copied to, that records how
// far a Copy has come: bucket name -> the last key copied (or copyDone
// once the bucket is whole). It stays, so that a Copy run again on a
// finished copy verifies it.
const copyProgress = "migrate_progress"

// copyDone marks a bucket copied whole in copyProgress.
var copyDone = []byte{0xff, 'd', 'o', 'n', 'e'}

// copyVerified is the key, in copyProgress, Copy writes once its
// verification has passed: a database with copyProgress and without it
// holds a copy cut short (see CheckCopied).
var copyVerified = []byte{0xff, 'v', 'e', 'r', 'i', 'f', 'i', 'e', 'd'}

// copySource is the key, in copyProgress, of the fingerprint of the
// database the copy is of (see sourcePrint): a Copy into a database
// holding a copy of another one is refused.
var copySource = []byte{0xff, 's', 'o', 'u', 'r', 'c', 'e'}

// ErrOtherSource refuses a Copy into a database that holds a copy, or
// part of one, of another database.
var ErrOtherSource = errors.New("the database copied to holds a copy of another database: copy into a new, empty database")

// ErrCopyUnfinished refuses to serve a database that a Copy into it has
// not finished (and verified): part of its resources, versions or
// definitions are missing, and a write made there would be overwritten
// by the copy when it is resumed.
var ErrCopyUnfinished = errors.New("the database holds a `p2pserver migrate` copy that has not finished: run the same migrate command again to finish and verify it, then start p2pserver")

// CheckCopied returns ErrCopyUnfinished when db holds a Copy that has
// not finished and been verified, nil when it holds none or a finished
// one.
func CheckCopied(ctx context.Context, db DB) error {
	unfinished := false
	if err := db.View(ctx, func(tx backend.Tx) error {
		if p := tx.Bucket([]byte(copyProgress)); p != nil {
			unfinished = p.Get(copyVerified) == nil
		}
		return nil
	}); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if unfinished {
		return ErrCopyUnfinished
	}
	return nil
}

// CopyChunk is how many keys of a bucket one transaction of Copy writes.
const CopyChunk = 2000

// BucketCount is one line of Copy's verification: a bucket's keys and
// sequence in both databases.
type BucketCount struct {
	Bucket   string
	From, To int
	// FromSeq and ToSeq are the bucket's sequences.
	FromSeq, ToSeq uint64
}

// OK reports whether the bucket is the same in both databases, as far
// as counts and sequences tell.
func (c BucketCount) OK() bool { return c.From == c.To && c.FromSeq == c.ToSeq }

// ErrTargetNotEmpty refuses a Copy into a database that holds data not
// put there by an earlier Copy.
var ErrTargetNotEmpty = errors.New("the database copied to is not empty, and holds no unfinished copy: copy into a new, empty database")

// Copy copies every bucket of from into to (but from's own copy
// progress record, when from was made by a Copy), key by key, with the buckets'
// sequences, through the backend contract (so that each backend stores
// them its own way), CopyChunk keys per write transaction. It is
// resumable: how far each bucket has come is recorded in to, in the
// transaction that writes the keys, and a Copy run again goes on from
// there; running it again on a finished copy only verifies it (and fails
// once the copy has been written to). from must
// not be written meanwhile (bbolt's file lock keeps a p2pserver from it).
// progress, when set, is told after each chunk. At the end the keys and
// sequences of every bucket are counted in both databases: the counts are
// returned, with an error if any differ; when none do, to is marked
// verified, and a p2pserver may start on it (see CheckCopied).
func Copy(ctx context.Context, from, to DB, progress func(bucket string, copied int)) ([]BucketCount, error) {
	var names []string
	if err := from.View(ctx, func(tx backend.Tx) error {
		return tx.ForEach(func(name []byte, _ backend.Bucket) error {
			// from's own record of the copy that made it is not data:
			// copied, it would tell this copy that buckets are done.
			if string(name) != copyProgress {
				names = append(names, string(name))
			}
			return nil
		})
	}); err != nil {
		return nil, fmt.Errorf("migrate: list the buckets: %w", err)
	}
	sort.Strings(names)
	print, err := sourcePrint(ctx, from, names)
	if err != nil {
		return nil, fmt.Errorf("migrate: read the source: %w", err)
	}
	if err := to.Update(ctx, func(tx backend.Tx) error {
		if p := tx.Bucket([]byte(copyProgress)); p != nil {
			// A copy begun before: go on if it is of from (a copy
			// begun by an earlier version, which kept no print, is
			// taken for one).
			if was := p.Get(copySource); was != nil && !bytes.Equal(was, print) {
				return ErrOtherSource
			}
			return nil
		}
		empty := true
		if err := tx.ForEach(func(_ []byte, b backend.Bucket) error {
			if k, _ := b.Cursor().First(); k != nil {
				empty = false
			}
			return nil
		}); err != nil {
			return err
		}
		if !empty {
			return ErrTargetNotEmpty
		}
		p, err := tx.CreateBucket([]byte(copyProgress))
		if err != nil {
			return err
		}
		return p.Put(copySource, print)
	}); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	for _, name := range names {
		if err := copyBucket(ctx, from, to, name, progress); err != nil {
			return nil, fmt.Errorf("migrate: bucket %s: %w", name, err)
		}
	}
	counts, err := countBuckets(ctx, from, to, names)
	if err != nil {
		return nil, fmt.Errorf("migrate: verify: %w", err)
	}
	var bad []string
	for _, c := range counts {
		if !c.OK() {
			bad = append(bad, c.Bucket)
		}
	}
	if len(bad) > 0 {
		return counts, fmt.Errorf("migrate: the copy differs from the original in %d buckets: %v", len(bad), bad)
	}
	if err := to.Update(ctx, func(tx backend.Tx) error {
		p := tx.Bucket([]byte(copyProgress))
		if p == nil {
			return errors.New("the copy's progress record is gone")
		}
		return p.Put(copyVerified, copyDone)
	}); err != nil {
		return counts, fmt.Errorf("migrate: record the copy verified: %w", err)
	}
	return counts, nil
}

// copyBucket copies one bucket, chunk by chunk, from where an earlier run
// stopped.
func copyBucket(ctx context.Context, from, to DB, name string, progress func(string, int)) error {
	var after []byte
	done := false
	if err := to.View(ctx, func(tx backend.Tx) error {
		if p := tx.Bucket([]byte(copyProgress)); p != nil {
			if v := p.Get([]byte(name)); v != nil {
				if bytes.Equal(v, copyDone) {
					done = true
				} else {
					after = bytes.Clone(v)
				}
			}
		}
		return nil
	}); err != nil || done {
		return err
	}
	copied := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		type kv struct{ k, v []byte }
		var chunk []kv
		var seq uint64
		last := false
		if err := from.View(ctx, func(tx backend.Tx) error {
			b := tx.Bucket([]byte(name))
			if b == nil {
				last = true
				return nil
			}
			seq = b.Sequence()
			c := b.Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else if k, v = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, v = c.Next()
			}
			for ; k != nil && len(chunk) < CopyChunk; k, v = c.Next() {
				chunk = append(chunk, kv{bytes.Clone(k), bytes.Clone(v)})
			}
			last = k == nil
			return nil
		}); err != nil {
			return err
		}
		if err := to.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			// The keys come in order, each after the last: pages split
			// at bbolt's default half would stay half empty.
			if f, ok := b.(backend.FillPercenter); ok {
				f.SetFillPercent(0.9)
			}
			for _, e := range chunk {
				if err := b.Put(e.k, e.v); err != nil {
					return err
				}
			}
			p := tx.Bucket([]byte(copyProgress))
			if p == nil {
				return errors.New("the copy's progress record is gone")
			}
			if last {
				if err := b.SetSequence(seq); err != nil {
					return err
				}
				return p.Put([]byte(name), copyDone)
			}
			return p.Put([]byte(name), chunk[len(chunk)-1].k)
		}); err != nil {
			return err
		}
		copied += len(chunk)
		if progress != nil {
			progress(name, copied)
		}
		if last {
			return nil
		}
		after = chunk[len(chunk)-1].k
	}
}

// countBuckets counts the keys and reads the sequence of each bucket in
// both databases.
func countBuckets(ctx context.Context, from, to DB, names []string) ([]BucketCount, error) {
	out := make([]BucketCount, len(names))
	count := func(db DB, set func(i, n int, seq uint64)) error {
		return db.View(ctx, func(tx backend.Tx) error {
			for i, name := range names {
				b := tx.Bucket([]byte(name))
				if b == nil {
					set(i, 0, 0)
					continue
				}
				n := 0
				c := b.Cursor()
				for k, _ := c.First(); k != nil; k, _ = c.Next() {
					n++
				}
				set(i, n, b.Sequence())
			}
			return nil
		})
	}
	for i, name := range names {
		out[i].Bucket = name
	}
	if err := count(from, func(i, n int, seq uint64) { out[i].From, out[i].FromSeq = n, seq }); err != nil {
		return nil, err
	}
	if err := count(to, func(i, n int, seq uint64) { out[i].To, out[i].ToSeq = n, seq }); err != nil {
		return nil, err
	}
	return out, nil
}

// sourcePrint is a fingerprint of the database from, whose buckets are
// names: a SHA-256 of each bucket's name, sequence, first and last key.
// It is the same for every run of a Copy of one database (which is not
// written meanwhile) and tells two databases apart unless they hold the
// same buckets with the same first and last keys and sequences.
func sourcePrint(ctx context.Context, from DB, names []string) ([]byte, error) {
	h := sha256.New()
	err := from.View(ctx, func(tx backend.Tx) error {
		for _, name := range names {
			b := tx.Bucket([]byte(name))
			if b == nil {
				continue
			}
			c := b.Cursor()
			first, _ := c.First()
			last, _ := c.Last()
			for _, part := range [][]byte{[]byte(name), binary.BigEndian.AppendUint64(nil, b.Sequence()), first, last} {
				h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(part))))
				h.Write(part)
			}
		}
		return nil
	})
	return h.Sum(nil), err
}
