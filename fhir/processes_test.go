package fhir_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// another is a second process's FHIR server on ts's database, behind the
// same base URL (a load balancer sends each request to either), with the
// paging key cursors.
func (ts *testServer) another(t *testing.T, cursors *secrets.Cipher) *testServer {
	t.Helper()
	srv := fhir.New(ts.fhir.Store(), fhir.Config{BaseURL: ts.URL, MaxBody: 1 << 20, Cursors: cursors})
	srv.EnableEverything(fhir.EverythingOptions{})
	h := httptest.NewServer(http.StripPrefix("/fhir", srv.Handler()))
	t.Cleanup(h.Close)
	return &testServer{t: t, fhir: srv, http: h, URL: h.URL + "/fhir"}
}

// via rewrites a link of the shared base URL to reach this process.
func (ts *testServer) via(base, link string) string {
	return ts.URL + strings.TrimPrefix(link, base)
}

// TestPagingLinksAnsweredByAnyProcess: of several processes on one
// database with one -secret-key, any answers the paging links another
// gave (a search's next link carries the search, sealed; an
// $everything's result set is kept in the database), and each page is the
// right one: paging alternately through two processes serves every match
// once, in order. A process with another key answers 410: the link is
// not one of its own.
func TestPagingLinksAnsweredByAnyProcess(t *testing.T) {
	key, err := secrets.NewCipher(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	a := newServer(t, func(c *fhir.Config) { c.Cursors = key })
	a.fhir.EnableEverything(fhir.EverythingOptions{})
	b := a.another(t, key)
	a.do(http.MethodPut, "/Patient/p1", `{"resourceType":"Patient","id":"p1"}`).want(t, http.StatusCreated)
	var want []string
	for i := range 23 {
		id := fmt.Sprintf("o%02d", i)
		a.do(http.MethodPut, "/Observation/"+id, `{"resourceType":"Observation","id":"`+id+`","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`).
			want(t, http.StatusCreated)
		want = append(want, "Observation/"+id)
	}

	for _, c := range []struct{ name, first string }{
		{"search", "/Observation?subject=Patient/p1&_sort=_id&_count=5"},
		{"instance $everything", "/Patient/p1/$everything?_type=Observation&_count=5"},
		{"type-level $everything", "/Patient/$everything?_type=Observation&_count=5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := a.do(http.MethodGet, c.first, nil).want(t, http.StatusOK)
			got := bundleIDs(r.JSON)
			servers := []*testServer{b, a}
			for i := 0; link(r.JSON, "next") != ""; i++ {
				next := link(r.JSON, "next")
				r = servers[i%2].do(http.MethodGet, servers[i%2].via(a.URL, next), nil).want(t, http.StatusOK)
				got = append(got, bundleIDs(r.JSON)...)
			}
			var obs []string
			for _, id := range got {
				if strings.HasPrefix(id, "Observation/") {
					obs = append(obs, id)
				}
			}
			slices.Sort(obs)
			if !slices.Equal(obs, want) || len(obs) != len(want) {
				t.Errorf("paging through both processes served %v, want %v", obs, want)
			}
		})
	}

	other, err := secrets.NewCipher(strings.Repeat("cd", 32))
	if err != nil {
		t.Fatal(err)
	}
	o := a.another(t, other)
	for _, first := range []string{"/Observation?subject=Patient/p1&_count=5", "/Patient/$everything?_type=Observation&_count=5"} {
		r := a.do(http.MethodGet, first, nil).want(t, http.StatusOK)
		g := o.do(http.MethodGet, o.via(a.URL, link(r.JSON, "next")), nil).want(t, http.StatusGone)
		if d := fmt.Sprint(g.JSON["issue"]); !strings.Contains(d, "-secret-key") || strings.Contains(d, "expired") {
			t.Errorf("%s: the next link answered by a process with another key says %s, want the key named as the cause", first, d)
		}
	}
	// A link to a result set kept in the database that is not there (as
	// once it expired) still says it expired: any process's key opens it.
	r := a.do(http.MethodGet, "/Patient/p1/$everything?_type=Observation&_count=5", nil).want(t, http.StatusOK)
	next := link(r.JSON, "next")
	g := a.do(http.MethodGet, strings.Replace(a.via(a.URL, next), "_cursor=k", "_cursor=k0", 1), nil).want(t, http.StatusGone)
	if d := fmt.Sprint(g.JSON["issue"]); !strings.Contains(d, "expired") {
		t.Errorf("a kept result set that is gone says %s, want expired", d)
	}
}
