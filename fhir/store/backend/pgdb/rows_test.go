package pgdb_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// TestResourceRowsHoldEitherValue: R:<type> and X:<type> share a row of
// p2p_resources per id, yet each is a bucket of its own, as on bbolt:
// whatever is written to one, in the same transaction as the other or
// not, with the other present or absent, buckets deleted and made again,
// each reads back what was put (cursors both ways, record heads, Gets,
// Prefetch) and never a key only the other holds.
func TestResourceRowsHoldEitherValue(t *testing.T) {
	ctx := context.Background()
	bolt, pg := bothBackends(t)

	type op func(tx backend.Tx, typ string) error
	bucket := func(tx backend.Tx, name string) (backend.Bucket, error) {
		return tx.CreateBucketIfNotExists([]byte(name))
	}
	put := func(kind, id string, v []byte) op {
		return func(tx backend.Tx, typ string) error {
			b, err := bucket(tx, kind+":"+typ)
			if err != nil {
				return err
			}
			return b.Put([]byte(id), v)
		}
	}
	del := func(kind, id string) op {
		return func(tx backend.Tx, typ string) error {
			b, err := bucket(tx, kind+":"+typ)
			if err != nil {
				return err
			}
			return b.Delete([]byte(id))
		}
	}
	drop := func(kind string) op {
		return func(tx backend.Tx, typ string) error { return tx.DeleteBucket([]byte(kind + ":" + typ)) }
	}
	hist := func(id string, version int, v []byte) op {
		return func(tx backend.Tx, typ string) error {
			b, err := bucket(tx, "H:"+typ)
			if err != nil {
				return err
			}
			return b.Put(binary.BigEndian.AppendUint64(append([]byte(id), 0), uint64(version)), v)
		}
	}
	histDel := func(id string, version int) op {
		return func(tx backend.Tx, typ string) error {
			b, err := bucket(tx, "H:"+typ)
			if err != nil {
				return err
			}
			return b.Delete(binary.BigEndian.AppendUint64(append([]byte(id), 0), uint64(version)))
		}
	}
	r1, r2 := record(1, `{"v":1}`), record(2, `{"v":2}`)
	x1, x2 := []byte("entries 1"), []byte("entries 2")
	// Each case is transactions of ops, on its own type.
	cases := []struct {
		name string
		txs  [][]op
	}{
		{"entries without a record", [][]op{{put("X", "a", x1), put("X", "b", nil)}}},
		{"a record without entries", [][]op{{put("R", "a", r1), put("R", "b", []byte("ab")), put("R", "c", nil)}}},
		{"both, then the record deleted", [][]op{{put("R", "a", r1), put("X", "a", x1), put("R", "b", r1)}, {del("R", "a")}}},
		{"both, then the entries deleted", [][]op{{put("R", "a", r1), put("X", "a", x1)}, {del("X", "a")}}},
		{"both, then both deleted", [][]op{{put("R", "a", r1), put("X", "a", x1)}, {del("R", "a"), del("X", "a")}}},
		{"both deleted where neither was", [][]op{{put("R", "b", r1)}, {del("R", "a"), del("X", "a")}}},
		{"the record deleted, entries put, one transaction", [][]op{{put("R", "a", r1), put("X", "a", x1)}, {del("R", "a"), put("X", "a", x2)}}},
		{"the record put, entries deleted, one transaction", [][]op{{put("R", "a", r1), put("X", "a", x1)}, {put("R", "a", r2), del("X", "a")}}},
		{"the record replaced, the entries kept", [][]op{{put("R", "a", r1), put("X", "a", x1)}, {put("R", "a", r2)}}},
		{"the entries replaced, the record kept", [][]op{{put("R", "a", r1), put("X", "a", x1)}, {put("X", "a", x2)}}},
		{"put and deleted in one transaction", [][]op{{put("R", "a", r1), put("X", "a", x1), del("R", "a"), del("X", "a")}}},
		{"the records' bucket deleted", [][]op{{put("R", "a", r1), put("X", "a", x1), put("R", "b", r1), put("X", "c", x1)}, {drop("R")}}},
		{"the entries' bucket deleted", [][]op{{put("R", "a", r1), put("X", "a", x1), put("R", "b", r1), put("X", "c", x1)}, {drop("X")}}},
		{"both buckets deleted", [][]op{{put("R", "a", r1), put("X", "a", x1), put("X", "c", x1)}, {drop("X"), drop("R")}}},
		{"the records' bucket deleted and made again", [][]op{{put("R", "a", r1), put("X", "a", x1), put("R", "b", r1)}, {drop("R"), put("R", "a", r2)}}},
		{"the entries' bucket deleted and made again", [][]op{{put("R", "a", r1), put("X", "a", x1), put("X", "b", x1)}, {drop("X"), put("X", "b", x2)}}},
		{"the record kept in history, then that version deleted", [][]op{{put("R", "a", r1), hist("a", 1, r1), put("X", "a", x1)}, {histDel("a", 1)}}},
		{"the record kept in history, then the history deleted", [][]op{{put("R", "a", r1), hist("a", 1, r1), put("X", "a", x1)}, {drop("H")}}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			typ := fmt.Sprintf("T%d", i)
			for _, ops := range c.txs {
				for _, db := range []backend.DB{bolt, pg} {
					err := db.Update(ctx, func(tx backend.Tx) error {
						for _, o := range ops {
							if err := o(tx, typ); err != nil {
								return err
							}
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
				}
			}
			var dumps [2]string
			for i, db := range []backend.DB{bolt, pg} {
				dumps[i] = dumpResources(t, db, typ)
			}
			if dumps[0] != dumps[1] {
				t.Errorf("bbolt holds\n%s\nPostgreSQL\n%s", dumps[0], dumps[1])
			}
		})
	}
}

// dumpResources reads R:<typ> and X:<typ> every way, with ids a to c.
func dumpResources(t *testing.T, db backend.DB, typ string) string {
	var out strings.Builder
	ids := [][]byte{[]byte("a"), []byte("b"), []byte("c")}
	err := db.View(context.Background(), func(tx backend.Tx) error {
		for _, name := range []string{"R:" + typ, "X:" + typ, "H:" + typ} {
			b := tx.Bucket([]byte(name))
			if b == nil {
				fmt.Fprintf(&out, "%s: none\n", name)
				continue
			}
			fmt.Fprintf(&out, "%s:", name)
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				fmt.Fprintf(&out, " %q=%q", k, v)
			}
			out.WriteString(" | backward")
			for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
				fmt.Fprintf(&out, " %q", k)
			}
			if name[0] == 'R' {
				// The record heads: bbolt reads the values whole.
				out.WriteString(" | heads")
				c := b.Cursor()
				if p, ok := b.(backend.PrefixCursorer); ok {
					c = p.PrefixCursor(17)
				}
				for k, v := c.First(); k != nil; k, v = c.Next() {
					fmt.Fprintf(&out, " %q=%q", k, v[:min(len(v), 17)])
				}
			}
			out.WriteString("\n")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Gets, one at a time, after a Prefetch of the records (which reads
	// the entries too), and in a write transaction (whose Get of a record
	// reads the entries too), in transactions of their own.
	for _, way := range []string{"get", "prefetch", "write"} {
		prefetch := way == "prefetch"
		view := db.View
		if way == "write" {
			view = db.Update
		}
		err := view(context.Background(), func(tx backend.Tx) error {
			r, x := tx.Bucket([]byte("R:"+typ)), tx.Bucket([]byte("X:"+typ))
			if p, ok := r.(backend.Prefetcher); ok && prefetch {
				p.Prefetch(ids)
			}
			for _, id := range ids {
				for _, b := range []backend.Bucket{r, x} {
					if b == nil {
						continue
					}
					v := b.Get(id)
					fmt.Fprintf(&out, "get %q: %q %v; ", id, v, v != nil)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString("\n")
	}
	return out.String()
}
