package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/internal/benchserve"
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
	serve := func(b *testing.B, paths []string) { benchserve.Serve(b, h, paths) }
	b.Run("healthz", func(b *testing.B) { serve(b, []string{"/healthz"}) })
	obs := make([]string, len(ids))
	for i, id := range ids {
		obs[i] = "/fhir/Observation/" + id
	}
	b.Run("Observation", func(b *testing.B) { serve(b, obs) })
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
