package boltdb

import (
	"sort"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// BucketUsage is what one top-level bucket of a bbolt file holds: its
// keys, the bytes of their keys and values, and the bytes of the pages
// given to it (branch and leaf pages, overflow included).
type BucketUsage struct {
	Name      string
	Keys      int
	KeyBytes  int64
	ValBytes  int64
	PageBytes int64
}

// Family is the bucket family a store bucket belongs to, for sizing: "R:"
// (current versions), "H:" (history), "X:" (a resource's index entries),
// "I:" (search indexes), "C" (the change log), "C:" (the change log by
// type), "M" (the store's metadata); any other bucket (the domain packages'
// own) is "other".
func Family(name string) string {
	switch {
	case name == "C" || name == "M":
		return name
	case len(name) > 2 && name[1] == ':' && strings.ContainsRune("RHXIC", rune(name[0])):
		return name[:2]
	}
	return "other"
}

// Usage reports every top-level bucket of db, sorted by name, and the
// bytes of the pages up to the highest one in use (the file is longer:
// bbolt grows it by steps of up to 16 MiB). It reads every key (a long
// read transaction on a large file).
func Usage(db *bolt.DB) (buckets []BucketUsage, size int64, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			u := BucketUsage{Name: string(name)}
			st := b.Stats()
			u.PageBytes = int64(st.BranchAlloc + st.LeafAlloc)
			err := b.ForEach(func(k, v []byte) error {
				u.Keys++
				u.KeyBytes += int64(len(k))
				u.ValBytes += int64(len(v))
				return nil
			})
			buckets = append(buckets, u)
			return err
		})
	})
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].Name < buckets[j].Name })
	return buckets, size, err
}
