package pgdb

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestKilledSessions: PostgreSQL ends the sessions of a process
// (pg_terminate_backend, as an administrator or a failover does) while its
// connections are parked in a finished read transaction or idle in the
// pool. The next requests must not fail, or one fails cleanly and the
// process recovers: a dead connection is not handed to request after
// request.
func TestKilledSessions(t *testing.T) {
	ctx := context.Background()
	rows := []struct {
		name  string
		conns int           // connections the process has in use before
		wait  time.Duration // between the last use and the kill
		write bool          // the requests after the kill write
	}{
		{"one connection parked, then a read", 1, 0, false},
		{"one connection parked, then a write", 1, 0, true},
		{"eight connections parked, then reads", 8, 0, false},
		{"eight connections parked, then writes", 8, 0, true},
		{"eight connections idle in the pool, then reads", 8, 3 * parkTTL, false},
		{"eight connections idle in the pool, then writes", 8, 3 * parkTTL, true},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			url := pgtest.Database(t)
			d, err := Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			put := func(v string) error {
				return d.Update(ctx, func(tx backend.Tx) error {
					b, err := tx.CreateBucketIfNotExists([]byte("jobs"))
					if err != nil {
						return err
					}
					return b.Put([]byte("k"), []byte(v))
				})
			}
			get := func() (string, error) {
				var v string
				err := d.View(ctx, func(tx backend.Tx) error {
					if b := tx.Bucket([]byte("jobs")); b != nil {
						v = string(b.Get([]byte("k")))
					}
					return nil
				})
				return v, err
			}
			if err := put("1"); err != nil {
				t.Fatal(err)
			}
			// conns reads at once, each on a connection of its own:
			// each holds it until every one has its own (a read
			// finishing before would hand its connection over to one
			// still waiting for the pool).
			var wg, have sync.WaitGroup
			start, all := make(chan struct{}), make(chan struct{})
			for range row.conns {
				wg.Add(1)
				have.Add(1)
				go func() {
					defer wg.Done()
					<-start
					d.View(ctx, func(tx backend.Tx) error {
						tx.Bucket([]byte("jobs")).Get([]byte("k"))
						have.Done()
						<-all
						return nil
					})
				}()
			}
			close(start)
			have.Wait()
			close(all)
			wg.Wait()
			time.Sleep(row.wait)
			admin, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			var killed int
			if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
	WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&killed); err != nil {
				t.Fatal(err)
			}
			admin.Close(ctx)
			if killed < row.conns {
				t.Fatalf("%d sessions ended, want at least %d", killed, row.conns)
			}
			time.Sleep(10 * time.Millisecond) // the sessions are gone
			var failed []error
			for i := range 2 * row.conns {
				var err error
				if row.write {
					err = put(string(rune('a' + i)))
				} else {
					_, err = get()
				}
				if err != nil {
					failed = append(failed, err)
				}
			}
			if len(failed) > 1 {
				t.Errorf("%d of %d requests after the kill failed, want at most 1: %v", len(failed), 2*row.conns, failed)
			}
			if v, err := get(); err != nil || v == "" {
				t.Errorf("a read after recovering: %q, %v", v, err)
			}
		})
	}
}
