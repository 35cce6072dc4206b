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

// TestCopyOfACopy: a database made by Copy can be copied again (the way
// back from PostgreSQL, then a compact bbolt copy of that file): the
// copy's own record of its progress is not data and is not copied, so
// the second copy takes every bucket, also those sorted after it, and is
// verified.
func TestCopyOfACopy(t *testing.T) {
	ctx := context.Background()
	open := func(name string) store.DB {
		t.Helper()
		db, err := store.OpenDB(ctx, filepath.Join(t.TempDir(), name), store.DBOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return db
	}
	src, first, second := open("src.db"), open("first.db"), open("second.db")
	want := map[string]string{"A": "1", "jobs": "2", "notify_meta": "3", "oidc_servers": "4"}
	if err := src.Update(ctx, func(tx backend.Tx) error {
		for bucket, v := range want {
			b, err := tx.CreateBucket([]byte(bucket))
			if err != nil {
				return err
			}
			if err := b.Put([]byte("k"), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Copy(ctx, src, first, nil); err != nil {
		t.Fatalf("first copy: %v", err)
	}
	counts, err := store.Copy(ctx, first, second, nil)
	if err != nil {
		t.Fatalf("copy of the copy: %v (counts %+v)", err, counts)
	}
	if len(counts) != len(want) {
		t.Errorf("copy of the copy counted %d buckets, want the %d data buckets: %+v", len(counts), len(want), counts)
	}
	if err := second.View(ctx, func(tx backend.Tx) error {
		for bucket, v := range want {
			b := tx.Bucket([]byte(bucket))
			if b == nil {
				t.Errorf("bucket %s not copied", bucket)
				continue
			}
			if got := string(b.Get([]byte("k"))); got != v {
				t.Errorf("bucket %s: k = %q, want %q", bucket, got, v)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := store.CheckCopied(ctx, second); err != nil {
		t.Errorf("the copy of the copy: %v", err)
	}
}
