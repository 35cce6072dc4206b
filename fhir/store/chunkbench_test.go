package store_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend/boltdb"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	bolt "go.etcd.io/bbolt"
)

// hashID is an id as ingestion makes them: a digest of the source
// identity, so that consecutive resources land at random places of every
// bucket keyed by id.
func hashID(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}

// ingestObs is an Observation as a bulk export carries them: one member's
// vital signs, hour after hour, under an ingested id.
func ingestObs(member, k int, ordered bool) (id, body string) {
	id = hashID(fmt.Sprintf("o%05d-%04d", member, k))
	if ordered {
		id = fmt.Sprintf("%s.o%05d-%04d", hashID("base")[:8], member, k)
	}
	day := time.Date(2025, 11, 30, 0, 0, 0, 0, time.UTC)
	return id, fmt.Sprintf(`{"resourceType":"Observation","id":%q,"meta":{"source":"http://old.example/fhir/Observation/o%05d-%04d"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/%s"},"effectiveDateTime":"%s","valueQuantity":{"value":%d,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}`,
		id, member, k, hashID(fmt.Sprintf("p%05d", member)), day.Add(time.Duration(k)*time.Hour).Format(time.RFC3339), 50+k%80)
}

// BenchmarkIngestChunks is the store's part of a bulk ingest: 100,000
// prepared Observations (STORE_INGEST_N for another number) of 200 members
// (500 each, in member order, as an export file has them) under
// digest ids, written in transactions of chunk resources each, on a
// synced bbolt file. It reports, per resource, the writer's wall time
// (ns/resource: its ceiling is 1e9/that resources per second on one
// writer) and CPU time (cpu-ns/resource, the collector's included), and
// the pages each transaction writes; and the largest
// transaction's written pages in MiB (page-bytes-max-MiB), which bbolt
// holds in memory until the commit: with random ids they grow with the
// database until every transaction touches a page per resource per
// bucket keyed by id.
func BenchmarkIngestChunks(b *testing.B) {
	if storetest.Backend() != storetest.Bolt {
		b.Skip("counts bbolt's page writes")
	}
	n := 100000
	if v, err := strconv.Atoi(os.Getenv("STORE_INGEST_N")); err == nil && v > 0 {
		n = v
	}
	const perMember = 500
	for _, c := range []struct {
		chunk   int
		ordered bool
	}{{500, false}, {1000, false}, {2000, false}, {5000, false}, {1000, true}, {2000, true}} {
		chunk := c.chunk
		ids := "digest"
		if c.ordered {
			ids = "ordered"
		}
		b.Run(fmt.Sprintf("ids=%s/chunk=%d", ids, chunk), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				db, err := bolt.Open(filepath.Join(b.TempDir(), "s.db"), 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
				if err != nil {
					b.Fatal(err)
				}
				st, err := store.Open(boltdb.Wrap(db), reg, nil)
				if err != nil {
					b.Fatal(err)
				}
				var written, cpu time.Duration
				var maxPages, pages int64
				for i := 0; i < n; i += chunk {
					docs := make([]*store.Doc, 0, chunk)
					for j := i; j < min(i+chunk, n); j++ {
						id, body := ingestObs(j/perMember, j%perMember, c.ordered)
						d := doc(b, "Observation", id, body)
						st.Prepare(d)
						docs = append(docs, d)
					}
					before := pageCount(db)
					b.StartTimer()
					began, cpu0 := time.Now(), cpuNow()
					if err := st.Write(context.Background(), func(tx *store.Tx) error {
						for _, d := range docs {
							if _, err := tx.Put(d, store.PutOptions{}); err != nil {
								return err
							}
						}
						return nil
					}); err != nil {
						b.Fatal(err)
					}
					written += time.Since(began)
					cpu += cpuNow() - cpu0
					b.StopTimer()
					p := pageCount(db) - before
					pages += p
					maxPages = max(maxPages, p)
				}
				b.ReportMetric(float64(written.Nanoseconds())/float64(n), "ns/resource")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/resource")
				b.ReportMetric(float64(pages)/float64(n), "pages/resource")
				b.ReportMetric(float64(maxPages*int64(db.Info().PageSize))/(1<<20), "page-bytes-max-MiB")
				st.Close()
				db.Close()
			}
		})
	}
}

// pageCount is the number of pages the transactions of db have written.
func pageCount(db *bolt.DB) int64 {
	s := db.Stats()
	return s.TxStats.GetPageCount()
}

// BenchmarkPrepareIngested is Prepare of an Observation as a bulk ingest
// writes it (ingestObs: canonical JSON, an ingested id): its index
// entries, stored JSON and compressed record. "canonical" marks the Doc
// as in the form ingestion writes (Doc.Canonical), so its stored JSON is
// made without reading it again; "read" has it read and written again.
func BenchmarkPrepareIngested(b *testing.B) {
	st := openStore(b)
	id, body := ingestObs(7, 42, true)
	for _, canonical := range []bool{true, false} {
		name := "read"
		if canonical {
			name = "canonical"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			t0 := cpuNow()
			for range b.N {
				d := doc(b, "Observation", id, body)
				d.Canonical = canonical
				st.Prepare(d)
			}
			b.ReportMetric(float64(cpuNow()-t0)/float64(b.N), "cpu-ns/op")
		})
	}
}
