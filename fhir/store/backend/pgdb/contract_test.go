package pgdb_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// buckets covers every table the store's buckets map onto.
var buckets = []string{"outbox", "R:Patient", "H:Patient", "X:Patient", "I:Patient:name", "C", "C:Patient", "jobs"}

// randKey returns a key of bucket name, from a small space so that keys
// meet: ids, history keys, index keys, sequences, arbitrary bytes.
func randKey(r *rand.Rand, name string) []byte {
	id := func() string {
		const a = "abc-"
		n := 1 + r.IntN(3)
		var b strings.Builder
		for range n {
			b.WriteByte(a[r.IntN(len(a))])
		}
		return b.String()
	}
	switch {
	case name == "outbox":
		const a = "\x00\x01ab\xff"
		n := 1 + r.IntN(4)
		k := make([]byte, n)
		for i := range k {
			k[i] = a[r.IntN(len(a))]
		}
		return k
	case strings.HasPrefix(name, "R:"), strings.HasPrefix(name, "X:"):
		return []byte(id())
	case strings.HasPrefix(name, "H:"):
		return binary.BigEndian.AppendUint64(append([]byte(id()), 0), uint64(1+r.IntN(3)))
	case strings.HasPrefix(name, "I:"):
		keys := []string{"a", "ab", "b", "n\x01x", "n\x01xy", "\xff\xfe"}
		k := append([]byte(keys[r.IntN(len(keys))]), 0)
		if r.IntN(3) == 0 {
			// An id kept in 16 bytes (the store's lowercase UUIDs): 0x01
			// and bytes of any value, which sort before the ids as text.
			const a = "\x00\x01\x7f\x80\xff"
			k = append(k, 1)
			for range 16 {
				k = append(k, a[r.IntN(len(a))])
			}
			return k
		}
		return append(k, id()...)
	default:
		return binary.BigEndian.AppendUint64(nil, uint64(r.IntN(12)))
	}
}

// randSeek returns a seek key for name: a key, a prefix of one, or one
// with more after it.
func randSeek(r *rand.Rand, name string) []byte {
	k := randKey(r, name)
	switch r.IntN(6) {
	case 5:
		return nil
	case 0:
		if name == "outbox" || name == "C" || name == "C:Patient" || strings.HasPrefix(name, "I:") || strings.HasPrefix(name, "H:") {
			return k[:r.IntN(len(k)+1)]
		}
	case 1:
		if name == "outbox" || name == "C" || name == "C:Patient" {
			return append(k, 0x7f)
		}
	}
	return k
}

// randValue returns a value; for resources, sometimes a record whose
// version has it in history too (kept once), sometimes a short one.
func randValue(r *rand.Rand) []byte {
	v := make([]byte, r.IntN(40))
	for i := range v {
		v[i] = byte(r.IntN(4))
	}
	return v
}

func record(version int, body string) []byte {
	b := make([]byte, 17, 17+len(body))
	binary.BigEndian.PutUint64(b[1:], uint64(version))
	return append(b, body...)
}

type pair struct{ k, v []byte }

func (p pair) String() string { return fmt.Sprintf("%q=%q", p.k, p.v) }

var errTakeBack = errors.New("taken back")

// TestBackendsAgree runs the same random transactions on bbolt and on
// PostgreSQL and checks every answer is the same: which buckets exist
// (made, made again, deleted, never made), gets, cursor moves in both
// directions over the transaction's own changes merged with the
// database's rows, sequences, and what a later transaction sees after a
// commit or a rollback.
func TestBackendsAgree(t *testing.T) {
	ctx := context.Background()
	bolt, pg := bothBackends(t)
	r := rand.New(rand.NewPCG(1, 2))
	var log []string
	fail := func(format string, args ...any) {
		t.Helper()
		if len(log) > 40 {
			log = log[len(log)-40:]
		}
		t.Fatalf("%s\nafter:\n%s", fmt.Sprintf(format, args...), strings.Join(log, "\n"))
	}
	// step runs one random operation on both, returning what each saw.
	step := func(bt, pt backend.Tx, write bool, cursors map[string][2]backend.Cursor) {
		name := buckets[r.IntN(len(buckets))]
		bb, pb := bt.Bucket([]byte(name)), pt.Bucket([]byte(name))
		if (bb == nil) != (pb == nil) {
			fail("%s exists: bolt %v, pg %v", name, bb != nil, pb != nil)
		}
		op := r.IntN(11)
		if !write && (op < 4 || op == 10) {
			op = 4 + r.IntN(6)
		}
		if j, ok := pb.(backend.Joiner); ok && strings.HasPrefix(name, "I:") && r.IntN(2) == 0 {
			// Read as for a page of results: the reads bring the
			// records (and entries) the index entries name into the
			// transaction, where the Gets and cursors that follow
			// must find what the database and the transaction's own
			// changes hold, as bbolt does.
			jn := backend.Join{Records: []byte("R:Patient"), After: randKey(r, "R:Patient")[:r.IntN(2)], Read: r.IntN(4), First: 1 + r.IntN(4)}
			if r.IntN(2) == 0 {
				jn.Entries = []byte("X:Patient")
			}
			pb = j.Join(jn)
			log = append(log, fmt.Sprintf("join %s: %+v", name, jn))
			defer checkJoined(bt, pt, fail)
		}
		if op < 4 && bb == nil {
			// Written to, the bucket is made first.
			var perr error
			bb, _ = bt.CreateBucket([]byte(name))
			if pb, perr = pt.CreateBucket([]byte(name)); perr != nil {
				fail("pg create %s: %v", name, perr)
			}
			log = append(log, "create "+name)
		}
		if op < 3 || op == 10 {
			// bbolt's cursors are undefined after a change to their
			// bucket: they are made again.
			delete(cursors, name)
			delete(cursors, "H:Patient")
		}
		switch op {
		case 10:
			// The bucket itself: made, made if missing, or deleted, with
			// the same refusals (made twice, deleted when missing).
			var a, b error
			var what string
			switch r.IntN(3) {
			case 0:
				what = "CreateBucket"
				_, a = bt.CreateBucket([]byte(name))
				_, b = pt.CreateBucket([]byte(name))
			case 1:
				what = "CreateBucketIfNotExists"
				_, a = bt.CreateBucketIfNotExists([]byte(name))
				_, b = pt.CreateBucketIfNotExists([]byte(name))
			case 2:
				what = "DeleteBucket"
				a = bt.DeleteBucket([]byte(name))
				b = pt.DeleteBucket([]byte(name))
			}
			log = append(log, fmt.Sprintf("%s %s: %v", what, name, a))
			if (a == nil) != (b == nil) {
				fail("%s %s: bolt %v, pg %v", what, name, a, b)
			}
		case 0, 1:
			k, v := randKey(r, name), randValue(r)
			if strings.HasPrefix(name, "R:") && r.IntN(2) == 0 {
				// A record, and sometimes the same in history.
				ver := 1 + r.IntN(3)
				v = record(ver, fmt.Sprintf(`{"v":%d}`, r.IntN(3)))
				if r.IntN(2) == 0 {
					h := binary.BigEndian.AppendUint64(append(bytes.Clone(k), 0), uint64(ver))
					hb, _ := bt.CreateBucketIfNotExists([]byte("H:Patient"))
					if err := hb.Put(h, v); err != nil {
						fail("bolt put: %v", err)
					}
					ph, err := pt.CreateBucketIfNotExists([]byte("H:Patient"))
					if err != nil {
						fail("pg create H:Patient: %v", err)
					}
					if err := ph.Put(h, v); err != nil {
						fail("pg put: %v", err)
					}
					log = append(log, fmt.Sprintf("put H:Patient %q", h))
				}
			}
			log = append(log, fmt.Sprintf("put %s %q=%q", name, k, v))
			if err := bb.Put(k, v); err != nil {
				fail("bolt put: %v", err)
			}
			if err := pb.Put(k, v); err != nil {
				fail("pg put: %v", err)
			}
		case 2:
			k := randKey(r, name)
			log = append(log, fmt.Sprintf("delete %s %q", name, k))
			if err := bb.Delete(k); err != nil {
				fail("bolt delete: %v", err)
			}
			if err := pb.Delete(k); err != nil {
				fail("pg delete: %v", err)
			}
		case 3:
			a, _ := bb.NextSequence()
			b, err := pb.NextSequence()
			if a != b || err != nil {
				fail("NextSequence of %s: bolt %d, pg %d %v", name, a, b, err)
			}
		case 4:
			k := randKey(r, name)
			var a, b []byte
			if p, ok := pb.(backend.PrefetcherWith); ok && r.IntN(3) == 0 {
				// Read ahead with others, and with their entries.
				keys := [][]byte{k, randKey(r, name), randKey(r, name)}
				var also []byte
				if r.IntN(2) == 0 {
					also = []byte("X:Patient")
				}
				p.PrefetchWith(keys, also)
				log = append(log, fmt.Sprintf("prefetch %s %q with %q", name, keys, also))
			}
			if bb != nil {
				a, b = bb.Get(k), pb.Get(k)
			}
			if !bytes.Equal(a, b) || (a == nil) != (b == nil) {
				fail("get %s %q: bolt %q, pg %q", name, k, a, b)
			}
		default:
			// A cursor: a new one landing somewhere, or a move of the
			// bucket's last one (which sees the changes made since).
			cs, ok := cursors[name]
			if !ok || r.IntN(3) == 0 {
				if bb == nil {
					return
				}
				cs = [2]backend.Cursor{bb.Cursor(), pb.Cursor()}
				what := "new cursor on " + name
				if bc, ok := pb.(backend.BoundedCursorer); ok && r.IntN(2) == 0 {
					end := randSeek(r, name)
					cs = [2]backend.Cursor{&boundedBolt{c: bb.Cursor(), end: end}, bc.BoundedCursor(end)}
					what = fmt.Sprintf("new cursor on %s before %q", name, end)
				} else if bs, ok := pb.(backend.BoundedSeeker); ok && r.IntN(2) == 0 {
					// Bounded cursors sought together (in one round
					// trip): each lands where its own seek would, and
					// the first goes on moving.
					n := 1 + r.IntN(3)
					seeks, ends := make([][]byte, n), make([][]byte, n)
					for i := range n {
						seeks[i], ends[i] = randSeek(r, name), randSeek(r, name)
					}
					pcs, ks, vs := bs.SeekBounded(seeks, ends)
					for i := range n {
						bc := &boundedBolt{c: bb.Cursor(), end: ends[i]}
						k, v := bc.Seek(seeks[i])
						if !bytes.Equal(k, ks[i]) || !bytes.Equal(v, vs[i]) {
							fail("%s seek %q before %q together: bolt %v, pg %v", name, seeks[i], ends[i], pair{k, v}, pair{ks[i], vs[i]})
						}
						if i == 0 {
							cs = [2]backend.Cursor{bc, pcs[0]}
						}
					}
					what = fmt.Sprintf("%d cursors on %s sought together, the first %q before %q", n, name, seeks[0], ends[0])
					if ks[0] == nil {
						// bbolt's cursor is undefined after its end.
						log = append(log, what+": nil")
						delete(cursors, name)
						return
					}
				}
				cursors[name] = cs
				log = append(log, what)
			}
			var a, b pair
			var what string
			switch r.IntN(5) {
			case 0:
				what = "first"
				a.k, a.v = cs[0].First()
				b.k, b.v = cs[1].First()
			case 1:
				what = "last"
				a.k, a.v = cs[0].Last()
				b.k, b.v = cs[1].Last()
			case 2:
				s := randSeek(r, name)
				what = fmt.Sprintf("seek %q", s)
				a.k, a.v = cs[0].Seek(s)
				b.k, b.v = cs[1].Seek(s)
			case 3:
				what = "next"
				a.k, a.v = cs[0].Next()
				b.k, b.v = cs[1].Next()
			case 4:
				what = "prev"
				a.k, a.v = cs[0].Prev()
				b.k, b.v = cs[1].Prev()
			}
			if !bytes.Equal(a.k, b.k) || !bytes.Equal(a.v, b.v) {
				fail("%s %s: bolt %v, pg %v", name, what, a, b)
			}
			log = append(log, fmt.Sprintf("%s %s: %q", name, what, a.k))
			if a.k == nil {
				delete(cursors, name) // bbolt's cursor is undefined after its end
			}
		}
	}
	for round := range 300 {
		write := r.IntN(3) > 0
		takeBack := write && r.IntN(5) == 0
		n := 1 + r.IntN(30)
		run := func(bt, pt backend.Tx) error {
			cursors := map[string][2]backend.Cursor{}
			for range n {
				step(bt, pt, write, cursors)
			}
			if takeBack {
				return errTakeBack
			}
			return nil
		}
		log = append(log, fmt.Sprintf("-- round %d write=%v takeBack=%v", round, write, takeBack))
		// The pg transaction runs inside bbolt's, step by step alike.
		outer := bolt.View
		inner := pg.View
		if write {
			outer, inner = bolt.Update, pg.Update
		}
		err := outer(ctx, func(bt backend.Tx) error {
			return inner(ctx, func(pt backend.Tx) error { return run(bt, pt) })
		})
		if err != nil && !errors.Is(err, errTakeBack) {
			fail("round %d: %v", round, err)
		}
		// What each holds now is the same: the same buckets, listed
		// alike, with the same keys and sequences.
		err = bolt.View(ctx, func(bt backend.Tx) error {
			return pg.View(ctx, func(pt backend.Tx) error {
				names := func(tx backend.Tx) []string {
					var ns []string
					tx.ForEach(func(n []byte, _ backend.Bucket) error { ns = append(ns, string(n)); return nil })
					return ns
				}
				if a, b := names(bt), names(pt); fmt.Sprint(a) != fmt.Sprint(b) {
					fail("after round %d, the buckets are\nbolt %q\npg   %q", round, a, b)
				}
				for _, name := range buckets {
					bb, pb := bt.Bucket([]byte(name)), pt.Bucket([]byte(name))
					if (bb == nil) != (pb == nil) {
						fail("after round %d, %s exists: bolt %v, pg %v", round, name, bb != nil, pb != nil)
					}
					if bb == nil {
						continue
					}
					var a, b []pair
					bb.ForEach(func(k, v []byte) error { a = append(a, pair{bytes.Clone(k), bytes.Clone(v)}); return nil })
					pb.ForEach(func(k, v []byte) error { b = append(b, pair{k, v}); return nil })
					if fmt.Sprint(a) != fmt.Sprint(b) {
						fail("after round %d, %s holds\nbolt %v\npg   %v", round, name, a, b)
					}
					if a, b := bb.Sequence(), pb.Sequence(); a != b {
						fail("after round %d, %s's sequence: bolt %d, pg %d", round, name, a, b)
					}
				}
				return nil
			})
		})
		if err != nil {
			fail("round %d: %v", round, err)
		}
	}
}

// checkJoined checks, after a step that read a search index joined with
// the records and entries it names, that every key of R:Patient and
// X:Patient bbolt holds, and every id an index entry of I:Patient:name
// names as text, gets in pg what it gets in bbolt.
func checkJoined(bt, pt backend.Tx, fail func(string, ...any)) {
	var ids [][]byte
	if ib := bt.Bucket([]byte("I:Patient:name")); ib != nil {
		ib.ForEach(func(k, _ []byte) error {
			if i := bytes.IndexByte(k, 0); i >= 0 && (len(k)-i-1 != 17 || k[i+1] != 1) {
				ids = append(ids, bytes.Clone(k[i+1:]))
			}
			return nil
		})
	}
	for _, name := range []string{"R:Patient", "X:Patient"} {
		bb, pb := bt.Bucket([]byte(name)), pt.Bucket([]byte(name))
		if (bb == nil) != (pb == nil) {
			fail("%s exists: bolt %v, pg %v", name, bb != nil, pb != nil)
		}
		if bb == nil {
			continue
		}
		keys := slices.Clone(ids)
		bb.ForEach(func(k, _ []byte) error { keys = append(keys, bytes.Clone(k)); return nil })
		for _, k := range keys {
			if a, b := bb.Get(k), pb.Get(k); !bytes.Equal(a, b) || (a == nil) != (b == nil) {
				fail("after a joined read, get %s %q: bolt %q, pg %q", name, k, a, b)
			}
		}
	}
}

// TestSchemaMigratedOnceWhenProcessesStartTogether opens one new database
// from several pools at once, as processes starting together do: each
// open succeeds, the schema is made once, at the last version.
func TestSchemaMigratedOnceWhenProcessesStartTogether(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	const n = 6
	errs := make(chan error, n)
	dbs := make(chan *pgdb.DB, n)
	for range n {
		go func() {
			db, err := pgdb.Open(ctx, url)
			errs <- err
			dbs <- db
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		db := <-dbs
		defer db.Close()
	}
	db, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var versions, max int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*), max(version) FROM p2p_schema`).Scan(&versions, &max); err != nil {
		t.Fatal(err)
	}
	if versions != max || max < 1 {
		t.Errorf("p2p_schema holds %d rows up to version %d: a migration applied twice or skipped", versions, max)
	}
}

// boundedBolt is a bbolt cursor over the keys before end only, as
// backend.BoundedCursorer's cursors are.
type boundedBolt struct {
	c   backend.Cursor
	end []byte
}

func (b *boundedBolt) in(k, v []byte) ([]byte, []byte) {
	if k == nil || bytes.Compare(k, b.end) >= 0 {
		return nil, nil
	}
	return k, v
}

func (b *boundedBolt) First() ([]byte, []byte)        { return b.in(b.c.First()) }
func (b *boundedBolt) Seek(s []byte) ([]byte, []byte) { return b.in(b.c.Seek(s)) }
func (b *boundedBolt) Next() ([]byte, []byte)         { return b.in(b.c.Next()) }
func (b *boundedBolt) Prev() ([]byte, []byte)         { return b.in(b.c.Prev()) }

func (b *boundedBolt) Last() ([]byte, []byte) {
	if k, _ := b.c.Seek(b.end); k == nil {
		return b.in(b.c.Last())
	}
	return b.in(b.c.Prev())
}

// bothBackends opens a new bbolt file and a new PostgreSQL database, for
// tests that do the same to both and compare; they are closed when t
// ends.
func bothBackends(t *testing.T) (*boltdb.DB, *pgdb.DB) {
	t.Helper()
	bolt, err := boltdb.Open(filepath.Join(t.TempDir(), "b.db"), boltdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bolt.Close() })
	pg, err := pgdb.Open(context.Background(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return bolt, pg
}
