package pgdb_test

import (
	"context"
	"errors"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestUnreachableDatabaseIsTransient: while the PostgreSQL server is
// stopped, a read and a write fail as the server being unavailable for a
// while (errs.Transient: 503 with Retry-After on /fhir and /api, RFC 9110
// section 15.6.4), not as a fault of the server's own (500).
func TestUnreachableDatabaseIsTransient(t *testing.T) {
	ctx := context.Background()
	srv, url := pgtest.Own(t)
	db, err := pgdb.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	read := func(tx backend.Tx) error {
		tx.Bucket([]byte("jobs"))
		return nil
	}
	if err := db.View(ctx, read); err != nil {
		t.Fatalf("a read while the server runs: %v", err)
	}
	srv.Stop()
	for name, op := range map[string]func() error{
		"read": func() error { return db.View(ctx, read) },
		"write": func() error {
			return db.Update(ctx, func(tx backend.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("jobs")); return err })
		},
	} {
		err := op()
		if err == nil {
			t.Fatalf("a %s with the server stopped succeeded", name)
		}
		var e *errs.Error
		if !errs.Is(err, errs.Transient) || !errors.As(err, &e) || e.RetryAfter <= 0 {
			t.Errorf("a %s with the server stopped: %v (kind %v); want Transient with a Retry-After", name, err, errs.KindOf(err))
		}
	}
}
