package pgdb

import (
	"context"
	"sync"
	"time"
)

// The store's tables grow from nothing, and a plan made once per
// connection (sessionParams) is made for the tables as they were: a
// sequential scan of a table of a few rows is cheaper than its index.
// PostgreSQL makes the plans again when a table is analyzed, which
// autovacuum does once a table has grown by a tenth, but only every
// autovacuum_naptime (a minute) and not at all in a database's first
// minute, while a first load makes the tables thousands of times larger.
// DB.wrote analyzes them itself after the rows this process has
// written reach analyzeFirst, then each time they are analyzeGrowth
// times more, up to analyzeLast; past that autovacuum keeps up.
const (
	analyzeFirst  = 1000
	analyzeGrowth = 4
	analyzeLast   = 4 << 20
)

// analyzer tracks the rows written and the next analysis.
type analyzer struct {
	mu      sync.Mutex
	written int64
	next    int64 // 0: analyzeFirst
	running bool
}

// wrote counts n rows written by a commit and analyzes the store's
// tables, in the background, when they reach the next threshold.
func (d *DB) wrote(n int) {
	a := &d.analyzer
	a.mu.Lock()
	a.written += int64(n)
	if a.next == 0 {
		a.next = analyzeFirst
	}
	if a.written < a.next || a.next > analyzeLast || a.running {
		a.mu.Unlock()
		return
	}
	a.next = a.written * analyzeGrowth
	a.running = true
	a.mu.Unlock()
	go func() {
		defer func() {
			a.mu.Lock()
			a.running = false
			a.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// A failure (the pool closed, the database gone) is left to
		// autovacuum: nothing depends on it but the plans' speed.
		d.pool.Exec(ctx, "ANALYZE p2p_resources, p2p_versions, p2p_entries, p2p_index, p2p_changes, p2p_kv")
	}()
}
