package pgdb

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestYoungTablesAreAnalyzed: once a process has written analyzeFirst
// rows the store's tables are analyzed (so that the plans made once per
// connection while they were small are made again), not before, and not
// again until they have grown analyzeGrowth times.
func TestYoungTablesAreAnalyzed(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	d, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	analyzed := func() int64 {
		t.Helper()
		var n int64
		if err := conn.QueryRow(ctx, `SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'p2p_kv'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	written := 0
	write := func(n int) {
		t.Helper()
		err := d.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("jobs"))
			if err != nil {
				return err
			}
			for range n {
				written++
				if err := b.Put([]byte(fmt.Sprintf("k%08d", written)), []byte("v")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// waitIdle waits for a background analysis to end.
	waitIdle := func() {
		for {
			d.analyzer.mu.Lock()
			running := d.analyzer.running
			d.analyzer.mu.Unlock()
			if !running {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	steps := []struct {
		rows int
		want int64 // analyses of p2p_kv after
	}{
		{analyzeFirst - 1, 0},
		{1, 1},
		{analyzeFirst, 1},
		{analyzeFirst*analyzeGrowth - 2*analyzeFirst, 2},
	}
	for i, s := range steps {
		write(s.rows)
		waitIdle()
		// The statistics collector's counts lag: wait for the wanted
		// count, then check that it is not exceeded.
		deadline := time.Now().Add(30 * time.Second)
		for analyzed() < s.want && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if got := analyzed(); got != s.want {
			t.Fatalf("step %d (%d rows written): p2p_kv analyzed %d times, want %d", i, written, got, s.want)
		}
	}
}
