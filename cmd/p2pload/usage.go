package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
	bolt "go.etcd.io/bbolt"
)

// printUsage prints where the bytes of the bbolt file at path go, by
// bucket family (see boltdb.Family), per resource of the n loaded: the
// bytes of keys and values, and of the pages given to them. It then
// prints the index keys per resource of each type's index buckets.
func printUsage(path string, n int) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	buckets, size, err := boltdb.Usage(db)
	if err != nil {
		return err
	}
	type fam struct {
		keys           int
		kv, vals, page int64
	}
	fams := map[string]*fam{}
	var order []string
	var total fam
	indexKeys := map[string]int{} // by type
	indexes := map[string][]boltdb.BucketUsage{}
	for _, b := range buckets {
		name := boltdb.Family(b.Name)
		f := fams[name]
		if f == nil {
			f = &fam{}
			fams[name] = f
			order = append(order, name)
		}
		f.keys += b.Keys
		f.kv += b.KeyBytes + b.ValBytes
		f.vals += b.ValBytes
		f.page += b.PageBytes
		total.keys += b.Keys
		total.kv += b.KeyBytes + b.ValBytes
		total.page += b.PageBytes
		if name == "I:" {
			typ, _, _ := strings.Cut(b.Name[2:], ":")
			indexKeys[typ] += b.Keys
			indexes[typ] = append(indexes[typ], b)
		}
	}
	sort.Strings(order)
	per := func(v int64) float64 { return float64(v) / float64(n) }
	fmt.Printf("\nbytes per resource by bucket family (%d resources; file %.0f B per resource, pages up to the highest in use %.0f B, of them free %.0f B)\n",
		n, per(fi.Size()), per(size), per(size-total.page))
	fmt.Printf("%-8s %12s %14s %14s %14s\n", "family", "keys/res", "key+value B", "of it value B", "page B")
	for _, name := range order {
		f := fams[name]
		fmt.Printf("%-8s %12.2f %14.0f %14.0f %14.0f\n", name, float64(f.keys)/float64(n), per(f.kv), per(f.vals), per(f.page))
	}
	fmt.Printf("%-8s %12.2f %14.0f %14s %14.0f\n", "total", float64(total.keys)/float64(n), per(total.kv), "", per(total.page))
	var types []string
	for typ := range indexKeys {
		types = append(types, typ)
	}
	sort.Strings(types)
	for _, typ := range types {
		count := 0
		for _, b := range buckets {
			if b.Name == "R:"+typ {
				count = b.Keys
			}
		}
		if count == 0 {
			continue
		}
		fmt.Printf("index keys per %s: %.2f (", typ, float64(indexKeys[typ])/float64(count))
		for i, b := range indexes[typ] {
			if i > 0 {
				fmt.Print(", ")
			}
			fmt.Printf("%s %.2f/%.0f B", strings.TrimPrefix(b.Name, "I:"+typ+":"), float64(b.Keys)/float64(count), float64(b.KeyBytes+b.ValBytes)/float64(count))
		}
		fmt.Println(")")
	}
	return nil
}
