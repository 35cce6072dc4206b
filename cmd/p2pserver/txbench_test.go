package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
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
	body := largeTransaction(10000)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	cpu0 := processCPU(b)
	held0, _ := a.store.WriterHeld()
	for b.Loop() {
		clear(w.h)
		w.status, w.n = 0, 0
		req := httptest.NewRequest(http.MethodPost, "/fhir", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		h.ServeHTTP(w, req)
		if w.status != http.StatusOK || w.n == 0 {
			b.Fatalf("the transaction: %d, %d bytes", w.status, w.n)
		}
	}
	held, longest := a.store.WriterHeld()
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(held-held0)/float64(b.N), "writer-ns/op")
	b.ReportMetric(float64(longest), "longest-writer-ns")
}

// openApp starts an open server on a database in a temporary folder, and
// returns it and its handler as the HTTP server runs it.
func openApp(b testing.TB) (*app, http.Handler) {
	b.Helper()
	db := filepath.Join(b.TempDir(), "p2p.db")
	cfg, err := parseConfig([]string{"-addr", "127.0.0.1:0", "-db", db, "-base-url", "http://127.0.0.1:8080"}, func(string) string { return "" })
	if err != nil {
		b.Fatal(err)
	}
	a, err := newApp(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(func() { cancel(); a.Close() })
	if err := a.Start(ctx); err != nil {
		b.Fatal(err)
	}
	return a, cfg.Limits.httpServer(a.Handler()).Handler
}

// largeTransaction is a transaction of n entries: one Patient per ten,
// each followed by nine Observations referring to it by urn:uuid (as
// cmd/p2pload's).
func largeTransaction(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%10 == 0 {
			fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Patient","identifier":[{"system":"urn:tx:member","value":"tx%d"}],"name":[{"family":"Transaction%d","given":["Given%d","Middle"]}],"gender":"female","birthDate":"1970-01-%02d","address":[{"line":["%d Main Street"],"city":"Springfield","state":"MA","postalCode":"01101"}]},"request":{"method":"POST","url":"Patient"}}`,
				i, i, i, i, 1+i%28, i)
			continue
		}
		fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"%d-%d","display":"Load test code %d"}]},"subject":{"reference":"urn:uuid:00000000-0000-4000-8000-%012d"},"effectiveDateTime":"2024-%02d-%02dT10:00:00Z","issued":"2024-%02d-%02dT11:00:00Z","valueQuantity":{"value":%d.%d,"unit":"mg/dL","system":"http://unitsofmeasure.org","code":"mg/dL"},"note":[{"text":"entry %d of a large transaction"}]},"request":{"method":"POST","url":"Observation"}}`,
			i, 1000+i%500, i%10, i%500, i-i%10, 1+i%12, 1+i%28, 1+i%12, 1+i%28, i%300, i%10, i)
	}
	b.WriteString("]}")
	return b.Bytes()
}
