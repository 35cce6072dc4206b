package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	bbolt "go.etcd.io/bbolt"

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
	open := func(name string) store.DB { return newBoltDB(t, name) }
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

// TestCompactCopyIsNoLarger: a bbolt copy of a bbolt file (the README's
// "compact copy of a file grown large") is compact: the file a store
// filled one write at a time has pages split wherever the writes fell
// (half to two thirds full), the copy writes keys in order and fills its
// pages to 90%, so it takes at most three quarters of the file's pages
// (written with bbolt's split in half it took 0.91 to 1.01 of them).
func TestCompactCopyIsNoLarger(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	srcPath, dstPath := filepath.Join(dir, "src.db"), filepath.Join(dir, "copy.db")
	src, err := store.OpenDB(ctx, srcPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(src, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		id := fmt.Sprintf("o%d", (i*7919)%1000) // ids not in key order
		put(t, st, doc(t, "Observation", id, fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"coding":[{"system":"urn:c","code":"c%d"}]},"subject":{"reference":"Patient/p%d"},"effectiveDateTime":"2020-01-%02dT10:00:00Z"}`, id, i%50, i%300, 1+i%28)))
	}
	st.Close()
	src.Close()
	if src, err = store.OpenDB(ctx, srcPath, store.DBOptions{}); err != nil {
		t.Fatal(err)
	}
	dst, err := store.OpenDB(ctx, dstPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.Copy(ctx, src, dst, nil)
	src.Close()
	dst.Close()
	if err != nil {
		t.Fatal(err)
	}
	inUse := func(path string) int {
		t.Helper()
		db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		n := 0
		if err := db.View(func(tx *bbolt.Tx) error {
			n = int(tx.Size()) / db.Info().PageSize
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n - db.Stats().FreePageN
	}
	s, c := inUse(srcPath), inUse(dstPath)
	t.Logf("pages in use: the file %d, its copy %d", s, c)
	if c*4 > s*3 {
		t.Errorf("the copy uses %d pages, more than three quarters of the file's %d", c, s)
	}
}

// TestCopyRefusesAnotherSourcesCopy: into a database holding a copy of
// another database, finished or cut short, a Copy is refused before it
// writes anything (it would mix the two); a Copy of the same database
// again only verifies.
func TestCopyRefusesAnotherSourcesCopy(t *testing.T) {
	ctx := context.Background()
	open := func(name string) store.DB { return newBoltDB(t, name) }
	fill := func(db store.DB, v string, n int) {
		t.Helper()
		if err := db.Update(ctx, func(tx backend.Tx) error {
			b, err := tx.CreateBucket([]byte("jobs"))
			if err != nil {
				return err
			}
			for i := range n {
				if err := b.Put([]byte(fmt.Sprintf("k%04d", i)), []byte(v)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	a, b, dst := open("a.db"), open("b.db"), open("dst.db")
	fill(a, "from a", 10)
	fill(b, "from b", 12)
	if _, err := store.Copy(ctx, a, dst, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Copy(ctx, b, dst, nil); !errors.Is(err, store.ErrOtherSource) {
		t.Fatalf("copy of b into a's copy: %v, want ErrOtherSource", err)
	}
	if _, err := store.Copy(ctx, a, dst, nil); err != nil {
		t.Fatalf("copy of a again into its copy: %v", err)
	}
	if err := dst.View(ctx, func(tx backend.Tx) error {
		n := 0
		return tx.Bucket([]byte("jobs")).ForEach(func(k, v []byte) error {
			if n++; string(v) != "from a" || n > 10 {
				t.Errorf("after the refused copy, %s = %q (key %d)", k, v, n)
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
}

// newBoltDB opens a new bbolt file named name in a folder of t's,
// closed when t ends.
func newBoltDB(t *testing.T, name string) store.DB {
	t.Helper()
	db, err := store.OpenDB(context.Background(), filepath.Join(t.TempDir(), name), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
