package pgdb

import (
	"context"
	"fmt"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestHotKeysAreCurrent: the keys of p2p_kv a write transaction read
// are read by the next write transaction with its lock, in its first
// round trip; what it gets is what the database holds then, whichever
// process wrote it meanwhile (a value, another, none), and its own
// writes win over it.
func TestHotKeysAreCurrent(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	d1, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	put := func(d *DB, v []byte) {
		t.Helper()
		err := d.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("meta"))
			if err != nil {
				return err
			}
			if v == nil {
				return b.Delete([]byte("gen"))
			}
			return b.Put([]byte("gen"), v)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// read reads gen in a write of d1, then writes it (and reads it
	// back) when set is not nil.
	read := func(set []byte) string {
		t.Helper()
		var got, after string
		err := d1.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("meta"))
			if err != nil {
				return err
			}
			got = fmt.Sprintf("%q", b.Get([]byte("gen")))
			if set != nil {
				if err := b.Put([]byte("gen"), set); err != nil {
					return err
				}
				after = fmt.Sprintf("%q", b.Get([]byte("gen")))
				if after != fmt.Sprintf("%q", set) {
					t.Errorf("gen read back %s after writing %q", after, set)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	put(d1, []byte("1"))
	steps := []struct {
		other []byte // written by d2 before, "-" deleted, nil none
		set   []byte
		want  string
	}{
		{nil, nil, `"1"`},
		{nil, nil, `"1"`}, // read in the first round trip now
		{[]byte("2"), nil, `"2"`},
		{[]byte("-"), nil, `""`},
		{[]byte("3"), []byte("4"), `"3"`},
		{nil, nil, `"4"`},
		{[]byte("5"), nil, `"5"`},
	}
	for i, s := range steps {
		switch string(s.other) {
		case "":
		case "-":
			put(d2, nil)
		default:
			put(d2, s.other)
		}
		if got := read(s.set); got != s.want {
			t.Errorf("step %d: gen %s, want %s", i, got, s.want)
		}
		d1.mu.Lock()
		hot := len(d1.hot)
		d1.mu.Unlock()
		if hot != 1 {
			t.Errorf("step %d: %d hot keys, want 1", i, hot)
		}
	}
}
