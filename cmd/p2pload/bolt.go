package main

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// boltBucketSize is one line of where a bbolt file's size goes: a
// top-level bucket of the store (with its nested buckets), its keys and
// the bytes of the pages it takes (branch, leaf and overflow pages, or
// its size inline in its parent's page).
type boltBucketSize struct {
	Name  string
	Keys  int
	Bytes int64
}

// boltSizes opens the bbolt file at path read-only (the server must have
// stopped) and returns its top-level buckets, largest first, and the
// bytes of the file in no bucket: the meta and freelist pages, free
// pages, and the end of the file bbolt has grown it to but not used yet.
func boltSizes(path string) ([]boltBucketSize, int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, 0, err
	}
	defer db.Close()
	pageSize := int64(db.Info().PageSize)
	var sizes []boltBucketSize
	var inBuckets int64
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			st := b.Stats()
			n := int64(st.BranchPageN+st.BranchOverflowN+st.LeafPageN+st.LeafOverflowN) * pageSize
			if st.BranchPageN+st.LeafPageN == 0 { // inline, in the root bucket's page
				n = int64(st.InlineBucketInuse)
			}
			inBuckets += n
			sizes = append(sizes, boltBucketSize{Name: string(name), Keys: st.KeyN, Bytes: n})
			return nil
		})
	}); err != nil {
		return nil, 0, err
	}
	slices.SortFunc(sizes, func(a, b boltBucketSize) int {
		return cmp.Or(cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Name, b.Name))
	})
	return sizes, fi.Size() - inBuckets, nil
}

// printBoltSizes prints the top largest buckets of sizes, the others
// summed on one line, then the bytes in no bucket.
func printBoltSizes(w io.Writer, sizes []boltBucketSize, other int64, top int) {
	fmt.Fprintf(w, "%-40s %10s %12s\n", "bucket", "keys", "bytes")
	var restKeys, restBytes int64
	for i, s := range sizes {
		if i < top {
			fmt.Fprintf(w, "%-40s %10d %12d\n", s.Name, s.Keys, s.Bytes)
			continue
		}
		restKeys += int64(s.Keys)
		restBytes += s.Bytes
	}
	if len(sizes) > top {
		fmt.Fprintf(w, "%-40s %10d %12d\n", fmt.Sprintf("%d other buckets", len(sizes)-top), restKeys, restBytes)
	}
	fmt.Fprintf(w, "%-40s %10s %12d\n", "other pages (meta, freelist, free, unused)", "", other)
}
