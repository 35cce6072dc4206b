package fhir_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/authz"
)

// withTestAccess stands in for token middleware: X-Test-Patient confines
// the request to one member; X-Test-Read limits readable types.
func withTestAccess(s *fhir.Server) {
	s.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, types := r.Header.Get("X-Test-Patient"), r.Header.Get("X-Test-Read")
			if p == "" && types == "" {
				next.ServeHTTP(w, r)
				return
			}
			a := &fhir.Access{Patient: p}
			if types != "" {
				allowed := strings.Split(types, ",")
				a.Grant = func(t string, _ authz.Perm) bool { return slices.Contains(allowed, t) }
			}
			next.ServeHTTP(w, r.WithContext(fhir.WithAccess(r.Context(), a)))
		})
	})
}

func TestMemberScopedAccess(t *testing.T) {
	ts := newServer(t)
	withTestAccess(ts.fhir)
	ts.http.Config.Handler.(interface {
		Mount(string, http.Handler)
	}).Mount("/member", ts.fhir.Handler())
	loadFixtures(t, ts, searchFixtures)
	member := ts.http.URL + "/member"
	as := func(method, path string, body any) *result {
		return ts.do(method, member+path, body, "X-Test-Patient", "p1")
	}
	as("GET", "/Patient/p1", nil).want(t, 200)
	as("GET", "/Observation/o1", nil).want(t, 200)
	as("GET", "/Patient/p2", nil).want(t, 404).outcome(t)
	as("GET", "/Observation/o3", nil).want(t, 404)
	as("GET", "/Observation/o3/_history/1", nil).want(t, 404)

	for q, want := range map[string][]string{
		"/Patient":     {"Patient/p1"},
		"/Observation": {"Observation/o1", "Observation/o2"},
		"/Observation?code=http://loinc.org|8867-4": {"Observation/o1"},
		"/Patient?gender=male":                      {"Patient/p1"},
	} {
		r := as("GET", q, nil).want(t, 200)
		if got := bundleIDs(r.JSON); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", q, got, want)
		}
	}
	// Includes never reach outside the member's record; the Provenance
	// of the member's own Observation is theirs.
	r := as("GET", "/Observation?_include=Observation:subject&_revinclude=Provenance:target", nil).want(t, 200)
	if inc := includes(r.JSON); !slices.Equal(inc, []string{"Patient/p1", "Provenance/prov1"}) {
		t.Errorf("includes %v", inc)
	}
	// Writes outside the compartment are refused, inside allowed.
	as("POST", "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}`).want(t, 403).outcome(t)
	as("POST", "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`).want(t, 201)
	// Another member's resource answers as one that does not exist.
	gone := as("DELETE", "/Observation/o3", nil).want(t, 200)
	none := as("DELETE", "/Observation/o-none", nil).want(t, 200)
	if strings.ReplaceAll(string(gone.Body), "o3", "X") != strings.ReplaceAll(string(none.Body), "o-none", "X") {
		t.Errorf("delete of another's and of nothing differ: %s / %s", gone.Body, none.Body)
	}
	ts.do("GET", "/Observation/o3", nil).want(t, 200) // still there
	as("GET", "/Observation/_history", nil).want(t, 403)
	as("GET", "/_history", nil).want(t, 403)
	// A transaction cannot be used to step outside.
	as("POST", "/", `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Patient/p2"}}]}`).want(t, 404)

	// Resources that belong to no patient are readable, not writable.
	ts.do("PUT", "/Practitioner/dr1", `{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Who"}]}`).want(t, 201)
	as("GET", "/Practitioner/dr1", nil).want(t, 200)
	if got := bundleIDs(as("GET", "/Practitioner?name=who", nil).want(t, 200).JSON); !slices.Equal(got, []string{"Practitioner/dr1"}) {
		t.Errorf("member search of Practitioner: %v", got)
	}
	as("PUT", "/Practitioner/dr1", `{"resourceType":"Practitioner","id":"dr1"}`).want(t, 403)

	// Type limits.
	ro := ts.do("GET", member+"/Observation/o1", nil, "X-Test-Read", "Patient")
	ro.want(t, 403).outcome(t)
	ts.do("GET", member+"/Patient/p2", nil, "X-Test-Read", "Patient").want(t, 200)

	// A page cursor does not carry one member's results to another.
	for range 25 {
		ts.do("POST", "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`).want(t, 201)
	}
	pg := as("GET", "/Observation?_count=5", nil).want(t, 200)
	next := strings.Replace(link(pg.JSON, "next"), ts.URL, member, 1)
	ts.do("GET", next, nil, "X-Test-Patient", "p2").want(t, 403)
	ts.do("GET", next, nil, "X-Test-Patient", "p1").want(t, 200)
}
