package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// TestCopyRefusesDatabaseNotEmpty: a Copy goes only into an empty
// database (or one holding its own unfinished copy): into one a store
// has written to, on either backend, it is refused before anything is
// copied, and that database is not taken for an unfinished copy.
func TestCopyRefusesDatabaseNotEmpty(t *testing.T) {
	ctx := context.Background()
	src, err := store.OpenDB(ctx, filepath.Join(t.TempDir(), "src.db"), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Update(ctx, func(tx backend.Tx) error {
		b, err := tx.CreateBucket([]byte("jobs"))
		if err != nil {
			return err
		}
		return b.Put([]byte("1"), []byte("from the source"))
	}); err != nil {
		t.Fatal(err)
	}
	dsn := storetest.DSN(t)
	dst := storetest.OpenDB(t, dsn)
	defer dst.Close()
	st, err := store.Open(dst, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	put(t, st, doc(t, "Patient", "p1", `{"resourceType":"Patient","id":"p1"}`))
	st.Close()
	if _, err := store.Copy(ctx, src, dst, nil); !errors.Is(err, store.ErrTargetNotEmpty) {
		t.Fatalf("Copy into a database holding a Patient: %v; want ErrTargetNotEmpty", err)
	}
	if err := dst.View(ctx, func(tx backend.Tx) error {
		if b := tx.Bucket([]byte("jobs")); b != nil {
			t.Errorf("the refused copy made the bucket jobs")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := store.CheckCopied(ctx, dst); err != nil {
		t.Errorf("a database a copy was refused into: %v", err)
	}
}
