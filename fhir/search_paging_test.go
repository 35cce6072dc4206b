package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// TestPagedSearchesAreTheUnpagedAnswers: every search of crossQueries
// (each at one of _count 1, 2 and 3, in turn), and searches with
// _include, _revinclude, _sort and _elements (at each), paged by
// following the next links (FHIR R4
// http.html#paging: a page set is the same answer served in parts),
// answers the same entries, byte for byte as JSON, as the one page of
// _count=1000; on PostgreSQL the pages are asked of two servers on one
// database in turn (a next link answered by the other process). The
// fixtures mix ids the client chose with ids the server gave (UUIDs,
// kept in 16 bytes in the indexes), which sort apart.
func TestPagedSearchesAreTheUnpagedAnswers(t *testing.T) {
	a, b := serversOnOneDatabase(t)
	long := strings.Repeat("x", 600)
	for _, f := range crossFixtures {
		f = strings.ReplaceAll(f, "{L}", long)
		var m map[string]any
		if err := json.Unmarshal([]byte(f), &m); err != nil {
			t.Fatal(err)
		}
		a.do(http.MethodPut, "/"+m["resourceType"].(string)+"/"+m["id"].(string), f).want(t, http.StatusCreated)
		// The same resource again under an id the server gives.
		delete(m, "id")
		a.do(http.MethodPost, "/"+m["resourceType"].(string), m).want(t, http.StatusCreated)
	}
	// And the first ones under ids that are UUIDs in upper and lower
	// case (only the latter kept in 16 bytes), a UUID with more after
	// it, and ids that sort between and after them.
	for i, f := range crossFixtures[:8] {
		var m map[string]any
		if err := json.Unmarshal([]byte(strings.ReplaceAll(f, "{L}", long)), &m); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"ABCDEF0%d-0000-4000-8000-000000000000", "abcdef0%d-0000-4000-8000-000000000000", "abcdef0%d-0000-4000-8000-000000000000.x", "abcdef0%d", "Z%d", "0%d"} {
			id = fmt.Sprintf(id, i)
			m["id"] = id
			a.do(http.MethodPut, "/"+m["resourceType"].(string)+"/"+id, m).want(t, http.StatusCreated)
		}
	}
	queries := append([]string{
		"Observation?subject=Patient/p1&_include=Observation:subject",
		"Observation?_include=Observation:performer&_sort=-status",
		"Patient?_revinclude=Observation:subject",
		"Observation?status=final,amended&_sort=date,-_id",
		"Observation?_sort=_lastUpdated",
		"Observation?code=http://loinc.org|8867-4&_elements=status,subject",
		"Observation?subject:Patient.name=Smith",
		"Observation?_total=accurate&status=final",
	}, crossQueries...)
	checked := 0
	// The searches written here page at every _count; those of
	// crossQueries each at one of them in turn, which keeps the test's
	// time to a third and still pages every kind of query at each.
	extra := len(queries) - len(crossQueries)
	for qi, raw := range queries {
		typ, params := splitQuery(strings.ReplaceAll(raw, "{L}", long))
		if _, err := registry.Parse(typ, params, search.Options{}); err != nil {
			continue
		}
		name := raw
		if len(name) > 100 {
			name = name[:100] + "…"
		}
		params.Set("_count", "1000")
		whole := a.do(http.MethodGet, "/"+typ+"?"+params.Encode(), nil)
		if whole.Status != http.StatusOK {
			t.Errorf("%s: %d %s", name, whole.Status, whole.Body)
			continue
		}
		want := distinct(pageEntries(t, whole.JSON))
		counts := []int{1, 2, 3}
		if qi >= extra {
			counts = counts[qi%3 : qi%3+1]
		}
		for _, n := range counts {
			params.Set("_count", fmt.Sprint(n))
			var got []string
			servers := []*testServer{a, b}
			path := "/" + typ + "?" + params.Encode()
			for i := 0; path != ""; i++ {
				if i > len(want)+2 {
					t.Fatalf("%s _count=%d: more pages than entries", name, n)
				}
				s := servers[i%2]
				if strings.HasPrefix(path, a.URL) {
					path = s.URL + strings.TrimPrefix(path, a.URL)
				} else if strings.HasPrefix(path, b.URL) {
					path = s.URL + strings.TrimPrefix(path, b.URL)
				}
				pg := s.do(http.MethodGet, path, nil)
				if pg.Status != http.StatusOK {
					t.Fatalf("%s _count=%d page %d: %d %s", name, n, i, pg.Status, pg.Body)
				}
				got = append(got, pageEntries(t, pg.JSON)...)
				path = link(pg.JSON, "next")
			}
			// Included resources are those of each page's matches
			// (search.html#include): in the pages' union once.
			got = distinct(got)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("%s _count=%d: the pages answer\n%s\nthe whole answer is\n%s", name, n, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
		if len(want) > 0 {
			checked++
		}
	}
	if checked < len(queries)/2 {
		t.Fatalf("only %d of %d searches answer anything", checked, len(queries))
	}
}

// pageEntries returns a search Bundle's entries as JSON, each the
// resource and its search mode, less what differs between the answers
// of one search (the fullUrl's base, the OperationOutcome's details).
func pageEntries(t *testing.T, b map[string]any) []string {
	t.Helper()
	es, _ := b["entry"].([]any)
	var out []string
	for _, e := range es {
		em := e.(map[string]any)
		r, _ := em["resource"].(map[string]any)
		if r["resourceType"] == "OperationOutcome" {
			continue
		}
		enc, err := json.Marshal(map[string]any{"resource": r, "search": em["search"]})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(enc))
	}
	return out
}

// distinct returns the matches of entries in order, then the included
// resources, sorted, each once.
func distinct(entries []string) []string {
	var matches, included []string
	for _, e := range entries {
		if strings.Contains(e, `"search":{"mode":"include"}`) {
			included = append(included, e)
		} else {
			matches = append(matches, e)
		}
	}
	slices.Sort(included)
	return append(matches, slices.Compact(included)...)
}

// serversOnOneDatabase returns two servers on one new database that seal
// their paging links with one key, so that either answers the other's
// next links: on PostgreSQL two processes' worth; on bbolt, whose file
// one process holds, the same server twice.
func serversOnOneDatabase(t *testing.T) (a, b *testServer) {
	t.Helper()
	key, err := secrets.NewCipher(strings.Repeat("ef", 32))
	if err != nil {
		t.Fatal(err)
	}
	dsn := storetest.DSN(t)
	a = newServerOn(t, dsn, func(c *fhir.Config) { c.Cursors = key })
	b = a
	if storetest.Backend() == storetest.Postgres {
		b = newServerOn(t, dsn, func(c *fhir.Config) { c.Cursors = key })
	}
	return a, b
}
