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
// database for the spawned server, and returns what stops it.
func usePostgres() (func(), error) {
	srv, err := pgtest.Start()
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
	fmt.Println("p2pload: the server runs on a private PostgreSQL database")
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
