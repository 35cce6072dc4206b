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

// kvStats reads p2p_kv's analyses and rows written since the last one.
func kvStats(t *testing.T, conn *pgx.Conn) (analyzed, mods int64) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), `SELECT analyze_count, n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'p2p_kv'`).Scan(&analyzed, &mods); err != nil {
		t.Fatal(err)
	}
	return analyzed, mods
}

// putRows writes n new rows to the bucket jobs in one transaction.
func putRows(t *testing.T, d *DB, from, n int) {
	t.Helper()
	err := d.Update(context.Background(), func(tx backend.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("jobs"))
		if err != nil {
			return err
		}
		for i := range n {
			if err := b.Put([]byte(fmt.Sprintf("k%08d", from+i)), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// flush has d's connections report their counts to the statistics
// now: an idle backend reports them up to ten seconds late
// (PGSTAT_IDLE_INTERVAL), which would only make the test slow.
func flush(t *testing.T, d *DB) {
	t.Helper()
	for range d.pool.Config().MaxConns {
		if _, err := d.pool.Exec(context.Background(), "SELECT pg_stat_force_next_flush()"); err != nil {
			t.Fatal(err)
		}
	}
}

// waitIdle waits for d's background check of the tables to end.
func waitIdle(d *DB) {
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

// TestAnalyzeDecidedByTableSize: whether a table is analyzed depends on
// the table (never analyzed and analyzeFirst rows written, or
// (analyzeGrowth-1) × its rows at the last analysis written since), not
// on the rows this process wrote: a process started on a grown database
// does not analyze it again after its first analyzeFirst rows, and a
// second process's rows count toward the first's threshold.
func TestAnalyzeDecidedByTableSize(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	open := func() *DB {
		t.Helper()
		// One connection, which the test has report its counts at once
		// (see flush).
		d, err := Open(ctx, url+"&pool_max_conns=1")
		if err != nil {
			t.Fatal(err)
		}
		d.analyzer.due = -1 // checks only when the test says
		return d
	}
	d1, d2 := open(), open()
	defer d1.Close()
	defer d2.Close()
	written, since := 0, int64(0) // rows written, and since the last analysis
	steps := []struct {
		by   *DB // writes the rows and checks
		rows int
		want int64 // analyses of p2p_kv after the check
	}{
		{d1, analyzeFirst - 1, 0},
		{d1, 1, 1}, // analyzeFirst rows, never analyzed
		// A new process (d2) on a table analyzed at analyzeFirst rows:
		// its own analyzeFirst rows are not a reason.
		{d2, analyzeFirst, 1},
		{d2, analyzeFirst*(analyzeGrowth-1) - analyzeFirst - 1, 1},
		// The last row, written by the other process: grown
		// analyzeGrowth times since the analysis.
		{d1, 1, 2},
		{d1, analyzeFirst, 2},
	}
	for i, s := range steps {
		putRows(t, s.by, written, s.rows)
		flush(t, s.by)
		written += s.rows
		since += int64(s.rows)
		// The statistics lag (see statsLag): wait until they show the
		// rows written since the last analysis.
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, mods := kvStats(t, conn); mods >= since {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("step %d: the statistics show %d rows written since the last analysis, want %d", i, mods, since)
			}
			time.Sleep(50 * time.Millisecond)
		}
		before, _ := kvStats(t, conn)
		if _, err := s.by.analyze(ctx); err != nil {
			t.Fatal(err)
		}
		got, _ := kvStats(t, conn)
		if got != s.want {
			t.Fatalf("step %d (%d rows written): p2p_kv analyzed %d times, want %d", i, written, got, s.want)
		}
		if got != before {
			since = 0
		}
	}
}

// TestYoungTablesAreAnalyzed: writing analyzeFirst rows to a new
// database has its tables analyzed in the background, so that the plans
// made while they were empty are made again.
func TestYoungTablesAreAnalyzed(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	d, err := Open(ctx, url+"&pool_max_conns=1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	putRows(t, d, 0, analyzeFirst-1)
	flush(t, d)
	waitIdle(d)
	if a, _ := kvStats(t, conn); a != 0 {
		t.Fatalf("p2p_kv analyzed %d times after %d rows, want 0", a, analyzeFirst-1)
	}
	putRows(t, d, analyzeFirst-1, 1)
	flush(t, d) // before the check, statsLag after the commit
	deadline := time.Now().Add(30 * time.Second)
	for {
		waitIdle(d)
		if a, _ := kvStats(t, conn); a == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("p2p_kv not analyzed after analyzeFirst rows")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
