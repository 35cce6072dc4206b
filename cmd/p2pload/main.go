// Command p2pload measures a running p2pserver over HTTP on loopback: it
// loads a database of synthetic Patients and Observations with single
// creates, then reads and searches it, and prints requests per second and
// latency percentiles for each phase.
//
// With -scale it grows the database to each size in turn (for example
// 100,000 then 1,000,000 resources), measures the same figures at each, and
// prints them side by side with the ratio of the last size to the first:
// what costs grow with the database. An HTTP floor (GET /healthz, no
// database work) is measured beside the reads at each size.
//
// With -server it starts that p2pserver binary itself on a free loopback
// port with a fresh database in a temporary folder, and stops it at the end;
// then the database size per resource, the server's peak heap (HeapAlloc,
// from its /debug/vars) and peak resident set are reported too, and where
// the database's size goes: on bbolt by bucket family per resource, with
// -postgres each table's heap, index and TOAST bytes. Every phase
// is bounded in requests and time.
package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	var (
		base        = flag.String("url", "", "FHIR base URL of a running server (loopback only), e.g. http://127.0.0.1:8080/fhir")
		server      = flag.String("server", "", "path to a p2pserver binary to start for the run instead of -url")
		resources   = flag.Int("resources", 100000, "resources to create (one Patient per 10)")
		scale       = flag.String("scale", "", "database sizes to grow to in turn, measuring at each, e.g. 100000,1000000; the figures are printed side by side with the ratio of the last to the first (instead of -resources)")
		timeLimit   = flag.Duration("time-limit", 0, "stop loading after this long and measure at the size reached (0: no limit)")
		compare     = flag.Bool("compare", false, "with -server: run the load run three times, each on a new database: on bbolt, on PostgreSQL with one p2pserver process, and on PostgreSQL with two processes sharing the database (the clients' requests alternate between them); then print the figures side by side with how many times bbolt's each PostgreSQL figure is")
		postgres    = flag.Bool("postgres", false, "with -server: run the server on a new database of a private PostgreSQL server started for the run (Debian's postgresql package must be installed) instead of a bbolt file; after the creates it runs VACUUM (ANALYZE) and CHECKPOINT there before measuring the reads")
		concurrency = flag.Int("c", 32, "concurrent clients")
		duration    = flag.Duration("d", 10*time.Second, "duration of the read and search phases")
		creates     = flag.Bool("creates", false, "only the create phases (Patients, then Observations) at -c clients: the durable write throughput")
		limits      = flag.Bool("limits", false, "with -server: measure what expensive requests cost the others (a 10,000-entry transaction, long-query searches, 2,000 matching Subscriptions) instead of the load run")
		phases      = flag.String("phases", "", "with -limits: the phases to run, comma-separated, of transaction, search, subscriptions (default all)")
		profile     = flag.String("profile", "", "with -limits: write the server's CPU profile of each timed Subscription phase into this directory (writes-matching-none.pprof, writes-matching-2000.pprof)")
	)
	flag.Parse()
	if *limits {
		if *server == "" {
			fmt.Fprintln(os.Stderr, "p2pload: -limits needs -server")
			os.Exit(2)
		}
		var names []string
		for _, p := range strings.Split(*phases, ",") {
			if p = strings.TrimSpace(p); p != "" {
				names = append(names, p)
			}
		}
		if err := runLimits(*server, 16, *duration, names, *profile); err != nil {
			fmt.Fprintln(os.Stderr, "p2pload:", err)
			os.Exit(1)
		}
		return
	}
	sizes := []int{*resources}
	if *scale != "" {
		sizes = sizes[:0]
		for _, f := range strings.Split(*scale, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 10 || (len(sizes) > 0 && n <= sizes[len(sizes)-1]) {
				fmt.Fprintf(os.Stderr, "p2pload: -scale: %q is not a growing list of sizes of at least 10\n", *scale)
				os.Exit(2)
			}
			sizes = append(sizes, n)
		}
	}
	if *compare {
		if *server == "" || *postgres || *base != "" || *creates {
			fmt.Fprintln(os.Stderr, "p2pload: -compare needs -server, and starts its own databases (no -postgres, -url or -creates)")
			os.Exit(2)
		}
		if err := runCompare(*server, sizes, *concurrency, *duration, *timeLimit); err != nil {
			fmt.Fprintln(os.Stderr, "p2pload:", err)
			os.Exit(1)
		}
		return
	}
	if *postgres {
		if *server == "" {
			fmt.Fprintln(os.Stderr, "p2pload: -postgres needs -server")
			os.Exit(2)
		}
		stop, err := usePostgres()
		if err != nil {
			fmt.Fprintln(os.Stderr, "p2pload:", err)
			os.Exit(1)
		}
		_, err = run(*base, *server, sizes, *concurrency, *duration, *timeLimit, *creates, 1)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "p2pload:", err)
			os.Exit(1)
		}
		return
	}
	if _, err := run(*base, *server, sizes, *concurrency, *duration, *timeLimit, *creates, 1); err != nil {
		fmt.Fprintln(os.Stderr, "p2pload:", err)
		os.Exit(1)
	}
}

// run measures the server at base, or processes p2pserver processes of
// server started on one new database (serverDB's, or a bbolt file), at
// each size in turn, and prints and returns the figures.
func run(base, server string, sizes []int, c int, d, timeLimit time.Duration, createsOnly bool, processes int) ([]*sizeResult, error) {
	var srvs []*spawned
	bases := []string{base}
	if server != "" {
		bases = bases[:0]
		// Processes sharing a database share the key that seals paging
		// links, as the README says to run them.
		key := make([]byte, 32)
		if _, err := crand.Read(key); err != nil {
			return nil, err
		}
		for i := range processes {
			debug, err := freeAddr()
			if err != nil {
				return nil, err
			}
			srv, err := start(server, "-debug-addr", debug, "-secret-key", hex.EncodeToString(key))
			if err != nil {
				return nil, err
			}
			srv.debug = debug
			srv.quiet = i > 0
			srvs = append(srvs, srv)
			bases = append(bases, srv.base)
		}
		defer func() {
			// The first process last: it prints the database's size.
			for i := len(srvs) - 1; i >= 0; i-- {
				srvs[i].stop()
			}
		}()
	}
	var srv *spawned
	if len(srvs) > 0 {
		srv = srvs[0]
	}
	base = bases[0]
	if base == "" {
		return nil, errors.New("give -url of a running server or -server to start one")
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(u.Hostname()); u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("refusing to load %s: only loopback servers are measured", u.Host)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c * 2}, Timeout: 30 * time.Second}
	l := &loader{base: strings.TrimRight(base, "/"), client: client, createsOnly: createsOnly}
	for _, b := range bases {
		l.bases = append(l.bases, strings.TrimRight(b, "/"))
	}
	mon := newMonitor(srvs...)
	defer mon.stop()

	servers := "the server"
	if len(srvs) > 1 {
		servers = fmt.Sprintf("%d server processes on one database, the requests alternating between them", len(srvs))
	}
	fmt.Printf("p2pserver load: %s resources (one Patient per 10, ~9 Observations each), %d clients, %s per phase, the load client sharing the machine with %s\n",
		joinInts(sizes), c, d, servers)
	deadline := time.Time{}
	if timeLimit > 0 {
		deadline = time.Now().Add(timeLimit)
	}
	var results []*sizeResult
	for _, n := range sizes {
		res, err := l.stage(n, c, d, deadline, srv, mon)
		if err != nil {
			return nil, err
		}
		results = append(results, res)
		if res.short {
			fmt.Printf("(the time limit stopped loading at %d resources)\n", res.resources)
			break
		}
	}
	printScaling(results)
	return results, nil
}

// sizeResult holds the figures measured at one database size.
type sizeResult struct {
	resources int
	short     bool // the time limit stopped the loading before the size
	figs      []figure
}

// figure is one measured value; lower says whether less is better, for
// reading the ratio.
type figure struct {
	name, unit string
	v          float64
	lower      bool
}

func (r *sizeResult) add(name, unit string, v float64, lower bool) {
	r.figs = append(r.figs, figure{name, unit, v, lower})
}

// stage grows the database to n resources and measures it.
func (l *loader) stage(n, c int, d time.Duration, deadline time.Time, srv *spawned, mon *monitor) (*sizeResult, error) {
	res := &sizeResult{}
	p0, o0 := len(l.patientIDs), len(l.obsIDs)
	patients := max(n/10, 1)
	observations := n - patients
	fmt.Printf("\n-- growing to %d resources (%d Patients, %d Observations)\n", n, patients, observations)
	mon.reset()
	st, err := l.phaseUntil("create Patient", c, patients-p0, deadline, func(i int) (string, error) {
		return l.create("Patient", patientJSON(p0+i))
	})
	if err != nil {
		return nil, err
	}
	l.patientIDs = append(l.patientIDs, st.ids...)
	st.print()
	res.add("create Patient", "/s", st.rate(), false)
	np := len(l.patientIDs) - p0
	want := observations - o0
	if np < patients-p0 {
		want = np * 9
		res.short = true
	}
	if np > 0 && want > 0 {
		st, err = l.phaseUntil("create Observation", c, want, deadline, func(i int) (string, error) {
			return l.create("Observation", observationJSON(o0+i, l.patientIDs[p0+i%np]))
		})
		if err != nil {
			return nil, err
		}
		l.obsIDs = append(l.obsIDs, st.ids...)
		st.print()
		res.add("create Observation", "/s", st.rate(), false)
		if len(st.ids) < want {
			res.short = true
		}
	}
	res.resources = len(l.patientIDs) + len(l.obsIDs)
	if srv != nil {
		srv.resources = res.resources
	}
	if l.createsOnly {
		return res, nil
	}
	pids, oids := l.patientIDs, l.obsIDs
	if len(oids) == 0 || len(pids) == 0 {
		return nil, errors.New("nothing was loaded")
	}
	if srv != nil && srv.postgres() {
		took, err := settlePostgres(srv.db)
		if err != nil {
			return nil, err
		}
		fmt.Printf("VACUUM (ANALYZE) and CHECKPOINT after the load: %s\n", took.Round(time.Millisecond))
	}
	measure := func(name string, f func() error) (*stats, error) {
		st, err := l.phase(name, c, 0, d, func(int) (string, error) { return "", f() })
		if err != nil {
			return nil, err
		}
		st.print()
		return st, nil
	}
	// The floor and the reads are measured in alternating slices of the
	// phase, so that other work on the machine, which comes and goes,
	// weighs on both alike and their ratio stays meaningful.
	var floor, reads *stats
	for range floorSlices {
		f, err := l.phase("HTTP floor (GET /healthz)", c, 0, d/floorSlices, func(int) (string, error) { return "", l.getURL(l.root() + "/healthz") })
		if err != nil {
			return nil, err
		}
		r, err := l.phase("read Observation", c, 0, d/floorSlices, func(int) (string, error) {
			return "", l.get("/Observation/" + oids[rand.IntN(len(oids))])
		})
		if err != nil {
			return nil, err
		}
		floor, reads = floor.merge(f), reads.merge(r)
	}
	floor.print()
	reads.print()
	st = reads
	res.add("HTTP floor (GET /healthz)", "/s", floor.rate(), false)
	res.add("read", "/s", st.rate(), false)
	res.add("read p50", "ms", st.p50(), true)
	res.add("read / HTTP floor", "x", st.rate()/floor.rate(), false)
	perCode := len(oids) / codes
	st, err = measure(fmt.Sprintf("search Observation?code (~%d hits, page of 20)", perCode), func() error {
		return l.get(fmt.Sprintf("/Observation?code=urn:load|c%d&_count=20", rand.IntN(codes)))
	})
	if err != nil {
		return nil, err
	}
	res.add("Observation?code p50", "ms", st.p50(), true)
	st, err = measure("search Patient?family (prefix, ~10 hits)", func() error {
		return l.get(fmt.Sprintf("/Patient?family=fam%d&_count=20", rand.IntN(max(len(pids)/10, 1))))
	})
	if err != nil {
		return nil, err
	}
	res.add("Patient?family p50", "ms", st.p50(), true)
	st, err = measure("search Observation?subject+date (one member's ~9)", func() error {
		return l.get(fmt.Sprintf("/Observation?subject=Patient/%s&date=ge2020-01-01", pids[rand.IntN(len(pids))]))
	})
	if err != nil {
		return nil, err
	}
	res.add("Observation?subject+date p50", "ms", st.p50(), true)
	st, err = measure("search Patient?identifier (one hit)", func() error {
		return l.get(fmt.Sprintf("/Patient?identifier=urn:load:member|m%d", rand.IntN(len(pids))))
	})
	if err != nil {
		return nil, err
	}
	res.add("Patient?identifier p50", "ms", st.p50(), true)
	if srv != nil {
		if size, err := srv.dbSize(); err == nil {
			res.add("database bytes per resource", "B", float64(size)/float64(res.resources), true)
		}
		heap, rss := mon.peaks()
		res.add("server heap, peak", "MiB", float64(heap)/(1<<20), true)
		res.add("server RSS, peak", "MiB", float64(rss)/(1<<20), true)
		if live, err := heapInuse(srv.debug); err == nil {
			res.add("server heap in use after a GC", "MiB", float64(live)/(1<<20), true)
		}
	}
	return res, nil
}

// printScaling prints each figure at every size, with the ratio of the
// last size to the first.
func printScaling(results []*sizeResult) {
	if len(results) == 0 {
		return
	}
	fmt.Printf("\n%-34s", "figure")
	for _, r := range results {
		fmt.Printf(" %14s", fmt.Sprintf("%d res.", r.resources))
	}
	if len(results) > 1 {
		fmt.Printf(" %8s", "ratio")
	}
	fmt.Println()
	for i, f := range results[0].figs {
		fmt.Printf("%-34s", f.name)
		for _, r := range results {
			if i < len(r.figs) && r.figs[i].name == f.name {
				fmt.Printf(" %14s", formatFigure(r.figs[i]))
			} else {
				fmt.Printf(" %14s", "-")
			}
		}
		if last := results[len(results)-1]; len(results) > 1 && i < len(last.figs) && last.figs[i].name == f.name && f.v != 0 {
			fmt.Printf(" %7.2fx", last.figs[i].v/f.v)
		}
		fmt.Println()
	}
}

func formatFigure(f figure) string {
	switch f.unit {
	case "/s":
		return fmt.Sprintf("%.0f/s", f.v)
	case "ms":
		return fmt.Sprintf("%.2f ms", f.v)
	case "x":
		return fmt.Sprintf("%.2fx", f.v)
	case "B":
		return fmt.Sprintf("%.0f B", f.v)
	default:
		return fmt.Sprintf("%.1f %s", f.v, f.unit)
	}
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, " then ")
}

const codes = 1000

func patientJSON(i int) []byte {
	return []byte(fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:load:member","value":"m%d"}],"name":[{"family":"Fam%d","given":["Given%d"]}],"gender":"%s","birthDate":"%d-%02d-%02d"}`,
		i, i/10, i, []string{"male", "female"}[i%2], 1940+i%60, 1+i%12, 1+i%28))
}

func observationJSON(i int, patient string) []byte {
	return []byte(fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:load","code":"c%d","display":"Load code %d"}]},"subject":{"reference":"Patient/%s"},"effectiveDateTime":"20%02d-%02d-%02dT10:00:00Z","valueQuantity":{"value":%d.%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`,
		i%codes, i%codes, patient, 15+i%10, 1+i%12, 1+i%28, i%300, i%10))
}

type loader struct {
	base   string // the first server's FHIR base URL
	client *http.Client
	// bases are the FHIR base URLs of the servers measured together:
	// the calls go to each in turn.
	bases []string
	turn  atomic.Uint64
	// The database grows by stages: each loads its Patients, then nine
	// Observations per new Patient referring to it, so that a member has
	// ~9 Observations whatever the size.
	patientIDs, obsIDs []string
	// createsOnly stops each stage after its creates (-creates).
	createsOnly bool
}

// pick returns the FHIR base URL of the server the next call goes to.
func (l *loader) pick() string {
	if len(l.bases) < 2 {
		return l.base
	}
	return l.bases[(l.turn.Add(1)-1)%uint64(len(l.bases))]
}

// root is the address, without the FHIR base path, of the server the
// next call goes to.
func (l *loader) root() string {
	base := l.pick()
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	return u.Scheme + "://" + u.Host
}

func (l *loader) create(typ string, body []byte) (string, error) {
	resp, err := l.client.Post(l.pick()+"/"+typ, "application/fhir+json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create %s: %d %.200s", typ, resp.StatusCode, b)
	}
	var r struct{ ID string }
	if err := json.Unmarshal(b, &r); err != nil {
		return "", err
	}
	return r.ID, nil
}

func (l *loader) get(path string) error { return l.getURL(l.pick() + path) }

func (l *loader) getURL(u string) error {
	path := u
	resp, err := l.client.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %.200s", path, resp.StatusCode, b)
	}
	return nil
}

type stats struct {
	name    string
	n       int
	elapsed time.Duration
	lat     []time.Duration
	ids     []string // what each call returned, in call order (creates)
}

func (s *stats) rate() float64 { return float64(s.n) / s.elapsed.Seconds() }

// p50 is the median latency in milliseconds.
// floorSlices is how many alternating slices the HTTP floor and the read
// phase are measured in.
const floorSlices = 5

// merge adds o's calls to s (nil: o's own) as one phase measured over
// both's time.
func (s *stats) merge(o *stats) *stats {
	if s == nil {
		return o
	}
	s.n += o.n
	s.elapsed += o.elapsed
	s.lat = append(s.lat, o.lat...)
	return s
}

func (s *stats) p50() float64 {
	slices.Sort(s.lat)
	if len(s.lat) == 0 {
		return 0
	}
	return float64(s.lat[len(s.lat)/2]) / float64(time.Millisecond)
}

func (s *stats) print() {
	slices.Sort(s.lat)
	pct := func(p float64) time.Duration {
		if len(s.lat) == 0 {
			return 0
		}
		return s.lat[min(len(s.lat)-1, int(float64(len(s.lat))*p))]
	}
	fmt.Printf("%-58s %8d req %9.0f req/s  p50 %8s  p99 %8s\n", s.name, s.n, float64(s.n)/s.elapsed.Seconds(),
		pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond))
}

// phase runs f with c workers, count times (or, with count 0, until d has
// passed), and records each call's latency. The first error stops it.
func (l *loader) phase(name string, c, count int, d time.Duration, f func(i int) (string, error)) (*stats, error) {
	var deadline time.Time
	if count == 0 {
		deadline = time.Now().Add(d)
	}
	return l.phaseUntil(name, c, count, deadline, f)
}

// phaseUntil runs f with c workers count times (count 0: without end),
// stopping early at deadline unless it is zero, and records each call's
// latency and the ids the calls returned. The first error stops it.
func (l *loader) phaseUntil(name string, c, count int, deadline time.Time, f func(i int) (string, error)) (*stats, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	lats := make([][]time.Duration, c)
	var ids []string
	if count > 0 {
		ids = make([]string, count)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if count > 0 && i >= count {
					return
				}
				t0 := time.Now()
				id, err := f(i)
				lats[w] = append(lats[w], time.Since(t0))
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				if ids != nil {
					ids[i] = id
				}
			}
		}()
	}
	wg.Wait()
	st := &stats{name: name, elapsed: time.Since(start)}
	for _, l := range lats {
		st.lat = append(st.lat, l...)
	}
	st.n = len(st.lat)
	for _, id := range ids {
		if id != "" {
			st.ids = append(st.ids, id)
		}
	}
	return st, firstErr
}

// spawned is a p2pserver started for the run.
type spawned struct {
	cmd   *exec.Cmd
	dir   string
	db    string
	base  string // FHIR base URL
	debug string // its profiling address, when started with one
	// resources is the number of resources loaded, for the bytes per
	// resource of each bucket family printed at stop.
	resources int
	// quiet: another process on the same database prints its size.
	quiet bool
}

// postgres reports whether the server runs on PostgreSQL.
func (s *spawned) postgres() bool { return strings.HasPrefix(s.db, "postgres") }

// start starts a p2pserver on a free loopback port with a new database.
func start(bin string, args ...string) (*spawned, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "p2pload")
	if err != nil {
		return nil, err
	}
	s := &spawned{dir: dir, db: filepath.Join(dir, "load.db")}
	if serverDB != "" {
		s.db = serverDB
	}
	s.cmd = exec.Command(bin, append([]string{"-addr", addr, "-db", s.db, "-log-level", "warn"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = os.Stdout, os.Stderr
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	base := "http://" + addr
	for range 100 {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.base = base + "/fhir"
				return s, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.stop()
	return nil, errors.New("the server did not become healthy in 10s")
}

// stop stops the server and removes its database.
func (s *spawned) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	_ = s.cmd.Wait()
	defer os.RemoveAll(s.dir)
	if s.quiet {
		return
	}
	if size, err := s.dbSize(); err == nil {
		fmt.Printf("database size: %.1f MiB\n", float64(size)/(1<<20))
	}
	if s.postgres() {
		if err := printPostgresTables(s.db); err != nil {
			fmt.Println("p2pload: the tables' sizes:", err)
		}
	} else if s.resources > 0 {
		if err := printUsage(s.db, s.resources); err != nil {
			fmt.Printf("bucket usage: %v\n", err)
		}
	}
}

func (s *spawned) dbSize() (int64, error) {
	if s.postgres() {
		return postgresSize(s.db)
	}
	fi, err := os.Stat(s.db)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// rss is the server's resident set size in bytes (Linux only).
func (s *spawned) rss() (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// monitor samples the servers' heap and RSS while the run goes on, and
// keeps the peaks (of one process: the highest of the processes').
type monitor struct {
	srvs     []*spawned
	mu       sync.Mutex
	heap     uint64
	rssPeak  uint64
	done     chan struct{}
	finished chan struct{}
}

func newMonitor(srvs ...*spawned) *monitor {
	m := &monitor{srvs: srvs, done: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(m.finished)
		if len(srvs) == 0 {
			return
		}
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.done:
				return
			case <-t.C:
				m.sample()
			}
		}
	}()
	return m
}

func (m *monitor) sample() {
	for _, srv := range m.srvs {
		heap, _ := heapAlloc(srv.debug)
		rss, _ := srv.rss()
		m.mu.Lock()
		m.heap = max(m.heap, heap)
		m.rssPeak = max(m.rssPeak, rss)
		m.mu.Unlock()
	}
}

// peaks returns the highest heap and RSS seen since the last reset.
func (m *monitor) peaks() (heap, rss uint64) {
	m.sample()
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heap, m.rssPeak
}

func (m *monitor) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.heap, m.rssPeak = 0, 0
}

func (m *monitor) stop() {
	close(m.done)
	<-m.finished
}

// heapAlloc reads the server's heap objects (live and garbage not yet
// collected: what the heap holds at that moment) from its /debug/memory.
func heapAlloc(debugAddr string) (uint64, error) {
	resp, err := http.Get("http://" + debugAddr + "/debug/memory")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v map[string]uint64
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, err
	}
	return v["/memory/classes/heap/objects:bytes"], nil
}
