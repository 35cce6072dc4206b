package pgdb

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestParkedReadTransactions: a read transaction's connection is left in
// it (parked) and rolled back in the round trip of the next transaction
// that takes it, so that a read of one statement is one round trip; the
// next reader still sees every write committed before it began, a writer
// takes a parked connection, and a connection parked for parkTTL, or when
// the database closes, is rolled back and returned to the pool.
func TestParkedReadTransactions(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	// Other is another process on the database; this one has a single
	// connection, so that each transaction takes the parked one.
	other, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	put := func(d *DB, v string) {
		t.Helper()
		err := d.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("jobs"))
			if err != nil {
				return err
			}
			return b.Put([]byte("k"), []byte(v))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	get := func(d *DB) string {
		t.Helper()
		var v string
		err := d.View(ctx, func(tx backend.Tx) error {
			if b := tx.Bucket([]byte("jobs")); b != nil {
				v = string(b.Get([]byte("k")))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// idleInTx counts the database's sessions left in a transaction.
	idleInTx := func() int {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
	WHERE datname = current_database() AND state = 'idle in transaction'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	put(other, "1")
	d, err := Open(ctx, url+"&pool_max_conns=1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// The clock is read by the parking sweeper's goroutine too.
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	d.parking.now = func() time.Time { return time.Unix(0, clock.Load()) }

	steps := []struct {
		name    string
		do      func() string
		want    string
		parked  int // connections parked afterwards
		idleInT int // sessions idle in a transaction afterwards
	}{
		{"a read parks its connection", func() string { return get(d) }, "1", 1, 1},
		{"another process writes", func() string { put(other, "2"); return "" }, "", 1, 1},
		{"the next read rolls back the old snapshot and sees the write", func() string { return get(d) }, "2", 1, 1},
		{"a write takes the parked connection (the pool has one)", func() string { put(d, "3"); return "" }, "", 0, 0},
		{"and the read after it sees it", func() string { return get(d) }, "3", 1, 1},
		{"a sweep before parkTTL keeps it", func() string { clock.Add(int64(parkTTL / 2)); d.parking.sweep(); return "" }, "", 1, 1},
		{"a sweep at parkTTL rolls it back", func() string { clock.Add(int64(parkTTL / 2)); d.parking.sweep(); return "" }, "", 0, 0},
		{"a read after the sweep", func() string { return get(d) }, "3", 1, 1},
		{"closing ends the parked transaction", func() string { d.Close(); return "" }, "", 0, 0},
	}
	for _, s := range steps {
		if got := s.do(); got != s.want {
			t.Fatalf("%s: read %q, want %q", s.name, got, s.want)
		}
		d.parking.mu.Lock()
		parked := len(d.parking.conns)
		d.parking.mu.Unlock()
		if parked != s.parked {
			t.Fatalf("%s: %d connections parked, want %d", s.name, parked, s.parked)
		}
		if n := idleInTx(); n != s.idleInT {
			t.Fatalf("%s: %d sessions idle in a transaction, want %d", s.name, n, s.idleInT)
		}
	}
}

// TestWaiterTakesFinishedReadsConnection: while a transaction waits for
// a connection of the pool, a finished read hands its connection over to
// it rather than parking it, where only the transactions that come after
// would find it. The clock is stopped, so that a parked connection is
// never swept back to the pool: the waiter gets one only from the
// finished read.
func TestWaiterTakesFinishedReadsConnection(t *testing.T) {
	ctx := context.Background()
	d, err := Open(ctx, pgtest.Database(t)+"&pool_max_conns=1")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stopped := time.Now()
	d.parking.mu.Lock()
	d.parking.now = func() time.Time { return stopped }
	d.parking.mu.Unlock()
	read := func(ctx context.Context, during func()) error {
		return d.View(ctx, func(tx backend.Tx) error {
			tx.Bucket([]byte("jobs")) // a round trip: begins the transaction
			during()
			return nil
		})
	}
	done := make(chan error, 1)
	err = read(ctx, func() {
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			done <- read(wctx, func() {})
		}()
		for {
			d.parking.mu.Lock()
			n := len(d.parking.waiters)
			d.parking.mu.Unlock()
			if n > 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the waiting read: %v", err)
	}
}
