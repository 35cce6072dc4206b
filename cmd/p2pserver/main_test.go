package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
)

func TestConfigFlagsAndEnvironment(t *testing.T) {
	env := map[string]string{"P2P_ADDR": "127.0.0.1:9999", "P2P_MAX_BODY": "2MiB", "P2P_DB": "/tmp/x.db"}
	cfg, err := parseConfig([]string{"-db", "/tmp/flag.db"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "127.0.0.1:9999" || cfg.MaxBody != 2<<20 || cfg.DB != "/tmp/flag.db" {
		t.Errorf("flags and env not applied: %+v", cfg)
	}
	if cfg.BaseURL != "" {
		t.Errorf("base URL %q set before the address is bound", cfg.BaseURL)
	}
	for _, bad := range [][]string{{"-max-body", "lots"}, {"-shutdown-grace", "soon"}, {"-nonsense"},
		{"-read-timeout", "soon"}, {"-write-timeout", "0s"}, {"-max-connections", "0"}, {"-max-header-bytes", "1"},
		{"-search-cache-bytes", "lots"}, {"-max-expensive-per-client", "none"}, {"-max-bundle-entries", "-1"}, {"-large-bundle-entries", "0"}} {
		if _, err := parseConfig(bad, func(string) string { return "" }); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// TestSizeFlags: a size flag takes a positive whole number of bytes, alone
// or with one of the units KB, MB (powers of 1,000), KiB, MiB, GiB (powers
// of 1,024) in exactly those cases, and a refused value says why.
func TestSizeFlags(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "8MB", want: 8_000_000},
		{in: "8MiB", want: 8 << 20},
		{in: "64KB", want: 64_000},
		{in: "64KiB", want: 64 << 10},
		{in: "2GiB", want: 2 << 30},
		{in: "1234", want: 1234},
		{in: "0", wantErr: "must be positive"},
		{in: "0MiB", wantErr: "must be positive"},
		{in: "-5KiB", wantErr: "must be positive"},
		{in: "8mb", wantErr: "is not a size: a whole number of bytes"},
		{in: "8Mib", wantErr: "is not a size"},
		{in: "1.5MiB", wantErr: "is not a size"},
		{in: "lots", wantErr: "is not a size"},
		{in: "9999999999999GiB", wantErr: "too large"},
	} {
		got, err := parseSize(c.in)
		switch {
		case c.wantErr == "" && (err != nil || got != c.want):
			t.Errorf("%q: %d, %v; want %d", c.in, got, err, c.want)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%q: %d, %v; want an error saying %q", c.in, got, err, c.wantErr)
		}
	}
	_, err := parseConfig([]string{"-search-cache-bytes", "0"}, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "-search-cache-bytes") || !strings.Contains(err.Error(), "must be positive") {
		t.Errorf("-search-cache-bytes 0: %v", err)
	}
}

// TestServeAndShutDown starts the whole server as make run would (on a
// free port, database in a temporary folder), checks that it answers, and
// that a signal shuts it down cleanly so the database can be reopened.
func TestServeAndShutDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	db := filepath.Join(t.TempDir(), "data", "p2p.db")
	cfg, err := parseConfig([]string{"-addr", addr, "-db", db}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func() (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx, cfg, log) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get("http://" + addr + "/healthz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("server did not become healthy")
			}
			time.Sleep(20 * time.Millisecond)
		}
		return cancel, done
	}
	cancel, done := start()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/fhir/metadata"); code != 200 || !strings.Contains(body, "CapabilityStatement") {
		t.Errorf("metadata: %d %.100s", code, body)
	}
	// Run open (no trusted issuer): the SMART document says there is no
	// authorization server rather than inventing one.
	if code, body := get("/fhir/.well-known/smart-configuration"); code != 404 || !strings.Contains(body, "open") {
		t.Errorf("smart-configuration: %d %.200s", code, body)
	}
	if code, body := get("/api/oidc_servers"); code != 200 || !strings.Contains(body, "servers") {
		t.Errorf("oidc_servers: %d %.100s", code, body)
	}
	resp, err := http.Post("http://"+addr+"/fhir/Patient", "application/fhir+json", strings.NewReader(`{"resourceType":"Patient","id":"x"}`))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("create: %v %v", err, resp)
	}
	loc := resp.Header.Get("Location")
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// The database was closed cleanly: a new server opens it and has the data.
	cancel, done = start()
	defer func() { cancel(); <-done }()
	id := strings.Split(strings.TrimPrefix(loc, "http://"+addr+"/fhir/Patient/"), "/")[0]
	if code, _ := get(fmt.Sprintf("/fhir/Patient/%s", id)); code != 200 {
		t.Errorf("patient lost across restart: %d", code)
	}
}

// TestDebugMemoryReportsHeap checks the debug address's /debug/memory: the
// heap figures the load tool reads, as numbers, and nothing from the
// command line (which may carry secrets).
func TestDebugMemoryReportsHeap(t *testing.T) {
	srv := httptest.NewServer(debugHandler(nil))
	defer srv.Close()
	keep := make([]byte, 8<<20) // heap the figures must count
	resp, err := http.Get(srv.URL + "/debug/memory")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got map[string]uint64
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	for _, name := range memoryMetrics {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing from %v", name, got)
		}
	}
	if h := got["/memory/classes/heap/objects:bytes"]; h < uint64(len(keep)) {
		t.Errorf("heap objects = %d bytes, less than the %d held", h, len(keep))
	}
	if a := got["/gc/heap/allocs:bytes"]; a < uint64(len(keep)) {
		t.Errorf("heap allocations = %d bytes, less than the %d allocated", a, len(keep))
	}
	if len(got) != len(memoryMetrics) {
		t.Errorf("reported %d figures, want only the %d memory ones: %v", len(got), len(memoryMetrics), got)
	}
	runtime.KeepAlive(keep)
}

// TestHeapLimitFollowsLiveHeap: the soft memory limit is the floor while
// little is live, and twice the live heap beyond, never less.
func TestHeapLimitFollowsLiveHeap(t *testing.T) {
	for _, tc := range []struct {
		live uint64
		want int64
	}{
		{0, heapFloor},
		{30 << 20, heapFloor},
		{64 << 20, heapFloor},
		{65 << 20, 130 << 20},
		{1 << 30, 2 << 30},
		{math.MaxUint64, math.MaxInt64},
	} {
		if got := heapLimit(tc.live); got != tc.want {
			t.Errorf("live %d: limit %d, want %d", tc.live, got, tc.want)
		}
	}
}

// TestDBSetting: -db is a postgres:// (or postgresql://) URL, or a file
// path; any other scheme:// is refused, not taken for a file name (which
// made a folder named after the scheme). A URL's password appears in no
// message or log line, whether the database answers or not.
func TestDBSetting(t *testing.T) {
	for _, c := range []struct {
		db string
		ok bool
	}{
		{"data/p2p.db", true},
		{"/var/lib/p2p/p2p.db", true},
		{"postgres://p2p:s3cret@db.example/p2p?sslmode=require", true},
		{"postgresql://p2p@db.example/p2p", true},
		{"POSTGRES://p2p@db.example/p2p", true},
		{"mysql://p2p:s3cret@db.example/p2p", false},
		{"sqlite://p2p.db", false},
		{"file:///var/lib/p2p/p2p.db", false},
		{"bolt://data/p2p.db", false},
		// A PostgreSQL URL missing its "//" is no file name anyone means.
		{"postgres:/p2p:s3cret@db.example/p2p", false},
		{"postgresql:p2p:s3cret@db.example/p2p", false},
		{"postgres:", false},
		// A keyword=value connection string is refused without repeating
		// it: taken for a file name, it was logged, password and all.
		{"host=db.example user=p2p password=s3cret dbname=p2p", false},
		{"dbname=p2p password=s3cret", false},
		// Spaces around a value (an env file's) are not part of it.
		{" postgres://p2p:s3cret@db.example/p2p\n", true},
		{"data/p2p.db ", true},
	} {
		for _, viaEnv := range []bool{false, true} {
			dir := t.TempDir()
			t.Chdir(dir)
			args, getenv := []string{"-db", c.db}, func(string) string { return "" }
			if viaEnv {
				args, getenv = nil, func(k string) string {
					if k == "P2P_DB" {
						return c.db
					}
					return ""
				}
			}
			cfg, err := parseConfig(args, getenv)
			if c.ok != (err == nil) {
				t.Errorf("-db %q (P2P_DB %v): %v", c.db, viaEnv, err)
			}
			if err == nil && cfg.DB != strings.TrimSpace(c.db) {
				t.Errorf("-db %q (P2P_DB %v): database %q", c.db, viaEnv, cfg.DB)
			}
			if err != nil && (!strings.Contains(err.Error(), "postgres://") || strings.Contains(err.Error(), "s3cret")) {
				t.Errorf("-db %s: %q should name what is accepted and not the password", c.db, err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) > 0 {
				t.Errorf("-db %s made %v", c.db, entries[0].Name())
			}
		}
	}
	// A database that does not answer: the error names it without the
	// password.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "postgres://p2p:s3cret@" + ln.Addr().String() + "/p2p?sslmode=disable&connect_timeout=2"
	ln.Close()
	var logs strings.Builder
	cfg, err := parseConfig([]string{"-db", url, "-addr", "127.0.0.1:0"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err == nil || strings.Contains(err.Error()+logs.String(), "s3cret") || !strings.Contains(err.Error(), "p2p:xxxxx@") {
		t.Errorf("an unreachable database: %v (logs %q); want an error naming it without its password", err, logs.String())
	}
}

// TestHeapLimitRetunedAfterEachCollection: the soft limit follows a live
// heap that grows between two ticks of the backstop timer, at the end of
// the collection that measured it, so that the collector does not run back
// to back under a limit below what is live.
func TestHeapLimitRetunedAfterEachCollection(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go tuneHeap(ctx)
	const live = 192 << 20
	keep := make([]byte, live)
	for i := range keep {
		keep[i] = byte(i)
	}
	runtime.GC()
	deadline := time.Now().Add(heapRetune / 2) // well before the backstop
	for debug.SetMemoryLimit(-1) < 2*live {
		if time.Now().After(deadline) {
			t.Fatalf("limit %d MiB after a collection with %d MiB live, want at least %d MiB",
				debug.SetMemoryLimit(-1)>>20, live>>20, 2*live>>20)
		}
		time.Sleep(5 * time.Millisecond)
	}
	runtime.KeepAlive(keep)
}

// TestLargeBundleEntriesFlag: -large-bundle-entries (P2P_LARGE_BUNDLE_ENTRIES)
// reaches the FHIR server, which counts a Bundle of that many entries as
// expensive work and commits such a transaction alone.
func TestLargeBundleEntriesFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want int
	}{
		{nil, nil, 500},
		{nil, map[string]string{"P2P_LARGE_BUNDLE_ENTRIES": "40"}, 40},
		{[]string{"-large-bundle-entries", "7"}, map[string]string{"P2P_LARGE_BUNDLE_ENTRIES": "40"}, 7},
	} {
		cfg, err := parseConfig(c.args, func(k string) string { return c.env[k] })
		if err != nil {
			t.Fatal(err)
		}
		var fcfg fhir.Config
		cfg.Limits.fhir(&fcfg)
		if fcfg.LargeBundleEntries != c.want {
			t.Errorf("%v %v: LargeBundleEntries %d, want %d", c.args, c.env, fcfg.LargeBundleEntries, c.want)
		}
	}
}

// TestDebugWriterReportsHolds checks the debug address's /debug/writer:
// a write that holds the store's single writer for a while is counted, in
// all and as the longest hold, in seconds (what p2pload -limits reports as
// the time a large transaction held the writer).
func TestDebugWriterReportsHolds(t *testing.T) {
	a, _ := openApp(t)
	const hold = 50 * time.Millisecond
	if err := a.store.Write(context.Background(), func(*store.Tx) error {
		time.Sleep(hold)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(debugHandler(a.store))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/debug/writer")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got writerFigures
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.LongestSeconds < hold.Seconds() || got.BusySeconds < got.LongestSeconds || got.Queued != 0 {
		t.Errorf("/debug/writer %+v after a write that held the writer %s", got, hold)
	}
}
