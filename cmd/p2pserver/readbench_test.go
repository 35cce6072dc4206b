package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkReadServed serves GET /healthz (the HTTP floor p2pload
// measures) and GET /fhir/Observation/{id} through the whole handler the
// server runs (deadlines, CORS, the SMART guard, provenance, negotiation,
// the FHIR router and the store), without the network: what a read costs
// beyond the floor is the handler chain's and the store's work. Besides
// ns/op it reports cpu-ns/op, the process's CPU time per request, which a
// loaded machine disturbs less.
func BenchmarkReadServed(b *testing.B) {
	h, ids := readBenchServer(b, 200)
	// The requests are made before the timing, and the answers dropped
	// (status and body size checked), so that only the server's work is
	// timed.
	serve := func(b *testing.B, paths []string) {
		reqs := make([]*http.Request, len(paths))
		for i, p := range paths {
			reqs[i] = httptest.NewRequest(http.MethodGet, p, nil)
		}
		w := &discardWriter{h: http.Header{}}
		b.ReportAllocs()
		cpu0 := processCPU(b)
		for i := 0; b.Loop(); i++ {
			clear(w.h)
			w.status, w.n = 0, 0
			h.ServeHTTP(w, reqs[i%len(reqs)])
			if w.status != http.StatusOK || w.n == 0 {
				b.Fatalf("GET %s: %d, %d bytes", paths[i%len(paths)], w.status, w.n)
			}
		}
		b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	}
	b.Run("healthz", func(b *testing.B) { serve(b, []string{"/healthz"}) })
	obs := make([]string, len(ids))
	for i, id := range ids {
		obs[i] = "/fhir/Observation/" + id
	}
	b.Run("Observation", func(b *testing.B) { serve(b, obs) })
}

// processCPU is the CPU time the process has used, in nanoseconds (user
// and system, every thread, the collector's included). On a machine other
// work shares, the CPU a request costs is steadier than the wall time
// ns/op reports.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// discardWriter is an http.ResponseWriter that keeps the status and counts
// the body's bytes. It takes deadlines, as a connection's writer does.
type discardWriter struct {
	h         http.Header
	status, n int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

// readBenchServer starts an open server on a database in a temporary
// folder holding n Observations, and returns its handler (as the HTTP
// server runs it) and the Observations' ids.
func readBenchServer(b *testing.B, n int) (http.Handler, []string) {
	b.Helper()
	_, h := openApp(b)
	ids := make([]string, n)
	for i := range ids {
		body := fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:load","code":"c%d"}]},"subject":{"reference":"Patient/p%d"},"effectiveDateTime":"2024-01-%02dT10:00:00Z","valueQuantity":{"value":%d.5,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"}}`, i%50, i/9, 1+i%28, i)
		req := httptest.NewRequest(http.MethodPost, "/fhir/Observation", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var made struct{ ID string }
		if rec.Code != http.StatusCreated || json.Unmarshal(rec.Body.Bytes(), &made) != nil || made.ID == "" {
			b.Fatalf("create: %d %.300s", rec.Code, rec.Body)
		}
		ids[i] = made.ID
	}
	return h, ids
}

func (w *discardWriter) SetReadDeadline(time.Time) error  { return nil }
func (w *discardWriter) SetWriteDeadline(time.Time) error { return nil }
