// Package storetest gives tests a database for the store: a bbolt file in
// the test's temporary folder.
package storetest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// DSN returns a new, empty database for tb, for store.OpenDB; it stays
// until tb ends, so that a test can close and open it again.
func DSN(tb testing.TB) string {
	tb.Helper()
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
// file), for tests that check a secret is nowhere in clear. The database
// should be closed, so that everything is written.
func Dump(tb testing.TB, dsn string) []byte {
	tb.Helper()
	raw, err := os.ReadFile(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}
