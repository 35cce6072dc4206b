package pgdb_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestJoinedReadsAreTheDatabasesAndTheTransactions: a search index read
// joined with the records and entries it names (backend.Join) costs the
// round trip of the index read alone, and what the Gets that follow find
// is what they would have read: the database's rows for the ids it
// names in both forms (0x01 and 16 bytes for a UUID, the text of any
// other), absence for an id without a record, of the First entries it
// reads only the ids after After; and the transaction's own changes,
// which a joined read never replaces.
func TestJoinedReadsAreTheDatabasesAndTheTransactions(t *testing.T) {
	ctx := context.Background()
	db, err := pgdb.Open(ctx, pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const uuid = "0190f4c2-7b1a-7c3e-8a55-000000000001"
	u, _ := hex.DecodeString("0190f4c27b1a7c3e8a55000000000001")
	ixKey := func(id []byte) []byte { return append([]byte("k\x00"), id...) }
	ids := map[string][]byte{uuid: append([]byte{1}, u...), "b": []byte("b"), "c": []byte("c"), "d": []byte("d"), "gone": []byte("gone")}
	rec := func(id string) []byte { return []byte("rec of " + id) }
	ent := func(id string) []byte { return []byte("entries of " + id) }
	err = db.Update(ctx, func(tx backend.Tx) error {
		ix, _ := tx.CreateBucket([]byte("I:Patient:name"))
		r, _ := tx.CreateBucket([]byte("R:Patient"))
		x, _ := tx.CreateBucket([]byte("X:Patient"))
		for id, form := range ids {
			if err := ix.Put(ixKey(form), []byte("p")); err != nil {
				return err
			}
			if id == "gone" {
				continue // an index entry without its record
			}
			if err := r.Put([]byte(id), rec(id)); err != nil {
				return err
			}
			if err := x.Put([]byte(id), ent(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// join reads the index joined, with entries or not, after after,
	// first ids; changes writes first (in a write transaction); check
	// then gets every id.
	type want struct {
		rec, ent []byte
		read     bool // read by the joined read: no round trip; else one
	}
	run := func(name string, write, entries bool, after string, first int, change func(r, x backend.Bucket), wants map[string]want) {
		t.Run(name, func(t *testing.T) {
			do := db.View
			if write {
				do = db.Update
			}
			err := do(ctx, func(tx backend.Tx) error {
				r, x := tx.Bucket([]byte("R:Patient")), tx.Bucket([]byte("X:Patient"))
				if change != nil {
					change(r, x)
				}
				j := backend.Join{Records: []byte("R:Patient"), After: []byte(after), Read: first, First: first}
				if entries {
					j.Entries = []byte("X:Patient")
				}
				ix := tx.Bucket([]byte("I:Patient:name")).(backend.Joiner).Join(j)
				before := db.RoundTrips()
				c := ix.(backend.BoundedCursorer).BoundedCursor([]byte("k\x01"))
				k, _ := c.Seek([]byte("k\x00"))
				if trips := db.RoundTrips() - before; trips != 1 {
					t.Errorf("the joined read took %d round trips, want 1", trips)
				}
				n := 0
				for ; k != nil; k, _ = c.Next() {
					n++
				}
				if n != len(ids) {
					t.Errorf("the cursor found %d index entries, want %d", n, len(ids))
				}
				for id, w := range wants {
					before := db.RoundTrips()
					gotRec := r.Get([]byte(id))
					var gotEnt []byte
					if entries {
						gotEnt = x.Get([]byte(id))
					}
					trips := db.RoundTrips() - before
					if !bytes.Equal(gotRec, w.rec) || (gotRec == nil) != (w.rec == nil) {
						t.Errorf("%s: record %q, want %q", id, gotRec, w.rec)
					}
					if entries && (!bytes.Equal(gotEnt, w.ent) || (gotEnt == nil) != (w.ent == nil)) {
						t.Errorf("%s: entries %q, want %q", id, gotEnt, w.ent)
					}
					if w.read && trips != 0 {
						t.Errorf("%s: %d round trips to get what the joined read read", id, trips)
					}
					if !w.read && trips == 0 {
						t.Errorf("%s: the joined read read it, beyond First or not after After", id)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	all := func(ids ...string) map[string]want {
		m := map[string]want{}
		for _, id := range ids {
			m[id] = want{rec(id), ent(id), true}
		}
		return m
	}
	w := all(uuid, "b", "c", "d")
	w["gone"] = want{nil, nil, true}
	run("every id, both forms, with entries", false, true, "", 10, nil, w)
	run("every id, records only", false, false, "", 10, nil, w)
	// The first read is of 4 entries (uuid, b, c, d), of which c and d
	// are after b; gone is read next, alone.
	w = all("c", "d")
	w["b"] = want{rec("b"), ent("b"), false}
	w[uuid] = want{rec(uuid), ent(uuid), false}
	w["gone"] = want{nil, nil, false}
	run("the first 4, after b", false, true, "b", 4, nil, w)
	// Of the first 2 (uuid, b) only b is after uuid: the others are
	// read by the cursor but not joined.
	w = all("b")
	for _, id := range []string{uuid, "c", "d"} {
		w[id] = want{rec(id), ent(id), false}
	}
	w["gone"] = want{nil, nil, false}
	run("the first 2, after the first", false, true, uuid, 2, nil, w)
	w = all(uuid, "c")
	w["b"] = want{[]byte("written"), nil, true}
	w["d"] = want{nil, []byte("written"), true}
	run("the transaction's changes win", true, true, "", 10, func(r, x backend.Bucket) {
		if err := r.Put([]byte("b"), []byte("written")); err != nil {
			t.Fatal(err)
		}
		if err := x.Delete([]byte("b")); err != nil {
			t.Fatal(err)
		}
		if err := r.Delete([]byte("d")); err != nil {
			t.Fatal(err)
		}
		if err := x.Put([]byte("d"), []byte("written")); err != nil {
			t.Fatal(err)
		}
	}, w)
}
