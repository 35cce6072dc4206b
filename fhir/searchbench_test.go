package fhir_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/benchserve"
)

// The searches p2pload measures, over a store shaped like its own: one
// Patient per nine Observations, benchCodes codes spread evenly, so that a
// code matches ~90 Observations and a member has ~9.
const (
	benchObservations = 4500
	benchCodes        = 50
)

// BenchmarkSearchCode serves, through the FHIR handler without the
// network, the searches and the read p2pload measures:
// Observation?code (~90 hits, a page of 20 with a next link), the second
// page through that link, Observation?subject&date (one member's ~9, one
// page), Patient?identifier (one hit) and a read of one Observation.
// Besides ns/op it reports cpu-ns/op, the process's CPU time per request,
// which other work on the machine disturbs less.
func BenchmarkSearchCode(b *testing.B) {
	h, patients, obs := searchBenchServer(b)
	first := make([]string, benchCodes)
	for i := range first {
		first[i] = fmt.Sprintf("/fhir/Observation?code=urn:load|c%d&_count=20", i)
	}
	b.Run("code", func(b *testing.B) { benchserve.Serve(b, h, first) })
	// The next links of the first pages.
	next := make([]string, len(first))
	for i, p := range first {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, p, nil))
		var bundle fhir.Bundle
		if err := json.Unmarshal(w.Body.Bytes(), &bundle); err != nil || len(bundle.Entry) != 20 {
			b.Fatalf("GET %s: %d %.300s", p, w.Code, w.Body)
		}
		for _, l := range bundle.Link {
			if l.Relation == "next" {
				u, _ := url.Parse(l.URL)
				next[i] = u.RequestURI()
			}
		}
		if next[i] == "" {
			b.Fatalf("GET %s: no next link", p)
		}
	}
	b.Run("code-next", func(b *testing.B) { benchserve.Serve(b, h, next) })
	member := make([]string, len(patients))
	ident := make([]string, len(patients))
	for i, p := range patients {
		member[i] = "/fhir/Observation?subject=Patient/" + p + "&date=ge2020-01-01"
		ident[i] = fmt.Sprintf("/fhir/Patient?identifier=urn:load:member|m%d", i)
	}
	b.Run("subject-date", func(b *testing.B) { benchserve.Serve(b, h, member) })
	b.Run("identifier", func(b *testing.B) { benchserve.Serve(b, h, ident) })
	reads := make([]string, len(obs))
	for i, id := range obs {
		reads[i] = "/fhir/Observation/" + id
	}
	b.Run("read", func(b *testing.B) { benchserve.Serve(b, h, reads) })
}

// searchBenchServer returns the handler of a FHIR server on a database
// in a temporary folder holding p2pload's Patients and Observations
// (created by transaction Bundles, with ids the server gives), and their
// ids.
func searchBenchServer(b *testing.B) (h http.Handler, patients, observations []string) {
	b.Helper()
	db, err := store.OpenDB(context.Background(), storetest.DSN(b), store.DBOptions{})
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close(); db.Close() })
	mux := chi.NewRouter()
	mux.Mount("/fhir", fhir.New(st, fhir.Config{BaseURL: "http://127.0.0.1:8080/fhir"}).Handler())
	h = mux
	post := func(entries []string) []string {
		body := `{"resourceType":"Bundle","type":"transaction","entry":[` + strings.Join(entries, ",") + `]}`
		req := httptest.NewRequest(http.MethodPost, "/fhir", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/fhir+json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		var resp struct {
			Entry []struct {
				Response struct{ Location string }
			}
		}
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &resp) != nil || len(resp.Entry) != len(entries) {
			b.Fatalf("transaction: %d %.300s", w.Code, w.Body)
		}
		ids := make([]string, len(entries))
		for i, e := range resp.Entry {
			// Location is [type]/[id]/_history/[vid].
			parts := strings.Split(e.Response.Location, "/")
			if len(parts) < 4 {
				b.Fatalf("transaction: entry location %q", e.Response.Location)
			}
			ids[i] = parts[len(parts)-3]
		}
		return ids
	}
	entry := func(typ, resource string) string {
		return `{"resource":` + resource + `,"request":{"method":"POST","url":"` + typ + `"}}`
	}
	var batch []string
	for i := range benchObservations / 9 {
		batch = append(batch, entry("Patient", fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:load:member","value":"m%d"}],"name":[{"family":"Fam%d","given":["Given%d"]}],"gender":"%s","birthDate":"%d-%02d-%02d"}`,
			i, i/10, i, []string{"male", "female"}[i%2], 1940+i%60, 1+i%12, 1+i%28)))
		if len(batch) == 250 {
			patients = append(patients, post(batch)...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		patients = append(patients, post(batch)...)
		batch = batch[:0]
	}
	for i := range benchObservations {
		batch = append(batch, entry("Observation", fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:load","code":"c%d","display":"Load code %d"}]},"subject":{"reference":"Patient/%s"},"effectiveDateTime":"20%02d-%02d-%02dT10:00:00Z","valueQuantity":{"value":%d.%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`,
			i%benchCodes, i%benchCodes, patients[i%len(patients)], 15+i%10, 1+i%12, 1+i%28, i%300, i%10)))
		if len(batch) == 250 {
			observations = append(observations, post(batch)...)
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		observations = append(observations, post(batch)...)
	}
	return h, patients, observations
}
