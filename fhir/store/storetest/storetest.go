// Package storetest gives tests a database for the store, on the backend
// P2P_TEST_DB names: "bbolt" (the default) a file in the test's temporary
// folder, "postgres" a new database on a private PostgreSQL server (see
// internal/pgtest), which fails the test, saying how to install
// PostgreSQL, on a machine without it.
package storetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// Env is the environment variable naming the backend of tests.
const Env = "P2P_TEST_DB"

// The backends.
const (
	Bolt     = "bbolt"
	Postgres = "postgres"
)

// Backend returns the backend tests run on (see Env).
func Backend() string {
	if os.Getenv(Env) == Postgres {
		return Postgres
	}
	return Bolt
}

// Main runs the tests once per backend, for the store's contract suite:
// both, unless P2P_TEST_DB names one. It returns the exit code, failed
// if either run failed: for a TestMain, os.Exit(storetest.Main(m)).
func Main(m *testing.M) int {
	backends := []string{Bolt, Postgres}
	switch v := os.Getenv(Env); v {
	case "":
	case Bolt, Postgres:
		backends = []string{v}
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want %s or %s\n", Env, v, Bolt, Postgres)
		return 2
	}
	code := 0
	for _, b := range backends {
		os.Setenv(Env, b)
		fmt.Printf("=== the tests on %s\n", b)
		if c := m.Run(); c != 0 {
			fmt.Printf("=== the tests failed on %s\n", b)
			code = c
		}
	}
	pgtest.StopShared()
	return code
}

// DSN returns a new, empty database for tb on the backend (see Backend),
// for store.OpenDB; it stays until tb ends (a PostgreSQL one until the
// test binary ends), so that a test can close and open it again.
func DSN(tb testing.TB) string {
	tb.Helper()
	if Backend() == Postgres {
		return pgtest.Database(tb)
	}
	return filepath.Join(tb.TempDir(), "p2p.db")
}

// OpenDB opens dsn (see store.OpenDB), failing tb if it cannot. The
// caller closes it.
func OpenDB(tb testing.TB, dsn string) store.DB {
	tb.Helper()
	db, err := store.OpenDB(context.Background(), dsn, store.DBOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return db
}

// Open returns a store on a new database, closed when tb ends.
func Open(tb testing.TB, reg *search.Registry, log *slog.Logger) *store.Store {
	tb.Helper()
	db := OpenDB(tb, DSN(tb))
	st, err := store.Open(db, reg, log)
	if err != nil {
		db.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close(); db.Close() })
	return st
}

// Dump returns everything the database dsn holds as raw bytes (the bbolt
// file, or every column of every PostgreSQL table), for tests that check
// a secret is nowhere in clear. The database should be closed, so that
// everything is written.
func Dump(tb testing.TB, dsn string) []byte {
	tb.Helper()
	if !store.IsPostgres(dsn) {
		raw, err := os.ReadFile(dsn)
		if err != nil {
			tb.Fatal(err)
		}
		return raw
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	// Every table of the database's own schema, each row as its columns'
	// bytes (text and bytea alike, as stored, not as hex).
	rows, err := conn.Query(ctx, `SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c
JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.data_type IN ('bytea', 'text')`)
	if err != nil {
		tb.Fatal(err)
	}
	type col struct{ table, column, typ string }
	var cols []col
	for rows.Next() {
		var c col
		if err := rows.Scan(&c.table, &c.column, &c.typ); err != nil {
			tb.Fatal(err)
		}
		cols = append(cols, c)
	}
	rows.Close()
	if len(cols) == 0 {
		tb.Fatal("storetest: the database has no tables")
	}
	var out []byte
	for _, c := range cols {
		expr := pgx.Identifier{c.column}.Sanitize()
		if c.typ == "text" {
			expr = "convert_to(" + expr + ", 'UTF8')"
		}
		q := fmt.Sprintf("SELECT %s FROM %s", expr, pgx.Identifier{c.table}.Sanitize())
		rows, err := conn.Query(ctx, q)
		if err != nil {
			tb.Fatal(err)
		}
		for rows.Next() {
			var b []byte
			if err := rows.Scan(&b); err != nil {
				tb.Fatal(err)
			}
			out = append(append(out, b...), '\n')
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			tb.Fatal(err)
		}
	}
	return out
}

// Load writes the resources raws yields (FHIR JSON, each with its type
// and id) straight into st, create-only, in write transactions of 2,000,
// decoded and prepared (store.Prepare) on all cores: for benchmarks that
// need a large store fast. It returns once raws is closed and all is
// written; a resource that cannot be decoded fails tb (with Error, and
// the others are still written), a write fails it at once.
func Load(tb testing.TB, st *store.Store, raws <-chan []byte) {
	tb.Helper()
	docs := make(chan *store.Doc, 4096)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for raw := range raws {
				dec := json.NewDecoder(bytes.NewReader(raw))
				dec.UseNumber()
				var m map[string]any
				if err := dec.Decode(&m); err != nil {
					tb.Error(err)
					continue
				}
				typ, _ := m["resourceType"].(string)
				id, _ := m["id"].(string)
				d := &store.Doc{Type: typ, ID: id, Map: m, JSON: raw}
				st.Prepare(d)
				docs <- d
			}
		}()
	}
	go func() { wg.Wait(); close(docs) }()
	batch := make([]*store.Doc, 0, 2000)
	flush := func() {
		if err := st.Write(context.Background(), func(tx *store.Tx) error {
			for _, d := range batch {
				if _, err := tx.Put(d, store.PutOptions{CreateOnly: true}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			tb.Fatal(err)
		}
		batch = batch[:0]
	}
	for d := range docs {
		if batch = append(batch, d); len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
}
