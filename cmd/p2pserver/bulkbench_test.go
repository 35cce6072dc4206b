package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// benchChild is a p2pserver process of the benchmark, with its debug
// address (for its heap figures).
type benchChild struct {
	*childPayer
	debug string
}

// cpuTime is the CPU time a process has used (user and system), from
// /proc (0 where there is none).
func cpuTime(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (in parentheses); utime and stime
	// are the 14th and 15th fields, in clock ticks (100 a second).
	rest := raw[bytes.LastIndexByte(raw, ')')+2:]
	f := bytes.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(string(f[11]), 10, 64)
	s, _ := strconv.ParseInt(string(f[12]), 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func freeAddr(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// heapObjects reads a p2pserver's heap (live objects and garbage not yet
// collected) from its /debug/memory.
func heapObjects(debug string) uint64 {
	heap, _ := heapFigures(debug)
	return heap
}

// heapFigures reads a p2pserver's heap from its /debug/memory: its
// objects (live and garbage not yet collected), and what the last
// collection found live.
func heapFigures(debug string) (heap, live uint64) {
	v := debugMemory(debug)
	return v["/memory/classes/heap/objects:bytes"], v["/gc/heap/live:bytes"]
}

// heapAllocs reads the heap allocations a p2pserver has made since it
// started, in objects and bytes, from its /debug/memory.
func heapAllocs(debug string) (objects, bytes uint64) {
	v := debugMemory(debug)
	return v["/gc/heap/allocs:objects"], v["/gc/heap/allocs:bytes"]
}

// debugMemory reads a p2pserver's /debug/memory figures by name; none
// when it does not answer.
func debugMemory(debug string) map[string]uint64 {
	resp, err := http.Get("http://" + debug + "/debug/memory")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var v map[string]uint64
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return nil
	}
	return v
}

// saveProfile writes the profile a p2pserver's debug address serves at
// path (under /debug/pprof/) to file.
func saveProfile(debug, path, file string) {
	resp, err := http.Get("http://" + debug + "/debug/pprof/" + path)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if out, err := os.Create(file); err == nil {
		_, _ = io.Copy(out, resp.Body)
		out.Close()
	}
}

// loadBenchSource writes the old payer's data straight into its database:
// members Patients, each with a Coverage of the old payer and perMember-2
// Observations of the last year.
func loadBenchSource(tb testing.TB, db string, members, perMember int) {
	tb.Helper()
	cfg, err := parseConfig([]string{"-db", db, "-secret-key", testSecretKey}, func(string) string { return "" })
	if err != nil {
		tb.Fatal(err)
	}
	a, err := newApp(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	defer a.Close()
	st := a.store
	raws := make(chan []byte, 4096)
	go func() {
		defer close(raws)
		day := time.Now().UTC().AddDate(-1, 0, 0)
		for i := range members {
			raws <- fmt.Appendf(nil, `{"resourceType":"Patient","id":"p%05d","name":[{"family":"Bench%05d","given":["Member"]}],"birthDate":"%s","gender":"female"}`,
				i, i, time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i).Format("2006-01-02"))
			raws <- fmt.Appendf(nil, `{"resourceType":"Coverage","id":"c%05d","status":"active","subscriberId":"B-%05d","identifier":[{"system":"http://old-payer.example/member","value":"B-%05d"}],"beneficiary":{"reference":"Patient/p%05d"},"payor":[{"display":"Old Payer"}],"period":{"start":"2024-01-01"}}`,
				i, i, i, i)
			for k := range perMember - 2 {
				raws <- fmt.Appendf(nil, `{"resourceType":"Observation","id":"o%05d-%04d","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/p%05d"},"effectiveDateTime":"%s","valueQuantity":{"value":%d,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}`,
					i, k, i, day.Add(time.Duration(k)*time.Hour).Format(time.RFC3339), 50+k%80)
			}
		}
	}()
	storetest.Load(tb, st, raws)
}

// BenchmarkBulkExchange is a bulk payer-to-payer exchange between two
// p2pserver processes on this machine: the new payer matches 400 members
// at the old payer, exports their 200,800 resources (PDex STU 2.1
// $davinci-data-export) and ingests them. It reports members per minute
// (the whole job), resources per second ingested (the download phase),
// the target's CPU time, heap allocations and bytes allocated per
// resource during that phase (figures a busy machine changes less than
// the rate), and each process's peak heap. BULK_BENCH_MEMBERS changes the number of
// members (502 resources each); BULK_BENCH_PROFILE names a file for a CPU
// profile of the target's first 10 seconds of ingestion
// (BULK_BENCH_PROFILE_SECONDS for another length), and <name>.heap for
// its heap profile when its live heap was largest. BULK_BENCH_TARGET_ARGS
// adds flags to the target's (for example "-bulk-chunk 2000").
func BenchmarkBulkExchange(b *testing.B) {
	members := 400
	if v, err := strconv.Atoi(os.Getenv("BULK_BENCH_MEMBERS")); err == nil && v > 0 {
		members = v
	}
	const perMember = 502
	for range b.N {
		dir := b.TempDir()
		bin := buildP2PServer(b)
		srcDB := filepath.Join(dir, "source.db")
		began := time.Now()
		loadBenchSource(b, srcDB, members, perMember)
		b.Logf("source loaded: %d resources in %s", members*perMember, time.Since(began).Round(time.Millisecond))

		start := func(args ...string) *benchChild {
			debug := freeAddr(b)
			addr := freeAddr(b)
			c := &childPayer{t: b, bin: bin, URL: "http://" + addr, args: append([]string{"-addr", addr, "-debug-addr", debug}, args...)}
			c.start()
			b.Cleanup(func() {
				if c.cmd != nil {
					_ = c.cmd.Process.Kill()
					_ = c.cmd.Wait()
				}
			})
			return &benchChild{c, debug}
		}
		source := start("-db", srcDB, "-admin-token", testAdmin, "-secret-key", testSecretKey, "-organization-name", oldPayerName,
			"-export-retention", "1h")
		target := start(append([]string{"-db", filepath.Join(dir, "target.db"), "-admin-token", testAdmin, "-backoffice-token", testBackoffice,
			"-secret-key", "0000000000000000000000000000000000000000000000000000000000000004",
			"-mdm-identifier-system", "urn:old-payer:member-id", "-bulk-min-poll", "100ms", "-log-level", cmp.Or(os.Getenv("BULK_BENCH_LOG"), "info")},
			strings.Fields(os.Getenv("BULK_BENCH_TARGET_ARGS"))...)...)
		sp := &payer{t: b, URL: source.URL}
		tp := &payer{t: b, URL: target.URL}
		pid, _ := connectAsSystem(b, tp, sp, "New Payer", newPayerNPI, oldPayerName, "OLDPAYER")
		var entries, list []any
		for i := range members {
			id := fmt.Sprintf("m%04d", i) // as memberRequest names it
			birth := time.Date(1950, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, i).Format("2006-01-02")
			entries = append(entries, map[string]any{"request": map[string]any{"method": "PUT", "url": "Patient/" + id},
				"resource": map[string]any{"resourceType": "Patient", "id": id, "birthDate": birth, "gender": "female",
					"name": []any{map[string]any{"family": fmt.Sprintf("Bench%05d", i), "given": []any{"Member"}}}}})
			list = append(list, memberRequest(&bulkMemberFixture{n: i}, fmt.Sprintf("B-%05d", i), newPayerNPI))
		}
		if st := tp.call("POST", "/fhir", testAdmin, map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries}, nil); st != 200 {
			b.Fatalf("members: %d", st)
		}
		profile := os.Getenv("BULK_BENCH_PROFILE")
		var peakSource, peakTarget, liveTarget, profiledLive uint64
		sample := func() {
			peakSource = max(peakSource, heapObjects(source.debug))
			heap, live := heapFigures(target.debug)
			peakTarget, liveTarget = max(peakTarget, heap), max(liveTarget, live)
			if profile != "" && live > profiledLive+profiledLive/10 {
				// What the target holds when its live heap is largest.
				profiledLive = live
				saveProfile(target.debug, "heap", profile+".heap")
			}
		}
		runtime.GC()
		idleTarget := heapObjects(target.debug)
		var out map[string]any
		path := fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid)
		b.ResetTimer()
		began = time.Now()
		if st := tp.call("POST", path, testBackoffice, map[string]any{"members": list}, &out); st != 202 {
			b.Fatalf("bulk job: %d %v", st, out)
		}
		path = fmt.Sprintf("%s/%v", path, out["bulkJobId"])
		var downloading time.Time
		var cpuAtDownload, sourceCPUAtDownload time.Duration
		var allocsAtDownload, allocBytesAtDownload uint64
		deadline := time.Now().Add(15 * time.Minute)
		var st map[string]any
		for {
			sample()
			st = nil
			tp.call("GET", path, testBackoffice, nil, &st)
			if downloading.IsZero() && st["phase"] == "downloading" {
				downloading = time.Now()
				cpuAtDownload = cpuTime(target.cmd.Process.Pid)
				allocsAtDownload, allocBytesAtDownload = heapAllocs(target.debug)
				sourceCPUAtDownload = cpuTime(source.cmd.Process.Pid)
				if profile != "" {
					// A CPU profile of the target while it ingests.
					go saveProfile(target.debug, "profile?seconds="+cmp.Or(os.Getenv("BULK_BENCH_PROFILE_SECONDS"), "10"), profile)
				}
			}
			if s := st["batchStatus"]; s == "COMPLETED" || s == "FAILED" || s == "STOPPED" {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("the bulk job did not end in 15 minutes: %v", st)
			}
			time.Sleep(200 * time.Millisecond)
		}
		total := time.Since(began)
		cpu := cpuTime(target.cmd.Process.Pid) - cpuAtDownload
		allocs, allocBytes := heapAllocs(target.debug)
		allocs, allocBytes = allocs-allocsAtDownload, allocBytes-allocBytesAtDownload
		sourceCPU := cpuTime(source.cmd.Process.Pid) - sourceCPUAtDownload
		b.StopTimer()
		sample()
		if st["batchStatus"] != "COMPLETED" {
			b.Fatalf("bulk job: %v", st)
		}
		n := st["resourcesWritten"].(float64)
		if int(n) != members*perMember {
			b.Errorf("%v resources written, want %d", n, members*perMember)
		}
		ingest := time.Since(downloading)
		if downloading.IsZero() {
			ingest = total
		}
		b.ReportMetric(float64(members)/total.Minutes(), "members/min")
		b.ReportMetric(n/ingest.Seconds(), "resources/s-ingested")
		b.ReportMetric(n/cpu.Seconds(), "resources/CPU-s")
		b.ReportMetric(float64(cpu.Microseconds())/n, "CPU-µs/resource")
		b.ReportMetric(float64(allocs)/n, "allocs/resource")
		b.ReportMetric(float64(allocBytes)/n, "B-allocated/resource")
		b.ReportMetric(float64(peakTarget)/(1<<20), "MiB-target-peak-heap")
		b.ReportMetric(float64(liveTarget)/(1<<20), "MiB-target-peak-live")
		b.ReportMetric(float64(peakSource)/(1<<20), "MiB-source-peak-heap")
		fmt.Printf("bulk exchange: %d members, %.0f resources in %s (download and ingest %s): %.0f members/min, %.0f resources/s ingested "+
			"(target CPU %s: %.0f resources per CPU second, %.0f µs per resource; %.0f allocations and %.0f bytes allocated per resource; source CPU %s meanwhile); peak heap: target %.0f MiB (%.0f MiB found live by a collection at most; %.0f MiB before the job), source %.0f MiB\n",
			members, n, total.Round(time.Millisecond), ingest.Round(time.Millisecond), float64(members)/total.Minutes(), n/ingest.Seconds(),
			cpu.Round(10*time.Millisecond), n/cpu.Seconds(), float64(cpu.Microseconds())/n, float64(allocs)/n, float64(allocBytes)/n, sourceCPU.Round(10*time.Millisecond),
			float64(peakTarget)/(1<<20), float64(liveTarget)/(1<<20), float64(idleTarget)/(1<<20), float64(peakSource)/(1<<20))
		source.term()
		target.term()
	}
}
