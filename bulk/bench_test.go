package bulk

import (
	"bufio"
	"fmt"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// benchResource is a US Core-sized Observation of patient p.
func benchResource(i, patients int) []byte {
	return fmt.Appendf(nil, `{"resourceType":"Observation","id":"o%07d","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/p%05d"},"effectiveDateTime":"2024-%02d-%02dT10:00:00Z","valueQuantity":{"value":%d,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}`,
		i, i%patients, 1+i%12, 1+i%28, 50+i%80)
}

// load writes n resources (Patients, then Observations of them) straight
// into the store, in transactions of 2,000, prepared on all cores.
func load(b *testing.B, st *store.Store, n int) {
	b.Helper()
	patients := max(n/100, 1)
	raws := make(chan []byte, 4096)
	go func() {
		defer close(raws)
		for i := range patients {
			raws <- fmt.Appendf(nil, `{"resourceType":"Patient","id":"p%05d","name":[{"family":"Bench","given":["P%d"]}],"birthDate":"1970-01-01","gender":"female"}`, i, i)
		}
		for i := range n - patients {
			raws <- benchResource(i, patients)
		}
	}()
	storetest.Load(b, st, raws)
}

// heapPeak samples the heap in use until stop is closed.
func heapPeak(stop <-chan struct{}) func() uint64 {
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
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
	return func() uint64 { <-done; return peak.Load() }
}

// BenchmarkExport is a system-level Bulk Data export over HTTP of a store
// of 50,000 and of 200,000 resources: resources written per second from
// kick-off to the complete manifest, and the server's peak heap in use
// during the export (the server runs in this process; the store is loaded
// and the heap collected before the kick-off, and what is in use then is
// reported too: the export's own share is the difference). The files are then read
// back line by line to check the count.
//
//	go test -run '^$' -bench Export -benchtime 1x ./bulk/
func BenchmarkExport(b *testing.B) {
	for _, n := range []int{50_000, 200_000} {
		b.Run(fmt.Sprintf("resources=%d", n), func(b *testing.B) {
			idp := oidctest.New(b)
			idp.AddClient("bench", "s")
			p := newPayer(b, idp, Config{})
			load(b, p.st, n)
			tok := p.token("bench", "system/*.rs")
			b.ResetTimer()
			for range b.N {
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				base := float64(ms.HeapInuse) / (1 << 20)
				stop := make(chan struct{})
				peak := heapPeak(stop)
				start := time.Now()
				status := p.kickoff("GET", "/$export?_type=Patient,Observation", tok, nil)
				m := p.wait(status, tok)
				took := time.Since(start)
				close(stop)
				var total int64
				for _, o := range m.Output {
					total += o.Count
				}
				if total != int64(n) {
					b.Fatalf("exported %d resources, want %d", total, n)
				}
				b.StopTimer()
				if lines := countLines(b, m, tok); lines != int64(n) {
					b.Fatalf("the files hold %d lines, want %d", lines, n)
				}
				p.do("DELETE", status, tok, nil)
				b.StartTimer()
				rate := float64(n) / took.Seconds()
				heap := float64(peak()) / (1 << 20)
				b.ReportMetric(rate, "resources/s")
				b.ReportMetric(heap, "peak-heap-MiB")
				b.ReportMetric(heap-base, "export-heap-MiB")
				fmt.Printf("bulk export: %d resources in %.2fs = %.0f resources/s; heap in use %.1f MiB before the kick-off, peak %.1f MiB during the export (+%.1f MiB)\n",
					n, took.Seconds(), rate, base, heap, heap-base)
			}
		})
	}
}

// countLines downloads every output file of m, streaming, and counts its
// lines.
func countLines(b *testing.B, m *Manifest, tok string) int64 {
	var n int64
	for _, o := range m.Output {
		req, _ := http.NewRequest("GET", o.URL, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			n++
		}
		resp.Body.Close()
	}
	return n
}
