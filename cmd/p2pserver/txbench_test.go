package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/p2pserver/p2pserver/internal/benchserve"
	"github.com/p2pserver/p2pserver/internal/loadbundle"
)

// BenchmarkLargeTransaction serves POST /fhir with a transaction Bundle
// of 10,000 entries (a Patient then nine Observations referring to it by
// urn:uuid fullUrl, the Bundle p2pload -limits posts) through the whole
// handler the server runs, without the network. Besides ns/op (the
// client's wait) it reports cpu-ns/op, the process's CPU time, and
// writer-ns/op, how long the transaction held the single store writer:
// every other write waits that long behind it.
func BenchmarkLargeTransaction(b *testing.B) {
	a, h := openApp(b)
	body := loadbundle.Transaction(10000)
	w := benchserve.NewDiscard()
	b.ReportAllocs()
	cpu0 := benchserve.CPU(b)
	held0, _ := a.store.WriterHeld()
	for b.Loop() {
		w.Reset()
		req := httptest.NewRequest(http.MethodPost, "/fhir", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		h.ServeHTTP(w, req)
		if w.Status != http.StatusOK || w.N == 0 {
			b.Fatalf("the transaction: %d, %d bytes", w.Status, w.N)
		}
	}
	held, longest := a.store.WriterHeld()
	b.ReportMetric(float64(benchserve.CPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(held-held0)/float64(b.N), "writer-ns/op")
	b.ReportMetric(float64(longest), "longest-writer-ns")
}

// testApp builds the server from the flags args (after -addr
// 127.0.0.1:0 and -base-url http://127.0.0.1:8080, which args may
// override), logging nowhere, not started. The caller closes it.
func testApp(tb testing.TB, args ...string) (*app, Config) {
	tb.Helper()
	args = append([]string{"-addr", "127.0.0.1:0", "-base-url", "http://127.0.0.1:8080"}, args...)
	cfg, err := parseConfig(args, func(string) string { return "" })
	if err != nil {
		tb.Fatal(err)
	}
	a, err := newApp(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	return a, cfg
}

// openApp starts an open server on a database in a temporary folder, and
// returns it and its handler as the HTTP server runs it.
func openApp(b testing.TB) (*app, http.Handler) {
	b.Helper()
	a, cfg := testApp(b, "-db", filepath.Join(b.TempDir(), "p2p.db"))
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(func() { cancel(); a.Close() })
	if err := a.Start(ctx); err != nil {
		b.Fatal(err)
	}
	return a, cfg.Limits.httpServer(a.Handler()).Handler
}
