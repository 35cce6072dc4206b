package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pserver/p2pserver/internal/loadbundle"
)

// limitPhases are the parts of the limits run, by the names -phases
// takes.
var limitPhases = []string{"transaction", "search", "subscriptions"}

// runLimits measures what one expensive client costs the others, against
// a server it starts itself (the figures of issue 17): a 10,000-entry
// transaction with other writers going on, the heap after 1,000 searches
// with long queries, and write throughput with 2,000 Subscriptions
// matching every write. Every phase is bounded in requests and time.
// phases names those to run (all when empty); with profile set, the
// server's CPU profile of each fixed-length phase is written there.
func runLimits(bin string, c int, d time.Duration, phases []string, profile string) error {
	if len(phases) == 0 {
		phases = limitPhases
	}
	for _, p := range phases {
		if !slices.Contains(limitPhases, p) {
			return fmt.Errorf("-phases: %q is not one of %s", p, strings.Join(limitPhases, ", "))
		}
	}
	if profile != "" {
		if err := os.MkdirAll(profile, 0o755); err != nil {
			return err
		}
	}
	debug, err := freeAddr()
	if err != nil {
		return err
	}
	const admin = "p2pload-admin-token-0123456789"
	srv, err := start(bin, "-debug-addr", debug, "-admin-token", admin)
	if err != nil {
		return err
	}
	defer srv.stop()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c * 2}, Timeout: 5 * time.Minute}
	l := &loader{base: strings.TrimRight(srv.base, "/"), client: client}
	fmt.Printf("p2pserver limits: %d concurrent clients, the load client sharing the machine with the server\n\n", c)
	fmt.Printf("%-62s %-28s %s\n", "figure", "before (issue 17)", "now")
	if slices.Contains(phases, "transaction") {
		if err := l.transaction(debug, c); err != nil {
			return err
		}
	}
	if slices.Contains(phases, "search") {
		if err := l.longSearches(debug, c); err != nil {
			return err
		}
	}
	if slices.Contains(phases, "subscriptions") {
		return l.subscriptions(srv, debug, admin, c, d, profile)
	}
	return nil
}

// transaction measures a 10,000-entry transaction while c writers create
// Patients: its time, theirs meanwhile, and how long it held the writer.
func (l *loader) transaction(debug string, c int) error {
	client := l.client
	// 1. A 10,000-entry transaction while c writers create Patients.
	tx := loadbundle.Transaction(10000)
	var during []time.Duration
	var txTime time.Duration
	var writes atomic.Int64
	{
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		var txStart, txEnd atomic.Int64
		var wg sync.WaitGroup
		for w := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					t0 := time.Now()
					if _, err := l.create("Patient", patientJSON(w*1_000_000+i)); err != nil {
						return
					}
					writes.Add(1)
					if s, e := txStart.Load(), txEnd.Load(); s != 0 && t0.UnixNano() >= s && (e == 0 || t0.UnixNano() <= e) {
						mu.Lock()
						during = append(during, time.Since(t0))
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Second) // the writers get going
		t0 := time.Now()
		txStart.Store(t0.UnixNano())
		resp, err := client.Post(l.base, "application/fhir+json", bytes.NewReader(tx))
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		txTime = time.Since(t0)
		txEnd.Store(time.Now().UnixNano())
		cancel()
		wg.Wait()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("the transaction: %d %.300s", resp.StatusCode, body)
		}
	}
	slices.Sort(during)
	fmt.Printf("%-62s %-28s %s\n", fmt.Sprintf("10,000-entry transaction (%.1f MB)", float64(len(tx))/1e6), "69.5 s", txTime.Round(time.Millisecond))
	fmt.Printf("%-62s %-28s p50 %s  p99 %s  max %s  (%d writes)\n", "other writers' latency during it", "p99 = the transaction's length",
		pct(during, 0.5), pct(during, 0.99), pct(during, 1), len(during))
	if held, err := writerLongest(debug); err == nil {
		fmt.Printf("%-62s %-28s %s\n", "time it held the store's single writer", "the transaction's length", held.Round(time.Millisecond))
	} else {
		fmt.Printf("%-62s %-28s (%v)\n", "time it held the store's single writer", "the transaction's length", err)
	}

	return nil
}

// longSearches measures the server's heap after 1,000 searches with a
// 500 KB query each, each kept for paging.
func (l *loader) longSearches(debug string, c int) error {
	client := l.client
	for range 3 {
		if _, err := l.create("Observation", []byte(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:lq","code":"x"}]}}`)); err != nil {
			return err
		}
	}
	before, err := heapInuse(debug)
	if err != nil {
		return err
	}
	form := longQuery(500 << 10)
	st, err := l.phase("search", c, 1000, 0, func(i int) (string, error) {
		resp, err := client.Post(l.base+"/Observation/_search", "application/x-www-form-urlencoded", strings.NewReader(form))
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte(`"next"`)) {
			return "", fmt.Errorf("long-query search: %d (want 200 with a next link) %.200s", resp.StatusCode, b)
		}
		return "", nil
	})
	if err != nil {
		return err
	}
	after, err := heapInuse(debug)
	if err != nil {
		return err
	}
	fmt.Printf("%-62s %-28s %.0f MiB (from %.0f MiB; -search-cache-bytes 128 MiB; %.1f searches/s)\n",
		"heap after 1,000 searches with a 500 KB query (POST _search)", "2.6 GB for 30 minutes",
		float64(after)/(1<<20), float64(before)/(1<<20), float64(st.n)/st.elapsed.Seconds())

	return nil
}

// subscriptions measures writes with 2,000 rest-hook Subscriptions on
// their type: first writes matching none of them (the matching cost
// alone), then writes matching every one, while the deliveries they owe
// go on as they would for an operator. The writes matching none go
// first, so that they do not run behind the delivery backlog the
// matching writes leave; the backlog and the delivery rate are printed
// after the matching writes.
func (l *loader) subscriptions(srv *spawned, debug, admin string, c int, d time.Duration, profile string) error {
	var delivered atomic.Int64
	hook := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}), ReadHeaderTimeout: 10 * time.Second}
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = hook.Serve(hln) }()
	defer hook.Close()
	sub := fmt.Sprintf(`{"resourceType":"Subscription","status":"requested","reason":"load","criteria":"Basic?code=urn:fan|x","channel":{"type":"rest-hook","endpoint":"http://%s/hook"}}`, hln.Addr())
	if _, err := l.phase("create 2,000 Subscriptions", c, 2000, 0, func(int) (string, error) {
		return l.create("Subscription", []byte(sub))
	}); err != nil {
		return err
	}
	// Creating a Subscription notifies no one: the outbox is empty.
	if b, err := l.backlog(admin); err != nil {
		return err
	} else if b.queued+b.pending != 0 {
		return fmt.Errorf("the outbox holds %d notifications before the writes", b.queued+b.pending)
	}

	other := []byte(`{"resourceType":"Basic","code":{"coding":[{"system":"urn:fan","code":"unwatched"}]}}`)
	st, cpu, err := l.profiled(srv, debug, profile, "writes-matching-none", d/2, func() (*stats, error) {
		return l.phase("write", c, 0, d/2, func(int) (string, error) { return l.create("Basic", other) })
	})
	if err != nil {
		return err
	}
	slices.Sort(st.lat)
	fmt.Printf("%-62s %-28s %.0f writes/s  p50 %s  p99 %s%s\n", "writes of that type matching none of them", "about 10,000 writes/s",
		st.rate(), pct(st.lat, 0.5), pct(st.lat, 0.99), perWrite(cpu, st.n))

	basic := []byte(`{"resourceType":"Basic","code":{"coding":[{"system":"urn:fan","code":"x"}]}}`)
	before := delivered.Load()
	st, cpu, err = l.profiled(srv, debug, profile, "writes-matching-2000", d, func() (*stats, error) {
		return l.phase("write", c, 0, d, func(int) (string, error) { return l.create("Basic", basic) })
	})
	if err != nil {
		return err
	}
	during := delivered.Load() - before
	slices.Sort(st.lat)
	fmt.Printf("%-62s %-28s %.0f writes/s  p50 %s  p99 %s%s\n",
		"writes with 2,000 Subscriptions matching each", "44 writes/s (16 writers)",
		st.rate(), pct(st.lat, 0.5), pct(st.lat, 0.99), perWrite(cpu, st.n))
	// What the writes left to deliver, and how fast it goes with no
	// writes: the outbox is not drained (at 2,000 notifications a write
	// that takes long), the server stops with it.
	b, err := l.backlog(admin)
	if err != nil {
		return err
	}
	t0, d0 := time.Now(), delivered.Load()
	time.Sleep(min(d/2, 3*time.Second))
	drain := float64(delivered.Load()-d0) / time.Since(t0).Seconds()
	fmt.Printf("%-62s %-28s %d notifications owed (%d queued, %d made), %.0f delivered/s during the writes, %.0f/s after\n",
		"deliveries they owe", "", b.queued+b.pending, b.queued, b.pending, float64(during)/st.elapsed.Seconds(), drain)
	return nil
}

// outbox is the server's notification outbox as GET /api/notifications
// counts it.
type outbox struct{ queued, pending, failed int }

func (l *loader) backlog(admin string) (outbox, error) {
	req, err := http.NewRequest(http.MethodGet, l.root()+"/api/notifications?limit=1", nil)
	if err != nil {
		return outbox{}, err
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := l.client.Do(req)
	if err != nil {
		return outbox{}, err
	}
	defer resp.Body.Close()
	var v struct {
		Counts map[string]int `json:"counts"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return outbox{}, fmt.Errorf("GET /api/notifications: %d %.200s", resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return outbox{}, err
	}
	return outbox{queued: v.Counts["queued"], pending: v.Counts["pending"], failed: v.Counts["failed"]}, nil
}

// cpuTime is a process's user and system CPU time so far, from
// /proc/<pid>/stat (Linux only; 0 elsewhere).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses:
	// utime and stime are the 12th and 13th, in clock ticks (100/s on
	// Linux).
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

// perWrite formats the server's CPU per call over a phase, empty when
// unknown.
func perWrite(cpu time.Duration, n int) string {
	if cpu <= 0 || n == 0 {
		return ""
	}
	return fmt.Sprintf("  (server CPU %s per write)", (cpu / time.Duration(n)).Round(time.Microsecond))
}

// profiled runs a phase of about d and returns the server's CPU time
// over it; with dir set it also takes the server's CPU profile over it
// (from the debug address) into dir/name.pprof.
func (l *loader) profiled(srv *spawned, debug, dir, name string, d time.Duration, phase func() (*stats, error)) (*stats, time.Duration, error) {
	pid := srv.cmd.Process.Pid
	if dir == "" {
		c0 := cpuTime(pid)
		st, err := phase()
		return st, cpuTime(pid) - c0, err
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	got := make(chan error, 1)
	var prof []byte
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", debug, secs))
		if err != nil {
			got <- err
			return
		}
		defer resp.Body.Close()
		prof, err = io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("CPU profile: %s %.200s", resp.Status, prof)
		}
		got <- err
	}()
	c0 := cpuTime(pid)
	st, err := phase()
	cpu := cpuTime(pid) - c0
	if perr := <-got; err == nil && perr != nil {
		err = perr
	}
	if err != nil {
		return st, 0, err
	}
	return st, cpu, os.WriteFile(filepath.Join(dir, name+".pprof"), prof, 0o644)
}

func pct(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	return lat[min(len(lat)-1, int(float64(len(lat))*p))].Round(time.Millisecond)
}

// longQuery is a search form of about size bytes: a code matching the
// three Observations, or'd with codes matching nothing, one per page.
func longQuery(size int) string {
	var b strings.Builder
	b.WriteString("_count=1&code=urn:lq|x")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, ",%s", url.QueryEscape(fmt.Sprintf("urn:lq-%d|v%d", i, i)))
	}
	return b.String()
}

// heapInuse reads the server's in-use heap after a collection, from its
// profiling endpoint.
func heapInuse(debugAddr string) (uint64, error) {
	resp, err := http.Get("http://" + debugAddr + "/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapInuse = "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no HeapInuse in the server's heap profile")
}

// writerLongest is the server's longest commit group so far, from its
// /debug/writer: during the transaction phase, the transaction's (the
// other writes are single resources).
func writerLongest(debugAddr string) (time.Duration, error) {
	resp, err := http.Get("http://" + debugAddr + "/debug/writer")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("the server has no /debug/writer: %s", resp.Status)
	}
	var w struct {
		LongestSeconds *float64 `json:"longest_seconds"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&w); err != nil || w.LongestSeconds == nil {
		return 0, fmt.Errorf("the server reports no writer figures (/debug/writer): %v", err)
	}
	return time.Duration(*w.LongestSeconds * float64(time.Second)), nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
