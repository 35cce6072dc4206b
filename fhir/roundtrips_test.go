package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestSearchRoundTripsOnPostgres: on PostgreSQL a read, and a search
// whose page is read from the database, cost one round trip each: the
// page's records (and, where the other clauses are checked on them, the
// candidates' index entries) come back with the index entries that name
// them. The rows are the searches p2pload measures (exact keys: a code,
// an identifier, a subject with a date checked on the candidates'
// entries; a string prefix: a family name), a page after the first, and
// a count, which reads index entries only. Every answer is checked too:
// fewer round trips must not mean other results.
func TestSearchRoundTripsOnPostgres(t *testing.T) {
	ts := newServerOn(t, pgtest.Database(t))
	db, ok := ts.db.(*pgdb.DB)
	if !ok {
		t.Fatalf("the database is a %T, not PostgreSQL", ts.db)
	}
	create := func(body string) string {
		t.Helper()
		r := ts.do(http.MethodPost, "/"+resourceType(body), body).want(t, http.StatusCreated)
		return r.JSON["id"].(string)
	}
	put := func(id, body string) {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatal(err)
		}
		m["id"] = id
		ts.do(http.MethodPut, "/"+resourceType(body)+"/"+id, m).want(t, http.StatusCreated)
	}
	// Patients with ids the server gives (kept in index keys in 16
	// bytes) and one with a client's id (kept as its text).
	var pats []string
	for i := range 3 {
		pats = append(pats, create(fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:rt","value":"m%d"}],"name":[{"family":"Rtfam%d"}]}`, i, i)))
	}
	put("rt-text", `{"resourceType":"Patient","identifier":[{"system":"urn:rt","value":"mt"}],"name":[{"family":"Rtfamt"}]}`)
	// 25 Observations of one code: a page of 10 has a next page. Of
	// the first Patient, 6 from 2019 and 2021 (3 match date=ge2020).
	obs := func(subject string, year int) string {
		return fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:rt","code":"c1"}]},"subject":{"reference":"Patient/%s"},"effectiveDateTime":"%d-06-01"}`, subject, year)
	}
	for i := range 22 {
		subject, year := pats[1+i%2], 2021
		if i < 6 {
			subject, year = pats[0], 2019+2*(i%2)
		}
		create(obs(subject, year))
	}
	for i := range 3 {
		put(fmt.Sprintf("rt-obs-%d", i), obs("rt-text", 2022))
	}

	code := "/Observation?code=" + url.QueryEscape("urn:rt|c1") + "&_count=10"
	first := ts.do(http.MethodGet, code, nil).want(t, http.StatusOK)
	page2 := link(first.JSON, "next")
	if page2 == "" {
		t.Fatal("the code search's first page links no next page")
	}
	rows := []struct {
		name    string
		path    string
		trips   int64
		matches int // the page's matches (-1: a read)
		total   int // the Bundle's total (-1: none)
	}{
		{"read", "/Patient/" + pats[0], 1, -1, -1},
		{"read of a client's id", "/Patient/rt-text", 1, -1, -1},
		{"code, first page", code, 1, 10, -1},
		{"code, page 2", page2, 1, 10, -1},
		{"identifier, one hit", "/Patient?identifier=" + url.QueryEscape("urn:rt|m1"), 1, 1, 1},
		{"identifier of a client's id", "/Patient?identifier=" + url.QueryEscape("urn:rt|mt"), 1, 1, 1},
		{"subject and date", "/Observation?subject=Patient/" + pats[0] + "&date=ge2020-01-01", 1, 3, 3},
		{"subject of a client's id and date", "/Observation?subject=Patient/rt-text&date=ge2020-01-01", 1, 3, 3},
		{"family, a prefix", "/Patient?family=rtfam", 1, 4, 4},
		{"family of one", "/Patient?family=rtfam1", 1, 1, 1},
		{"count", "/Observation?code=" + url.QueryEscape("urn:rt|c1") + "&_summary=count", 1, 0, 25},
		{"no match", "/Observation?code=" + url.QueryEscape("urn:rt|none"), 1, 0, 0},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			var trips int64
			var r *result
			// The first request may look up what the server then
			// remembers (which buckets exist, the search indexes'
			// numbers): the second is every later one.
			for range 2 {
				before := db.RoundTrips()
				r = ts.do(http.MethodGet, row.path, nil).want(t, http.StatusOK)
				trips = db.RoundTrips() - before
			}
			if trips != row.trips {
				t.Errorf("%d round trips, want %d", trips, row.trips)
			}
			if row.matches < 0 {
				return
			}
			if got := len(bundleIDs(r.JSON)); got != row.matches {
				t.Errorf("%d matches, want %d: %.400s", got, row.matches, r.Body)
			}
			total := -1
			if n, ok := r.JSON["total"]; ok {
				fmt.Sscan(fmt.Sprint(n), &total)
			}
			if total != row.total {
				t.Errorf("total %d, want %d", total, row.total)
			}
		})
	}
}

// resourceType returns the resourceType a JSON resource names.
func resourceType(body string) string {
	var v struct{ ResourceType string }
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		return ""
	}
	return v.ResourceType
}
