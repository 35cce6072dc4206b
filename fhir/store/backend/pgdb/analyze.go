package pgdb

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The store's tables grow from nothing, and a plan made once per
// connection (sessionParams) is made for the tables as they were: a
// sequential scan of a table of a few rows is cheaper than its index.
// PostgreSQL makes the plans again when a table is analyzed, which
// autovacuum does once a table has grown by a tenth, but only every
// autovacuum_naptime (a minute) and not at all in a database's first
// minute, while a first load makes the tables thousands of times larger.
//
// So the store analyzes a table itself when the table (not this process)
// calls for it: never analyzed and analyzeFirst rows written since it
// was made, or analyzed at reltuples rows and (analyzeGrowth-1) ×
// reltuples written since (grown analyzeGrowth times), while it holds
// fewer than analyzeLast rows; past that autovacuum keeps up. Rows
// written are pg_stat_user_tables.n_mod_since_analyze, counted by
// PostgreSQL across every process, so a process starting on a grown
// database analyzes nothing, and of several processes writing one only
// analyzes each time (under an advisory lock, tried not waited for).
const (
	analyzeFirst  = 1000
	analyzeGrowth = 4
	analyzeLast   = 4 << 20
)

// statsLag is how long the check waits after the rows that made it due:
// a backend writing reports its counts to PostgreSQL's statistics at
// most once a second (PGSTAT_MIN_INTERVAL), with a margin. An idle one
// may report them up to ten seconds late; a check that comes before
// them finds fewer rows, and is made again after more are written.
const statsLag = 1500 * time.Millisecond

// analyzeTables are the tables the store's buckets map onto.
var analyzeTables = []string{"p2p_resources", "p2p_versions", "p2p_index", "p2p_changes", "p2p_kv"}

// analyzer paces the checks of the tables' statistics: a check costs a
// round trip, so it is made after this process has written the rows due
// (at least analyzeFirst, else half what the nearest table still lacks:
// the other processes' rows count too), in the background, one at a
// time.
type analyzer struct {
	mu      sync.Mutex
	written int64 // rows written since the last check
	due     int64 // rows to write before the next check; 0: analyzeFirst; <0: never
	running bool
}

// analyzeDue is the SQL that names the store's tables calling for an
// analysis (see analyzeFirst), and the fewest rows still to be written
// before another does (null: none will, every table is past
// analyzeLast).
const analyzeDue = `
WITH t AS (
	SELECT c.relname, coalesce(s.n_mod_since_analyze, 0) AS mods,
		CASE WHEN c.reltuples < 0 THEN $1::float8
		ELSE greatest($1::float8, c.reltuples * ($2::float8 - 1)) END AS need,
		c.reltuples
	FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
	WHERE c.oid IN (SELECT to_regclass(n) FROM unnest($4::text[]) n)
)
SELECT array_agg(relname::text) FILTER (WHERE mods >= need AND reltuples < $3),
	min(need - mods) FILTER (WHERE mods < need AND reltuples < $3)
FROM t`

// wrote counts n rows written by a commit and, when a check is due,
// checks the tables and analyzes those calling for it, in the
// background.
func (d *DB) wrote(n int) {
	a := &d.analyzer
	a.mu.Lock()
	a.written += int64(n)
	if a.due == 0 {
		a.due = analyzeFirst
	}
	if a.due < 0 || a.written < a.due || a.running {
		a.mu.Unlock()
		return
	}
	a.written = 0
	a.running = true
	a.mu.Unlock()
	go func() {
		// The backends report their counts at most once a second: the
		// check waits for the rows just written to be counted.
		time.Sleep(statsLag)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// A failure (the pool closed, the database gone) is left to
		// autovacuum: nothing depends on it but the plans' speed.
		left, err := d.analyze(ctx)
		a.mu.Lock()
		switch {
		case err != nil || left < 0:
			a.due = analyzeFirst
		case left == 0:
			a.due = -1
		default:
			a.due = max(analyzeFirst, left/2)
		}
		a.running = false
		a.mu.Unlock()
	}()
}

// analyze analyzes the store's tables that call for it, unless another
// process is analyzing them, and returns how many rows the nearest
// other table still lacks (0: no table will call for it again; -1: to
// check again after analyzeFirst, as when another process was
// analyzing or tables were analyzed now).
func (d *DB) analyze(ctx context.Context) (left int64, err error) {
	err = pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var got bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, analyzeLock).Scan(&got); err != nil {
			return err
		}
		if !got {
			left = -1
			return nil
		}
		var due []string
		var rest *float64
		if err := tx.QueryRow(ctx, analyzeDue, analyzeFirst, analyzeGrowth, analyzeLast, analyzeTables).Scan(&due, &rest); err != nil {
			return err
		}
		if rest != nil {
			left = max(1, int64(*rest))
		}
		if len(due) == 0 {
			return nil
		}
		// The tables analyzed now call for it again after analyzeFirst
		// rows at the soonest: checked again then.
		left = -1
		sql := "ANALYZE "
		for i, name := range due {
			if i > 0 {
				sql += ", "
			}
			sql += pgx.Identifier{name}.Sanitize()
		}
		_, err := tx.Exec(ctx, sql)
		return err
	})
	return left, err
}
