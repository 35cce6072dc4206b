package store_test

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	bolt "go.etcd.io/bbolt"
)

func obs(i int) string {
	return fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:b","code":"c%d"}]},"subject":{"reference":"Patient/p%d"},"effectiveDateTime":"2024-%02d-%02dT10:00:00Z","valueQuantity":{"value":%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`,
		i%1000, i%100, 1+i%12, 1+i%28, i%300)
}

// BenchmarkPut is one write transaction per resource, one writer.
func BenchmarkPut(b *testing.B) {
	st := openStore(b)
	b.ResetTimer()
	for i := range b.N {
		put(b, st, doc(b, "Observation", fmt.Sprintf("o%d", i), obs(i)))
	}
}

// BenchmarkPutParallel is concurrent writers sharing commits.
func BenchmarkPutParallel(b *testing.B) {
	st := openStore(b)
	b.SetParallelism(8)
	var n int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(atomicAdd(&n))
			d := doc(b, "Observation", fmt.Sprintf("o%d", i), obs(i))
			st.Prepare(d)
			if err := st.Write(context.Background(), func(tx *store.Tx) error {
				_, err := tx.Put(d, store.PutOptions{})
				return err
			}); err != nil {
				b.Error(err)
			}
		}
	})
}

func loaded(b *testing.B, n int) *store.Store {
	st := openStore(b)
	load(b, st, n)
	return st
}

// load writes n Observations into st, 500 per write.
func load(b *testing.B, st *store.Store, n int) {
	const chunk = 500
	for i := 0; i < n; i += chunk {
		if err := st.Write(context.Background(), func(tx *store.Tx) error {
			for j := i; j < min(i+chunk, n); j++ {
				if _, err := tx.Put(doc(b, "Observation", fmt.Sprintf("o%d", j), obs(j)), store.PutOptions{}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRead(b *testing.B) {
	st := loaded(b, 10000)
	b.ResetTimer()
	for i := range b.N {
		if err := st.View(context.Background(), func(tx *store.Tx) error {
			_, err := tx.Read("Observation", fmt.Sprintf("o%d", i%10000))
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSearchToken finds ~10 of 10,000 Observations by code.
func BenchmarkSearchToken(b *testing.B) {
	st := loaded(b, 10000)
	b.ResetTimer()
	for i := range b.N {
		if got := find(b, st, "Observation", fmt.Sprintf("code=urn:b|c%d", i%1000)); len(got) != 10 {
			b.Fatalf("%d hits", len(got))
		}
	}
}

// BenchmarkSearchDateRange finds the Observations of one month.
func BenchmarkSearchDateRange(b *testing.B) {
	st := loaded(b, 10000)
	b.ResetTimer()
	for i := range b.N {
		if got := find(b, st, "Observation", fmt.Sprintf("date=2024-%02d", 1+i%12)); len(got) == 0 {
			b.Fatal("no hits")
		}
	}
}

func atomicAdd(p *int64) int64 { return atomic.AddInt64(p, 1) }

// BenchmarkPage20Of100k is the first page of 20 of a search with 100,000
// matches (every Observation has code urn:b|all): "all" builds every
// matching id as a search did before keyset paging (Search, then the
// first 20); "page" reads only what the page needs (SearchPage). Sorted,
// both read every match; the page keeps only 21 of them.
func BenchmarkPage20Of100k(b *testing.B) {
	const n = 100000
	st := openStore(b)
	const chunk = 1000
	for i := 0; i < n; i += chunk {
		if err := st.Write(context.Background(), func(tx *store.Tx) error {
			for j := i; j < min(i+chunk, n); j++ {
				body := strings.Replace(obs(j), `"coding":[`, `"coding":[{"system":"urn:b","code":"all"},`, 1)
				if _, err := tx.Put(doc(b, "Observation", fmt.Sprintf("o%06d", j), body), store.PutOptions{}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	for _, sort := range []string{"", "-date,_id"} {
		vals := url.Values{"code": {"urn:b|all"}}
		if sort != "" {
			vals.Set("_sort", sort)
		}
		q, err := reg.Parse("Observation", vals, search.Options{})
		if err != nil {
			b.Fatal(err)
		}
		name := "sort=" + sort
		b.Run("all/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if err := st.View(context.Background(), func(tx *store.Tx) error {
					ids, err := tx.Search(q)
					if len(ids) != n {
						b.Fatalf("%d hits", len(ids))
					}
					_ = ids[:20]
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("page/"+name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				if err := st.View(context.Background(), func(tx *store.Tx) error {
					ids, _, more, err := tx.SearchPage(q, nil, 20, nil)
					if len(ids) != 20 || !more {
						b.Fatalf("%d ids, more %v", len(ids), more)
					}
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPutGroups is 64 concurrent writers creating prepared
// Observations, the database not synced (NoSync), so that what is
// measured is the writer's own work per write in a commit group: the
// puts, the index changes and the commit's page writes, not the disk.
func BenchmarkPutGroups(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "s.db"), 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(boltdb.Wrap(db), reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { st.Close(); db.Close() }()
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	var n int64
	b.ReportAllocs()
	b.ResetTimer()
	t0 := cpuNow()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(atomicAdd(&n))
			d := doc(b, "Observation", fmt.Sprintf("o%09d", i), obs(i))
			st.Prepare(d)
			if err := st.Write(context.Background(), func(tx *store.Tx) error {
				_, err := tx.Put(d, store.PutOptions{})
				return err
			}); err != nil {
				b.Error(err)
			}
		}
	})
	b.ReportMetric(float64(cpuNow()-t0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkLargeWrite is one write of 10,000 prepared resources (a
// Patient then nine Observations referring to it, as in a large
// transaction Bundle), into a store that already holds 10,000: the time
// it holds the single writer.
func BenchmarkLargeWrite(b *testing.B) {
	st := loaded(b, 10000)
	b.ReportAllocs()
	for n := range b.N {
		b.StopTimer()
		docs := largeWriteDocs(b, st, n)
		b.StartTimer()
		largeWrite(b, st, docs)
	}
}

// largeWriteDocs is the 10,000 prepared resources of BenchmarkLargeWrite,
// their ids made distinct by n.
func largeWriteDocs(b *testing.B, st *store.Store, n int) []*store.Doc {
	docs := make([]*store.Doc, 10000)
	for i := range docs {
		id := fmt.Sprintf("t%d-%05d", n, i)
		if i%10 == 0 {
			docs[i] = doc(b, "Patient", id, fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:tx:member","value":"tx%d"}],"name":[{"family":"Transaction%d","given":["Given%d","Middle"]}],"gender":"female","birthDate":"1970-01-%02d"}`, i, i, i, 1+i%28))
		} else {
			docs[i] = doc(b, "Observation", id, strings.Replace(obs(i), `"Patient/p`, fmt.Sprintf(`"Patient/t%d-%05d`, n, i-i%10), 1))
		}
		st.Prepare(docs[i])
	}
	return docs
}

func largeWrite(b *testing.B, st *store.Store, docs []*store.Doc) {
	if err := st.WriteAlone(context.Background(), func(tx *store.Tx) error {
		for _, d := range docs {
			if _, err := tx.Put(d, store.PutOptions{CreateOnly: true}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkLargeWriteFloor is the floor under BenchmarkLargeWrite on
// bbolt: the store's write of 10,000 prepared resources ("store"), and
// one bbolt transaction putting exactly the keys and values that write
// put, each bucket's in key order, and committing with its sync ("bbolt"),
// both into a copy of the same database of 10,000 resources. No
// atomic write of those resources can hold the single writer for less
// than "bbolt".
func BenchmarkLargeWriteFloor(b *testing.B) {
	if storetest.Backend() != storetest.Bolt {
		b.Skip("a bbolt figure")
	}
	dir := b.TempDir()
	opts := &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType}
	open := func(path string) (*bolt.DB, *store.Store) {
		db, err := bolt.Open(path, 0o600, opts)
		if err != nil {
			b.Fatal(err)
		}
		st, err := store.Open(boltdb.Wrap(db), reg, nil)
		if err != nil {
			b.Fatal(err)
		}
		return db, st
	}
	// The database before the write, and what the write puts.
	base := filepath.Join(dir, "base.db")
	db, st := open(base)
	load(b, st, 10000)
	before := map[string][]byte{}
	for _, p := range dumpBolt(b, db) {
		before[p.bucket+"\x00"+string(p.key)] = p.value
	}
	largeWrite(b, st, largeWriteDocs(b, st, 0))
	var puts []boltPut
	for _, p := range dumpBolt(b, db) {
		if old, ok := before[p.bucket+"\x00"+string(p.key)]; !ok || !bytes.Equal(old, p.value) {
			puts = append(puts, p)
		}
	}
	st.Close()
	db.Close()
	// The dump of a bucket is in key order, and the buckets are in
	// name order: the order bbolt puts fastest.
	b.Logf("the write puts %d keys (%d bytes of values)", len(puts), valueBytes(puts))
	copyOf := func(n int) string {
		path := filepath.Join(dir, fmt.Sprintf("copy%d.db", n))
		data, err := os.ReadFile(base)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
		return path
	}
	b.Run("store", func(b *testing.B) {
		var cpu time.Duration
		for n := range b.N {
			b.StopTimer()
			db, st := open(copyOf(n))
			docs := largeWriteDocs(b, st, n+1)
			b.StartTimer()
			t0 := cpuNow()
			largeWrite(b, st, docs)
			cpu += cpuNow() - t0
			b.StopTimer()
			st.Close()
			db.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	})
	b.Run("bbolt", func(b *testing.B) {
		var cpu time.Duration
		for n := range b.N {
			b.StopTimer()
			db, err := bolt.Open(copyOf(n), 0o600, opts)
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t0 := cpuNow()
			if err := db.Update(func(tx *bolt.Tx) error {
				var bk *bolt.Bucket
				for i, p := range puts {
					if i == 0 || p.bucket != puts[i-1].bucket {
						var err error
						if bk, err = tx.CreateBucketIfNotExists([]byte(p.bucket)); err != nil {
							return err
						}
					}
					if err := bk.Put(p.key, p.value); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			cpu += cpuNow() - t0
			b.StopTimer()
			db.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	})
}

type boltPut struct {
	bucket     string
	key, value []byte
}

func valueBytes(ps []boltPut) (n int) {
	for _, p := range ps {
		n += len(p.key) + len(p.value)
	}
	return n
}

// dumpBolt returns every key of every top-level bucket of db, by bucket
// name and key, in order.
func dumpBolt(b *testing.B, db *bolt.DB) []boltPut {
	var order []boltPut
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			return bk.ForEach(func(k, v []byte) error {
				if v == nil {
					return nil // a nested bucket: the store makes none
				}
				order = append(order, boltPut{bucket: string(name), key: bytes.Clone(k), value: bytes.Clone(v)})
				return nil
			})
		})
	}); err != nil {
		b.Fatal(err)
	}
	return order
}

// cpuNow is the process's CPU time (user and system), which the other
// work of a shared machine does not inflate as it does wall time.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
