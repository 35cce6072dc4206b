package pgdb

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// rec4 is a record as the store writes it: flags, version and
// lastUpdated (headLen bytes), then the JSON.
func rec4(flags byte, version uint64, json string) []byte {
	b := make([]byte, headLen, headLen+len(json))
	b[0] = flags
	binary.BigEndian.PutUint64(b[1:], version)
	binary.BigEndian.PutUint64(b[9:], 1_790_000_000_000_000+version)
	return append(b, json...)
}

// TestEntriesMoveIntoResourceRows: schema version 4 moves p2p_entries
// (X:<type>) into a column of p2p_resources (R:<type>). Every bucket a
// database at version 3 held reads back byte for byte, in key order,
// through each way of reading it (cursors both ways, Get, Prefetch, the
// record heads), whichever of the two values an id had: both, the record
// alone (a deleted resource, a short value), the entries alone, records
// kept in p2p_versions; and writing goes on after.
func TestEntriesMoveIntoResourceRows(t *testing.T) {
	ctx := context.Background()
	url, pool := poolAtVersion(t, 3)
	want := map[string]map[string][]byte{
		"R:Patient": {
			"P0": rec4(2, 1, "upper case sorts first"),
			"p1": rec4(2, 2, `{"name":"second"}`),
			"p2": rec4(2, 1, `{"kept":"in p2p_versions"}`),
			"p3": rec4(1, 3, ""), // deleted
			"p5": []byte("ab"),   // not a record: kept whole
			"p6": {},
			"pé": rec4(0, 1, `{"id":"pé"}`),
		},
		"X:Patient": {
			"P0": {0x01, 0x02},
			"p1": []byte("entries of p1"),
			"p2": []byte("entries of p2"),
			"p4": []byte("entries without a record"),
			"p7": {},
			"pé": bytes.Repeat([]byte{0xff, 0x00}, 3000), // TOASTed
		},
		"H:Patient": {
			string(versionKey("p1", 1)): rec4(2, 1, `{"name":"first"}`),
			string(versionKey("p2", 1)): rec4(2, 1, `{"kept":"in p2p_versions"}`),
			string(versionKey("p3", 1)): rec4(2, 1, `{}`),
			string(versionKey("p3", 2)): rec4(2, 2, `{}`),
		},
		"R:Observation": {"o1": rec4(2, 1, `{"code":"x"}`)},
		"X:Observation": {"o1": []byte("entries of o1")},
	}
	for name := range want {
		if _, err := pool.Exec(ctx, `INSERT INTO p2p_buckets (name) VALUES ($1)`, name); err != nil {
			t.Fatal(err)
		}
	}
	// The rows version 3 wrote: a record kept in p2p_versions when the
	// same version was written there in the same transaction (p2).
	for name, kv := range want {
		tb := tableOf(name)
		for k, v := range kv {
			var err error
			switch tb.kind {
			case kindResources:
				ver, head, rec := int64(-1), v, v
				if len(v) >= headLen {
					ver, head = int64(binary.BigEndian.Uint64(v[1:])), v[:headLen]
				}
				if k == "p2" {
					rec = nil
				}
				_, err = pool.Exec(ctx, `INSERT INTO p2p_resources (type, id, version, head, rec) VALUES ($1, $2, $3, $4, $5)`, tb.typ, k, ver, head, rec)
			case kindEntries:
				_, err = pool.Exec(ctx, `INSERT INTO p2p_entries (type, id, entries) VALUES ($1, $2, $3)`, tb.typ, k, v)
			case kindVersions:
				id, ver, _ := splitVersionKey([]byte(k))
				_, err = pool.Exec(ctx, `INSERT INTO p2p_versions (type, id, version, rec) VALUES ($1, $2, $3, $4)`, tb.typ, id, ver, v)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}

	d, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var version, rows int
	var entriesTable *string
	if err := pool.QueryRow(ctx, `SELECT (SELECT max(version) FROM p2p_schema), (SELECT count(*) FROM p2p_resources), to_regclass('p2p_entries')::text`).Scan(&version, &rows, &entriesTable); err != nil {
		t.Fatal(err)
	}
	if version != len(migrations) || version < 4 {
		t.Fatalf("schema version %d, want %d", version, len(migrations))
	}
	if entriesTable != nil {
		t.Errorf("p2p_entries is still there")
	}
	if rows != 10 {
		t.Errorf("p2p_resources holds %d rows, want 10: one per id of R:<type> or X:<type>", rows)
	}
	checkBuckets(t, d, want)

	// Writes on the moved rows: a record replaced (its entries stay), the
	// entries of one removed (its record stays), an entries-only row
	// gone, a record deleted where entries stay, both of a new id.
	err = d.Update(ctx, func(tx backend.Tx) error {
		r, x := tx.Bucket([]byte("R:Patient")), tx.Bucket([]byte("X:Patient"))
		for _, err := range []error{
			r.Put([]byte("p2"), rec4(2, 2, `{"kept":"in the row"}`)),
			x.Delete([]byte("p1")),
			x.Delete([]byte("p4")),
			r.Delete([]byte("P0")),
			r.Put([]byte("p8"), rec4(2, 1, `{}`)),
			x.Put([]byte("p8"), []byte("entries of p8")),
		} {
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want["R:Patient"]["p2"] = rec4(2, 2, `{"kept":"in the row"}`)
	delete(want["X:Patient"], "p1")
	delete(want["X:Patient"], "p4")
	delete(want["R:Patient"], "P0")
	want["R:Patient"]["p8"] = rec4(2, 1, `{}`)
	want["X:Patient"]["p8"] = []byte("entries of p8")
	checkBuckets(t, d, want)
}

// checkBuckets checks that d's buckets hold want, read every way.
func checkBuckets(t *testing.T, d *DB, want map[string]map[string][]byte) {
	t.Helper()
	err := d.View(context.Background(), func(tx backend.Tx) error {
		for name, kv := range want {
			b := tx.Bucket([]byte(name))
			if b == nil {
				t.Fatalf("%s is gone", name)
			}
			keys := make([]string, 0, len(kv))
			for k := range kv {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var fwd, bwd []string
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if !bytes.Equal(v, kv[string(k)]) {
					t.Errorf("%s %q: cursor reads %q, want %q", name, k, v, kv[string(k)])
				}
				fwd = append(fwd, string(k))
			}
			for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
				bwd = append(bwd, string(k))
			}
			slices.Reverse(bwd)
			if fmt.Sprint(fwd) != fmt.Sprint(keys) || fmt.Sprint(bwd) != fmt.Sprint(keys) {
				t.Errorf("%s: keys forward %q, backward %q; want %q", name, fwd, bwd, keys)
			}
			if tableOf(name).kind == kindResources {
				var heads []string
				pc := b.(backend.PrefixCursorer).PrefixCursor(headLen)
				for k, v := pc.First(); k != nil; k, v = pc.Next() {
					if w := kv[string(k)]; !bytes.Equal(v, w[:min(len(w), headLen)]) {
						t.Errorf("%s %q: head %q, want %q", name, k, v, w[:min(len(w), headLen)])
					}
					heads = append(heads, string(k))
				}
				if fmt.Sprint(heads) != fmt.Sprint(keys) {
					t.Errorf("%s: heads of %q, want %q", name, heads, keys)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Gets, in a new transaction for each way of reading: one key at a
	// time, and a resource's record with its entries prefetched, over
	// every id either holds and one neither does.
	for _, prefetch := range []bool{false, true} {
		err := d.View(context.Background(), func(tx backend.Tx) error {
			for _, typ := range []string{"Patient", "Observation"} {
				r, x := tx.Bucket([]byte("R:"+typ)), tx.Bucket([]byte("X:"+typ))
				ids := [][]byte{[]byte("none")}
				for _, name := range []string{"R:" + typ, "X:" + typ} {
					for k := range want[name] {
						ids = append(ids, []byte(k))
					}
				}
				if prefetch {
					r.(backend.Prefetcher).Prefetch(ids)
				}
				for _, id := range ids {
					for _, b := range []struct {
						name string
						b    backend.Bucket
					}{{"R:" + typ, r}, {"X:" + typ, x}} {
						w, ok := want[b.name][string(id)]
						got := b.b.Get(id)
						if (got != nil) != ok || !bytes.Equal(got, w) {
							t.Errorf("prefetched %v: %s get %q = %q, want %q (present %v)", prefetch, b.name, id, got, w, ok)
						}
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// poolAtVersion returns a new database, and a pool on it, whose schema
// is at version v, for tests of the migration after it; the pool is
// closed when t ends.
func poolAtVersion(t *testing.T, v int) (string, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.Database(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrateTo(ctx, pool, v); err != nil {
		t.Fatal(err)
	}
	return url, pool
}
