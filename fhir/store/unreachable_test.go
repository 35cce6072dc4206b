package store_test

import (
	"context"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestWriteOnUnreachableDatabaseIsTransient: a write whose commit finds
// the PostgreSQL server stopped fails as the server being unavailable for
// a while (errs.Transient: 503 with Retry-After, RFC 9110 section
// 15.6.4), as a read does, not as a fault of the server's own (500).
func TestWriteOnUnreachableDatabaseIsTransient(t *testing.T) {
	ctx := context.Background()
	srv, url := pgtest.Own(t)
	db, err := store.OpenDB(ctx, url, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := store.Open(db, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	write := func(id string) error {
		d := doc(t, "Patient", id, `{"resourceType":"Patient","id":"`+id+`"}`)
		return st.Write(ctx, func(tx *store.Tx) error {
			_, err := tx.Put(d, store.PutOptions{})
			return err
		})
	}
	if err := write("p1"); err != nil {
		t.Fatalf("a write while the server runs: %v", err)
	}
	srv.Stop()
	err = write("p2")
	if err == nil {
		t.Fatal("a write with the server stopped succeeded")
	}
	if !errs.Is(err, errs.Transient) {
		t.Errorf("a write with the server stopped: %v (kind %v); want Transient", err, errs.KindOf(err))
	}
}
