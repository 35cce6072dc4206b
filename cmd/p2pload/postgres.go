package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// serverDB, when set, is the database the spawned server runs on instead
// of a new bbolt file (a postgres:// URL, see -postgres).
var serverDB string

// usePostgres starts a private PostgreSQL server with a new, empty
// database for the spawned server, and returns what stops it. The server
// is durable (fsync, full_page_writes and synchronous_commit on, as
// PostgreSQL ships), so that its writes are measured at the cost the
// bbolt runs pay: every acknowledged write on disk.
func usePostgres() (func(), error) {
	srv, err := pgtest.StartDurable()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, err := srv.NewDatabase(ctx)
	if err != nil {
		srv.Stop()
		return nil, err
	}
	serverDB = url
	fmt.Println("p2pload: the server runs on a private PostgreSQL database (fsync, full_page_writes and synchronous_commit on)")
	return srv.Stop, nil
}

// postgresSize is the size of the database at url on disk, tables,
// indexes and TOAST included.
func postgresSize(url string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int64
	err = conn.QueryRow(ctx, "SELECT pg_database_size(current_database())").Scan(&n)
	return n, err
}

// settlePostgres does what a measurement of PostgreSQL does between a
// bulk load and the reads: VACUUM (ANALYZE), so that the planner has
// statistics of the loaded tables and autovacuum has nothing left to do
// on them during the read phases, then CHECKPOINT, so that the pages
// the load dirtied are not written out during them. It returns how long
// that took.
func settlePostgres(url string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	start := time.Now()
	for _, sql := range []string{"VACUUM (ANALYZE)", "CHECKPOINT"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return 0, fmt.Errorf("%s: %w", sql, err)
		}
	}
	return time.Since(start), nil
}

// printPostgresTables prints where the database's size goes: each table
// of the store with its heap, indexes and TOAST, and what a new, empty
// database takes (PostgreSQL's catalog, in every database whatever it
// holds).
func printPostgresTables(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT c.relname, c.reltuples::bigint, pg_relation_size(c.oid),
	pg_indexes_size(c.oid), pg_total_relation_size(c.oid) - pg_relation_size(c.oid) - pg_indexes_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname = 'public'
ORDER BY pg_total_relation_size(c.oid) DESC`)
	if err != nil {
		return err
	}
	fmt.Printf("%-20s %10s %12s %12s %12s\n", "table", "rows", "heap B", "indexes B", "TOAST B")
	for rows.Next() {
		var name string
		var n, heap, idx, toast int64
		if err := rows.Scan(&name, &n, &heap, &idx, &toast); err != nil {
			return err
		}
		fmt.Printf("%-20s %10d %12d %12d %12d\n", name, max(n, 0), heap, idx, toast)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var empty int64
	if err := conn.QueryRow(ctx, "SELECT pg_database_size('template1')").Scan(&empty); err != nil {
		return err
	}
	fmt.Printf("an empty database (template1): %d B\n", empty)
	return nil
}
