package batch

import (
	"encoding/json"
	"fmt"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

var uuidRE = regexp.MustCompile(`urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// loadOneMember loads copies of every Synthea history into the source as
// the history of one member, so that a single job pulls them all. It
// returns the member's Patient id and how many resources are theirs.
func loadOneMember(tb testing.TB, src *sourcePayer, atLeast int) (string, int) {
	tb.Helper()
	files, _ := filepath.Glob(filepath.Join(td.Dir, "synthea", "*.json"))
	sort.Strings(files)
	var raws []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		raws = append(raws, string(b))
	}
	member := ""
	n := 0
	for copyNo := 0; n < atLeast; copyNo++ {
		for _, raw := range raws {
			// Fresh urn:uuids for each copy, so every copy is new data.
			fresh := map[string]string{}
			body := uuidRE.ReplaceAllStringFunc(raw, func(u string) string {
				if _, ok := fresh[u]; !ok {
					fresh[u] = "urn:uuid:" + uuid.NewString()
				}
				return fresh[u]
			})
			var bundle struct {
				ResourceType string            `json:"resourceType"`
				Type         string            `json:"type"`
				Entry        []json.RawMessage `json:"entry"`
			}
			if err := json.Unmarshal([]byte(body), &bundle); err != nil {
				tb.Fatal(err)
			}
			if member != "" {
				// Drop this history's Patient; its data is the member's.
				var keep []json.RawMessage
				for _, e := range bundle.Entry {
					var probe struct {
						FullURL  string `json:"fullUrl"`
						Resource struct {
							ResourceType string `json:"resourceType"`
						} `json:"resource"`
					}
					_ = json.Unmarshal(e, &probe)
					if probe.Resource.ResourceType == "Patient" {
						continue
					}
					keep = append(keep, e)
				}
				var entries []json.RawMessage
				_ = json.Unmarshal([]byte(strings.ReplaceAll(string(mustJSON(tb, keep)), patientURN(tb, bundle.Entry), "Patient/"+member)), &entries)
				bundle.Entry = entries
			}
			var out map[string]any
			if st := src.do(http.MethodPost, "", sourceAdmin, mustJSON(tb, bundle), &out); st != http.StatusOK {
				tb.Fatalf("load: %d %v", st, out)
			}
			for _, e := range listOf(out["entry"]) {
				loc := e["response"].(map[string]any)["location"].(string)
				n++
				if rest, ok := strings.CutPrefix(strings.TrimPrefix(loc, src.URL+"/"), "Patient/"); ok && member == "" {
					member = rest[:strings.Index(rest, "/")]
				}
			}
		}
	}
	return member, n
}

func patientURN(tb testing.TB, entries []json.RawMessage) string {
	for _, e := range entries {
		var probe struct {
			FullURL  string `json:"fullUrl"`
			Resource struct {
				ResourceType string `json:"resourceType"`
			} `json:"resource"`
		}
		_ = json.Unmarshal(e, &probe)
		if probe.Resource.ResourceType == "Patient" {
			return probe.FullURL
		}
	}
	tb.Fatal("a Synthea history without a Patient")
	return ""
}

func mustJSON(tb testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// peakHeap samples the heap in use until stop is closed.
func peakHeap(stop <-chan struct{}) func() uint64 {
	var peak atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() uint64 { wg.Wait(); return peak.Load() }
}

func maxRSS() uint64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return uint64(ru.Maxrss) * 1024 // kilobytes on Linux
}

// BenchmarkIngest measures a P2P exchange over loopback: a second
// p2pserver serves one member's $everything (at least P2P_BENCH_RESOURCES
// resources, default 20,000, in pages of 1,000) to a target that pulls it
// with a batch job, MDM and versioned Provenance on. It reports resources
// per second from the job's creation to COMPLETED, and the peak heap in
// use during the job (the source's serving included: both run in this
// process), and on PostgreSQL the round trips per page each payer made.
// "rerun" pulls the same data again, all of it unchanged.
//
//	go test -run '^$' -bench Ingest -benchtime 1x ./batch/
func BenchmarkIngest(b *testing.B) {
	want := 20000
	if v := os.Getenv("P2P_BENCH_RESOURCES"); v != "" {
		fmt.Sscan(v, &want)
	}
	idp := oidctest.New(b)
	src := newSource(b, idp)
	start := time.Now()
	member, n := loadOneMember(b, src, want)
	b.Logf("source loaded with %d resources of one member in %s", n, time.Since(start).Round(time.Millisecond))
	request := fmt.Sprintf("Patient/%s/$everything?_count=1000", member)
	run := func(b *testing.B, tg *targetPayer, pid int64) Job {
		tok, err := idp.MintFor([]string{src.URL}, oidctest.Grant{ClientID: clientID, Patient: member})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		if path := os.Getenv("P2P_BENCH_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				b.Fatal(err)
			}
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
		// On PostgreSQL, the round trips of both payers, the job watched
		// through a pool of its own so that they are the job's alone.
		tdb, ok1 := tg.db.(*pgdb.DB)
		sdb, ok2 := src.db.(*pgdb.DB)
		onPG := ok1 && ok2
		var watch *watcher
		var t0, s0 int64
		if onPG {
			watch = openWatcher(b, tg.dbPath)
			t0, s0 = tdb.RoundTrips(), sdb.RoundTrips()
		}
		stop := make(chan struct{})
		peak := peakHeap(stop)
		began := time.Now()
		id := tg.startJob(pid, jobBody(tok.AccessToken, tok.RefreshToken, request, member, "member-1", ""))
		if onPG {
			watch.waitEnd(b, id)
		}
		job := tg.waitEnd(pid, id)
		elapsed := time.Since(began)
		close(stop)
		if job.BatchStatus != Completed {
			b.Fatalf("job %s: %s", job.BatchStatus, job.FailureReason)
		}
		perSec := float64(job.Progress.ResourcesTotal) / elapsed.Seconds()
		heap := float64(peak()) / (1 << 20)
		b.ReportMetric(perSec, "resources/s")
		b.ReportMetric(heap, "peak-heap-MB")
		b.ReportMetric(float64(job.Progress.ResourcesTotal), "resources")
		trips := ""
		if onPG {
			pages := float64(job.Progress.PagesFetched)
			tt, st := float64(tdb.RoundTrips()-t0)/pages, float64(sdb.RoundTrips()-s0)/pages
			b.ReportMetric(tt, "target-round-trips/page")
			b.ReportMetric(st, "source-round-trips/page")
			trips = fmt.Sprintf("; round trips per page %.0f at the target, %.0f at the source", tt, st)
		}
		fmt.Printf("ingest: %d resources in %d pages in %s: %.0f resources/s; peak heap %.0f MB, max RSS %.0f MB (GOMAXPROCS %d)%s\n",
			job.Progress.ResourcesTotal, job.Progress.PagesFetched, elapsed.Round(time.Millisecond), perSec, heap,
			float64(maxRSS())/(1<<20), runtime.GOMAXPROCS(0), trips)
		return job
	}
	b.Run("first", func(b *testing.B) {
		for range b.N {
			tg := newTarget(b, Config{MDMIdentifierSystem: mdmSystem, VersionedReferences: true})
			tg.putResource("Patient", "member-1", memberJSON)
			pid := tg.define(src)
			run(b, tg, pid)
			tg.close()
		}
	})
	b.Run("rerun", func(b *testing.B) {
		tg := newTarget(b, Config{MDMIdentifierSystem: mdmSystem, VersionedReferences: true})
		tg.putResource("Patient", "member-1", memberJSON)
		pid := tg.define(src)
		run(b, tg, pid)
		b.ResetTimer()
		for range b.N {
			if job := run(b, tg, pid); job.Progress.VersionsWritten != 0 {
				b.Errorf("the rerun wrote %d versions", job.Progress.VersionsWritten)
			}
		}
	})
}
