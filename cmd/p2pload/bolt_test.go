package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestBoltSizes: where a bbolt file's size goes, bucket by bucket: the
// largest bucket first with its keys and at least the bytes of its
// values, and the other pages (meta, freelist, free, the file's unused
// end) at least the two meta pages.
func TestBoltSizes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "load.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		big, err := tx.CreateBucket([]byte("I:Observation:code"))
		if err != nil {
			return err
		}
		for i := range 1000 {
			if err := big.Put(fmt.Appendf(nil, "%06d", i), bytes.Repeat([]byte{'v'}, 200)); err != nil {
				return err
			}
		}
		small, err := tx.CreateBucket([]byte("leases"))
		if err != nil {
			return err
		}
		return small.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	sizes, other, err := boltSizes(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(sizes) != 2 || sizes[0].Name != "I:Observation:code" || sizes[1].Name != "leases" {
		t.Fatalf("buckets %+v, want the large one, then leases", sizes)
	}
	if sizes[0].Keys != 1000 || sizes[0].Bytes < 200*1000 {
		t.Errorf("the large bucket: %+v, want 1000 keys in at least 200,000 bytes", sizes[0])
	}
	if sizes[1].Keys != 1 || sizes[1].Bytes <= 0 {
		t.Errorf("leases: %+v, want 1 key in some bytes", sizes[1])
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// 1,000 keys of 222 bytes with bbolt's headers fill their pages about
	// half (bbolt splits pages at half full): pages counted twice show
	// here, and in the other pages going below the two meta pages.
	if sizes[0].Bytes > 3*222*1000 {
		t.Errorf("the large bucket takes %d bytes for 222,000 bytes of keys and values", sizes[0].Bytes)
	}
	if other < 2*int64(os.Getpagesize()) || sizes[0].Bytes+sizes[1].Bytes+other != fi.Size() {
		t.Errorf("other pages %d bytes, buckets %d and %d, file %d", other, sizes[0].Bytes, sizes[1].Bytes, fi.Size())
	}
	var out strings.Builder
	printBoltSizes(&out, sizes, other, 1)
	for _, want := range []string{"I:Observation:code", "1 other buckets", "other pages"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, out.String())
		}
	}
}
