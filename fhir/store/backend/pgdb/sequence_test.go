package pgdb_test

import (
	"context"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestSequencesAcrossProcesses: a write transaction reads the buckets'
// sequences with its BEGIN, under the write lock, so two processes on one
// database taking turns never hand out a sequence number twice, whichever
// bucket, a new one included, and a bucket set back to 0 reads 0.
func TestSequencesAcrossProcesses(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	var procs [2]*pgdb.DB
	for i := range procs {
		d, err := pgdb.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		procs[i] = d
	}
	next := func(d *pgdb.DB, name string) uint64 {
		t.Helper()
		var n uint64
		err := d.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			n, err = b.NextSequence()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	set := func(d *pgdb.DB, name string, v uint64) {
		t.Helper()
		err := d.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			return b.SetSequence(v)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		proc   int
		bucket string
		set    int64 // >= 0: SetSequence(set) instead of NextSequence
		want   uint64
	}{
		{0, "C", -1, 1},
		{1, "C", -1, 2},
		{1, "C", -1, 3},
		{0, "C", -1, 4},
		{1, "jobs", -1, 1},
		{0, "jobs", -1, 2},
		{0, "C:Patient", -1, 1},
		{1, "C", 0, 0},
		{0, "C", -1, 1},
		{1, "jobs", 100, 100},
		{0, "jobs", -1, 101},
	}
	for i, s := range steps {
		d := procs[s.proc]
		if s.set >= 0 {
			set(d, s.bucket, uint64(s.set))
			continue
		}
		if got := next(d, s.bucket); got != s.want {
			t.Fatalf("step %d: process %d's next %s sequence is %d, want %d", i, s.proc, s.bucket, got, s.want)
		}
	}
}
