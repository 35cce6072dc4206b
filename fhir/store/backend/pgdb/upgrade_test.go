package pgdb_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestDatabaseOfPreviousReleaseOpens: a database the previous release
// wrote keeps working. Its schema is the same (version 2); what a row of
// p2p_buckets means changed: that release made one for every bucket it
// wrote (and kept it when the bucket was deleted), none for a bucket
// made but never written, and answered every name as an existing bucket.
// Opened now, every bucket holding data exists with its keys and
// sequence, a name never written does not, and writing goes on.
func TestDatabaseOfPreviousReleaseOpens(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	db, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var version int
	if err := conn.QueryRow(ctx, `SELECT max(version) FROM p2p_schema`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	patient := record(1, `{"resourceType":"Patient","id":"p1"}`)
	// The rows the previous release's commit wrote for: outbox entries
	// with NextSequence called 7 times, a Patient created (its record
	// kept once, in p2p_versions), one change, and an index bucket
	// deleted since (its row stayed, with sequence 0).
	if _, err := conn.Exec(ctx, `
INSERT INTO p2p_buckets (name, seq) VALUES ('outbox', 7), ('R:Patient', 0), ('H:Patient', 0), ('C', 1), ('I:Patient:gone', 0);
INSERT INTO p2p_kv (bucket, key, value) VALUES ('outbox', '\x0001', 'first'), ('outbox', '\x0002', 'second');
INSERT INTO p2p_changes (log, seq, value) VALUES ('', 1, 'Patient/p1');`); err != nil {
		t.Fatal(err)
	}
	hist := append([]byte("p1\x00"), 0, 0, 0, 0, 0, 0, 0, 1)
	if _, err := conn.Exec(ctx, `INSERT INTO p2p_versions (type, id, version, rec) VALUES ('Patient', 'p1', 1, $1);
`, patient); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO p2p_resources (type, id, version, head, rec) VALUES ('Patient', 'p1', 1, $1, NULL)`, patient[:17]); err != nil {
		t.Fatal(err)
	}

	db, err = pgdb.Open(ctx, url)
	if err != nil {
		t.Fatalf("the new release on the previous one's database: %v", err)
	}
	defer db.Close()
	var after int
	if err := conn.QueryRow(ctx, `SELECT max(version) FROM p2p_schema`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != version {
		t.Errorf("schema version %d became %d", version, after)
	}
	err = db.View(ctx, func(tx backend.Tx) error {
		var names []string
		tx.ForEach(func(n []byte, _ backend.Bucket) error { names = append(names, string(n)); return nil })
		if got, want := fmt.Sprint(names), "[C H:Patient I:Patient:gone R:Patient outbox]"; got != want {
			t.Errorf("buckets %s, want %s", got, want)
		}
		for _, name := range []string{"never-written", "R:Observation", "I:Patient:name", "C:Patient"} {
			if tx.Bucket([]byte(name)) != nil {
				t.Errorf("%s, never written, exists", name)
			}
		}
		out := tx.Bucket([]byte("outbox"))
		if out == nil {
			t.Fatal("outbox does not exist")
		}
		if got := out.Get([]byte{0, 2}); string(got) != "second" {
			t.Errorf("outbox 0002 = %q", got)
		}
		if s := out.Sequence(); s != 7 {
			t.Errorf("outbox sequence %d, want 7", s)
		}
		r := tx.Bucket([]byte("R:Patient"))
		if r == nil || !bytes.Equal(r.Get([]byte("p1")), patient) {
			t.Errorf("R:Patient p1 does not read back")
		}
		if h := tx.Bucket([]byte("H:Patient")); h == nil || !bytes.Equal(h.Get(hist), patient) {
			t.Errorf("H:Patient p1 version 1 does not read back")
		}
		if c := tx.Bucket([]byte("C")); c == nil || c.Sequence() != 1 {
			t.Errorf("the change log does not exist with sequence 1")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(ctx, func(tx backend.Tx) error {
		if s, err := tx.Bucket([]byte("outbox")).NextSequence(); s != 8 || err != nil {
			t.Errorf("outbox NextSequence = %d, %v; want 8", s, err)
		}
		if _, err := tx.CreateBucket([]byte("outbox")); err == nil {
			t.Error("CreateBucket of the existing outbox succeeded")
		}
		b, err := tx.CreateBucket([]byte("never-written"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.View(ctx, func(tx backend.Tx) error {
		if b := tx.Bucket([]byte("never-written")); b == nil || string(b.Get([]byte("k"))) != "v" {
			t.Error("a bucket made after the upgrade does not read back")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
