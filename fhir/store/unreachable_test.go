package store_test

import (
	"context"
	"encoding/json"
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
	srv, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			srv.Stop()
		}
	}()
	url, err := srv.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
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
		body := `{"resourceType":"Patient","id":"` + id + `"}`
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatal(err)
		}
		return st.Write(ctx, func(tx *store.Tx) error {
			_, err := tx.Put(&store.Doc{Type: "Patient", ID: id, Map: m, JSON: []byte(body)}, store.PutOptions{})
			return err
		})
	}
	if err := write("p1"); err != nil {
		t.Fatalf("a write while the server runs: %v", err)
	}
	srv.Stop()
	stopped = true
	err = write("p2")
	if err == nil {
		t.Fatal("a write with the server stopped succeeded")
	}
	if !errs.Is(err, errs.Transient) {
		t.Errorf("a write with the server stopped: %v (kind %v); want Transient", err, errs.KindOf(err))
	}
}
