package pgdb_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestKeepSchemaLeavesTheDatabaseAsItIs: a database opened with
// KeepSchema (the source of `p2pserver migrate`) is read as it is: one
// without a schema gets none, one at an earlier version is refused and
// stays at that version (the version that wrote it can still open it),
// one at the current version opens. Opened without KeepSchema, the
// schema is created or upgraded, and the Logger is told so once; the
// table migration 4 writes anew has statistics.
func TestKeepSchemaLeavesTheDatabaseAsItIs(t *testing.T) {
	ctx := context.Background()
	version := func(t *testing.T, url string) (int, bool) {
		t.Helper()
		p, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var exists bool
		if err := p.QueryRow(ctx, `SELECT to_regclass('p2p_schema') IS NOT NULL`).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if !exists {
			return 0, false
		}
		var v int
		if err := p.QueryRow(ctx, `SELECT max(version) FROM p2p_schema`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v, true
	}
	atVersion := func(t *testing.T, v int) string {
		t.Helper()
		url := pgtest.Database(t)
		if v == 0 {
			return url
		}
		p, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := pgdb.MigrateTo(ctx, p, v); err != nil {
			t.Fatal(err)
		}
		return url
	}
	current := pgdb.SchemaVersions
	for _, c := range []struct {
		name    string
		at      int    // the schema's version before (0: none)
		refused string // KeepSchema's error, "" when it opens
		logged  string // what opening without KeepSchema logs
	}{
		{"no schema", 0, "holds no p2pserver database", "database schema created"},
		{"version 3", 3, "older than this p2pserver reads", "database schema upgraded"},
		{"version 1", 1, "older than this p2pserver reads", "database schema upgraded"},
		{"current", current, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			url := atVersion(t, c.at)
			db, err := pgdb.OpenWith(ctx, url, pgdb.Options{KeepSchema: true})
			switch {
			case c.refused == "" && err != nil:
				t.Fatalf("KeepSchema: %v", err)
			case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused)):
				t.Fatalf("KeepSchema: error %v, want one saying %q", err, c.refused)
			}
			if db != nil {
				db.Close()
			}
			if v, exists := version(t, url); v != c.at || exists != (c.at > 0) {
				t.Fatalf("after KeepSchema the schema is at %d (table there: %v), want %d as before", v, exists, c.at)
			}
			var log bytes.Buffer
			db, err = pgdb.OpenWith(ctx, url, pgdb.Options{Logger: slog.New(slog.NewTextHandler(&log, nil))})
			if err != nil {
				t.Fatal(err)
			}
			db.Close()
			if v, _ := version(t, url); v != current {
				t.Fatalf("opened without KeepSchema, the schema is at %d, want %d", v, current)
			}
			// Migration 4 analyzes the table it writes anew: plans made
			// before autovacuum came would otherwise have no statistics.
			if p, err := pgxpool.New(ctx, url); err != nil {
				t.Fatal(err)
			} else {
				var tuples float64
				if err := p.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE relname = 'p2p_resources'`).Scan(&tuples); err != nil {
					t.Fatal(err)
				}
				p.Close()
				if tuples < 0 {
					t.Errorf("p2p_resources was never analyzed (reltuples %v)", tuples)
				}
			}
			lines := strings.Count(log.String(), "\n")
			if c.logged == "" && lines != 0 || c.logged != "" && (lines != 1 || !strings.Contains(log.String(), c.logged)) {
				t.Fatalf("logged %q, want %q", log.String(), c.logged)
			}
		})
	}
}
