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
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// buckets covers every table the store's buckets map onto.
var buckets = []string{"outbox", "R:Patient", "H:Patient", "X:Patient", "I:Patient:name", "C", "C:Patient"}

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
		return append(append([]byte(keys[r.IntN(len(keys))]), 0), id()...)
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
// PostgreSQL and checks every answer is the same: gets, cursor moves in
// both directions over the transaction's own changes merged with the
// database's rows, sequences, and what a later transaction sees after a
// commit or a rollback.
func TestBackendsAgree(t *testing.T) {
	ctx := context.Background()
	bolt, err := boltdb.Open(filepath.Join(t.TempDir(), "b.db"), boltdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bolt.Close()
	pg, err := pgdb.Open(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
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
		if write && bb == nil {
			bb, _ = bt.CreateBucketIfNotExists([]byte(name))
		}
		op := r.IntN(10)
		if op < 3 {
			// bbolt's cursors are undefined after a change to their
			// bucket: they are made again.
			delete(cursors, name)
			delete(cursors, "H:Patient")
		}
		if !write && op < 4 {
			op = 4 + r.IntN(6)
		}
		switch op {
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
					if err := pt.Bucket([]byte("H:Patient")).Put(h, v); err != nil {
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
			var a []byte
			if bb != nil {
				a = bb.Get(k)
			}
			b := pb.Get(k)
			if !bytes.Equal(a, b) || (a == nil) != (b == nil) {
				fail("get %s %q: bolt %q, pg %q", name, k, a, b)
			}
		default:
			// A cursor: a new one landing somewhere, or a move of the
			// bucket's last one (which sees the changes made since).
			cs, ok := cursors[name]
			if !ok || r.IntN(3) == 0 {
				if bb == nil {
					if pk, _ := pb.Cursor().First(); pk != nil {
						fail("%s: bolt has no bucket, pg has %q", name, pk)
					}
					return
				}
				cs = [2]backend.Cursor{bb.Cursor(), pb.Cursor()}
				cursors[name] = cs
				log = append(log, "new cursor on "+name)
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
		// What each holds now, bucket by bucket, is the same.
		err = bolt.View(ctx, func(bt backend.Tx) error {
			return pg.View(ctx, func(pt backend.Tx) error {
				for _, name := range buckets {
					var a, b []pair
					if bb := bt.Bucket([]byte(name)); bb != nil {
						bb.ForEach(func(k, v []byte) error { a = append(a, pair{bytes.Clone(k), bytes.Clone(v)}); return nil })
					}
					pt.Bucket([]byte(name)).ForEach(func(k, v []byte) error { b = append(b, pair{k, v}); return nil })
					if fmt.Sprint(a) != fmt.Sprint(b) {
						fail("after round %d, %s holds\nbolt %v\npg   %v", round, name, a, b)
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
