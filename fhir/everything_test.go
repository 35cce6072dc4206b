package fhir_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/mdm"
)

// everythingServer is a test server with $everything enabled.
func everythingServer(t *testing.T, opts fhir.EverythingOptions) *testServer {
	t.Helper()
	ts := newServer(t, func(c *fhir.Config) { c.MaxBody = 32 << 20 })
	ts.fhir.EnableEverything(opts)
	return ts
}

// loadSynthea posts a Synthea patient bundle as a transaction and returns
// the Patient's id and "Type/id" of everything the bundle created.
func loadSynthea(t *testing.T, ts *testServer, name string) (string, []string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(testdata, "synthea", name+"*.json"))
	if len(files) != 1 {
		t.Fatalf("synthea bundle %s: %v", name, files)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	r := ts.do(http.MethodPost, "/", raw).want(t, http.StatusOK)
	var patient string
	var created []string
	for _, e := range r.JSON["entry"].([]any) {
		loc := e.(map[string]any)["response"].(map[string]any)["location"].(string)
		loc = strings.TrimPrefix(loc, ts.URL+"/")
		ref := loc[:strings.Index(loc, "/_history/")]
		created = append(created, ref)
		if id, ok := strings.CutPrefix(ref, "Patient/"); ok {
			patient = id
		}
	}
	sort.Strings(created)
	return patient, created
}

// page is one $everything Bundle, decoded.
type page struct {
	total   int
	entries []pageEntry
	links   map[string]string
}

type pageEntry struct {
	ref, mode, fullURL string
	resource           map[string]any
}

func readPage(t *testing.T, r *result) page {
	t.Helper()
	if r.JSON["resourceType"] != "Bundle" || r.JSON["type"] != "searchset" {
		t.Fatalf("not a searchset: %.300s", r.Body)
	}
	p := page{links: map[string]string{}}
	p.total = -1 // none given
	if t, ok := r.JSON["total"].(json.Number); ok {
		n, _ := t.Int64()
		p.total = int(n)
	}
	for _, l := range r.JSON["link"].([]any) {
		lm := l.(map[string]any)
		p.links[lm["relation"].(string)] = lm["url"].(string)
	}
	entries, _ := r.JSON["entry"].([]any)
	for _, e := range entries {
		em := e.(map[string]any)
		res := em["resource"].(map[string]any)
		pe := pageEntry{mode: em["search"].(map[string]any)["mode"].(string), resource: res}
		if pe.mode != "outcome" {
			pe.ref = res["resourceType"].(string) + "/" + res["id"].(string)
			pe.fullURL = em["fullUrl"].(string)
		}
		p.entries = append(p.entries, pe)
	}
	return p
}

// all follows next links from first and returns every entry, checking
// that no page is larger than count and the total never changes. (A page
// may be short when something listed was deleted since.)
func all(t *testing.T, ts *testServer, first string, count int, headers ...string) ([]pageEntry, int) {
	t.Helper()
	var out []pageEntry
	url, total, pages := first, -1, 0
	for url != "" {
		p := readPage(t, ts.do(http.MethodGet, url, nil, headers...).want(t, http.StatusOK))
		if total >= 0 && p.total != total {
			t.Fatalf("total changed from %d to %d between pages", total, p.total)
		}
		total = p.total
		url = p.links["next"]
		if len(p.entries) > count {
			t.Fatalf("page %d has %d entries, more than %d", pages, len(p.entries), count)
		}
		out = append(out, p.entries...)
		pages++
	}
	return out, total
}

// TestEverythingPagesAMembersRecord pages through the $everything of a
// Synthea member with about 200 resources, while a second member's data
// sits in the same store and new data is written between pages.
func TestEverythingPagesAMembersRecord(t *testing.T) {
	t.Parallel()
	ts := everythingServer(t, fhir.EverythingOptions{})
	patient, created := loadSynthea(t, ts, "Angelic_Mueller")
	other, otherCreated := loadSynthea(t, ts, "Asa_Hermiston")
	if len(created) < 150 {
		t.Fatalf("only %d resources in the bundle", len(created))
	}

	first := ts.do(http.MethodGet, "/Patient/"+patient+"/$everything?_count=25", nil).want(t, http.StatusOK)
	p1 := readPage(t, first)
	if p1.entries[0].ref != "Patient/"+patient || p1.entries[0].mode != "match" {
		t.Errorf("first entry %s (%s), want the Patient", p1.entries[0].ref, p1.entries[0].mode)
	}
	if p1.links["self"] != ts.URL+"/Patient/"+patient+"/$everything?_count=25" {
		t.Errorf("self link %s", p1.links["self"])
	}
	for _, rel := range []string{"first", "next", "last"} {
		if !strings.Contains(p1.links[rel], "/Patient/"+patient+"/$everything?_cursor=") {
			t.Errorf("%s link %q", rel, p1.links[rel])
		}
	}
	// Others write meanwhile: a new Observation for the member, an update
	// of one already listed, a deletion of one on a later page.
	ts.do(http.MethodPost, "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"new"},"subject":{"reference":"Patient/`+patient+`"}}`).want(t, http.StatusCreated)

	entries, total := all(t, ts, p1.links["first"], 25)
	if total != len(created) {
		t.Errorf("total %d, want the %d resources the bundle created", total, len(created))
	}
	var refs []string
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.ref] {
			t.Errorf("%s appears twice", e.ref)
		}
		seen[e.ref] = true
		refs = append(refs, e.ref)
		typ := strings.Split(e.ref, "/")[0]
		isShared := typ == "Organization" || typ == "Practitioner"
		if isShared != (e.mode == "include") {
			t.Errorf("%s has search mode %s", e.ref, e.mode)
		}
		if e.fullURL != ts.URL+"/"+e.ref {
			t.Errorf("fullUrl %s", e.fullURL)
		}
	}
	sort.Strings(refs)
	if !slices.Equal(refs, created) {
		t.Errorf("$everything gave %d resources, the bundle created %d; missing %v, extra %v",
			len(refs), len(created), minus(created, refs), minus(refs, created))
	}
	for _, r := range otherCreated {
		if seen[r] && !strings.HasPrefix(r, "Organization/") && !strings.HasPrefix(r, "Practitioner/") {
			t.Errorf("the other member's %s is in the record", r)
		}
	}
	if seen["Patient/"+other] {
		t.Error("the other Patient is in the record")
	}

	// A page cursor is only good for its own request.
	next := p1.links["next"]
	ts.do(http.MethodGet, strings.Replace(next, "/Patient/"+patient+"/", "/Patient/"+other+"/", 1), nil).want(t, http.StatusGone)
	ts.do(http.MethodGet, strings.Replace(next, "_cursor=", "_cursor=0", 1), nil).want(t, http.StatusGone)
	ts.do(http.MethodGet, "/Patient/"+patient+"/$everything?_cursor=nonsense", nil).want(t, http.StatusBadRequest)
	// A fresh request sees the new Observation.
	fresh, total2 := all(t, ts, "/Patient/"+patient+"/$everything?_count=1000", 1000)
	if total2 != len(created)+1 || len(fresh) != total2 {
		t.Errorf("after a write: total %d with %d entries, want %d", total2, len(fresh), len(created)+1)
	}
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// TestEverythingWhileWriting: later pages are exactly the continuation of
// the first, whatever is created, updated or deleted meanwhile.
func TestEverythingWhileWriting(t *testing.T) {
	t.Parallel()
	ts := everythingServer(t, fhir.EverythingOptions{})
	ts.do(http.MethodPut, "/Patient/m1", `{"resourceType":"Patient","id":"m1"}`).want(t, http.StatusCreated)
	var obs []string
	for range 30 {
		r := ts.do(http.MethodPost, "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`).want(t, http.StatusCreated)
		obs = append(obs, "Observation/"+r.JSON["id"].(string))
	}
	first := readPage(t, ts.do(http.MethodGet, "/Patient/m1/$everything?_count=10", nil).want(t, http.StatusOK))
	for range 5 {
		ts.do(http.MethodPost, "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"later"},"subject":{"reference":"Patient/m1"}}`).want(t, http.StatusCreated)
	}
	deleted := obs[25]
	ts.do(http.MethodDelete, "/"+deleted, nil).want(t, http.StatusOK)
	entries, total := all(t, ts, first.links["first"], 10)
	if total != 31 {
		t.Errorf("total %d, want 31", total)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.ref)
	}
	want := append([]string{"Patient/m1"}, slices.DeleteFunc(slices.Clone(obs), func(s string) bool { return s == deleted })...)
	if !slices.Equal(got, want) {
		t.Errorf("pages gave %v, want %v", got, want)
	}
}

// TestEverythingParameters: _type, _since, _count, POST with Parameters,
// and the refusals.
func TestEverythingParameters(t *testing.T) {
	t.Parallel()
	ts := everythingServer(t, fhir.EverythingOptions{})
	loadFixtures(t, ts, []string{
		`{"resourceType":"Organization","id":"org1","name":"Clinic"}`,
		`{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Who"}]}`,
		`{"resourceType":"Patient","id":"m1","managingOrganization":{"reference":"Organization/org1"}}`,
		`{"resourceType":"Patient","id":"m2"}`,
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"},"performer":[{"reference":"Practitioner/dr1"}]}`,
		`{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/m1"},"asserter":{"reference":"Patient/m2"}}`,
		`{"resourceType":"Encounter","id":"e2","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/m2"},"serviceProvider":{"reference":"Organization/org1"}}`,
	})
	time.Sleep(2 * time.Millisecond)
	cut := time.Now().UTC()
	time.Sleep(2 * time.Millisecond)
	loadFixtures(t, ts, []string{
		`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"y"},"subject":{"reference":"Patient/m1"}}`,
	})
	ids := func(r *result) []string {
		var out []string
		for _, e := range readPage(t, r).entries {
			out = append(out, e.ref+":"+e.mode)
		}
		return out
	}
	for _, c := range []struct {
		method, query, body string
		want                []string
	}{
		{"GET", "", "", []string{"Patient/m1:match", "Condition/c1:match", "Observation/o1:match", "Observation/o2:match", "Organization/org1:include", "Practitioner/dr1:include"}},
		{"GET", "?_type=Observation", "", []string{"Observation/o1:match", "Observation/o2:match"}},
		{"GET", "?_type=Patient,Practitioner&_type=Condition", "", []string{"Patient/m1:match", "Condition/c1:match", "Practitioner/dr1:include"}},
		{"GET", "?_since=" + cut.Format(time.RFC3339Nano), "", []string{"Observation/o2:match"}},
		{"POST", "", `{"resourceType":"Parameters","parameter":[{"name":"_type","valueCode":"Observation"},{"name":"_count","valueInteger":1}]}`, []string{"Observation/o1:match"}},
		{"POST", "?_type=Condition", "", []string{"Condition/c1:match"}},
	} {
		r := ts.do(c.method, "/Patient/m1/$everything"+c.query, nilIfEmpty(c.body)).want(t, http.StatusOK)
		if got := ids(r); !slices.Equal(got, c.want) {
			t.Errorf("%s %s %s: %v, want %v", c.method, c.query, c.body, got, c.want)
		}
	}
	// m2's Condition asserted about m1 is not in m1's record, though it
	// names m1... and the reverse: c1 names m2 as asserter, so it is in
	// m2's compartment too, which is the compartment's definition.
	r := ts.do(http.MethodGet, "/Patient/m2/$everything", nil).want(t, http.StatusOK)
	if got := ids(r); !slices.Equal(got, []string{"Patient/m2:match", "Condition/c1:match", "Encounter/e2:match", "Organization/org1:include"}) {
		t.Errorf("m2: %v", got)
	}

	for _, c := range []struct {
		query, body string
		status      int
		say         string
	}{
		{"?_count=0", "", 400, "_count"},
		{"?_count=many", "", 400, "_count"},
		{"?_since=yesterday", "", 400, "_since"},
		{"?_type=Observation,Nonsense", "", 400, "Nonsense"},
		{"?start=2020-01-01", "", 400, "start and end"},
		{"?foo=bar", "", 400, "foo"},
		{"", `{"resourceType":"Parameters","parameter":[{"name":"_type"}]}`, 400, "value[x]"},
		{"", `{"resourceType":"Patient"}`, 400, "Patient"},
		{"", `{not json`, 400, "not valid JSON"},
	} {
		method := http.MethodGet
		if c.body != "" {
			method = http.MethodPost
		}
		r := ts.do(method, "/Patient/m1/$everything"+c.query, nilIfEmpty(c.body))
		if r.Status != c.status || !strings.Contains(r.outcome(t), c.say) {
			t.Errorf("%s %s: %d %.300s, want %d saying %q", c.query, c.body, r.Status, r.Body, c.status, c.say)
		}
	}
	// Lenient handling ignores what it cannot do, and says so.
	r = ts.do(http.MethodGet, "/Patient/m1/$everything?start=2020&_type=Observation", nil, "Prefer", "handling=lenient").want(t, http.StatusOK)
	p := readPage(t, r)
	last := p.entries[len(p.entries)-1]
	if last.mode != "outcome" || !strings.Contains(string(r.Body), "ignored: start") || p.total != 2 {
		t.Errorf("lenient: %.400s", r.Body)
	}
	ts.do(http.MethodGet, "/Patient/nobody/$everything", nil).want(t, http.StatusNotFound).outcome(t)
	ts.do(http.MethodGet, "/Patient/bad$id/$everything", nil).want(t, http.StatusNotFound)
	ts.do(http.MethodDelete, "/Patient/m1/$everything", nil).want(t, http.StatusMethodNotAllowed)
	ts.do(http.MethodDelete, "/Patient/m2", nil).want(t, http.StatusOK)
	ts.do(http.MethodGet, "/Patient/m2/$everything", nil).want(t, http.StatusGone)

	// The CapabilityStatement lists the operation.
	cs := ts.do(http.MethodGet, "/metadata", nil).want(t, http.StatusOK)
	if !strings.Contains(string(cs.Body), `{"name":"everything","definition":"`+fhir.EverythingDefinition+`"`) {
		t.Error("$everything is not in the CapabilityStatement")
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// TestEverythingTypeLevel gathers every member's data once each, patient
// by patient in id order and lazily (each page reads only the records it
// serves, so no total is given for several pages), a resource in two
// compartments once (with the first patient), the resources a record
// refers to with each record; and is refused to tokens bound to one
// member.
func TestEverythingTypeLevel(t *testing.T) {
	t.Parallel()
	ts := everythingServer(t, fhir.EverythingOptions{})
	withTestAccess(ts.fhir)
	ts.http.Config.Handler.(interface {
		Mount(string, http.Handler)
	}).Mount("/member", ts.fhir.Handler())
	loadFixtures(t, ts, []string{
		`{"resourceType":"Practitioner","id":"dr1"}`,
		`{"resourceType":"Patient","id":"m1","generalPractitioner":[{"reference":"Practitioner/dr1"}]}`,
		`{"resourceType":"Patient","id":"m2","generalPractitioner":[{"reference":"Practitioner/dr1"}]}`,
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m2"}}`,
		`{"resourceType":"Condition","id":"both","subject":{"reference":"Patient/m1"},"asserter":{"reference":"Patient/m2"}}`,
	})
	entries, total := all(t, ts, "/Patient/$everything?_count=2", 2)
	var got []string
	for _, e := range entries {
		got = append(got, e.ref)
	}
	want := []string{"Patient/m1", "Condition/both", "Observation/o1", "Practitioner/dr1", "Patient/m2", "Observation/o2", "Practitioner/dr1"}
	if total != -1 || !slices.Equal(got, want) {
		t.Errorf("type level: %d %v, want %v", total, got, want)
	}
	member := ts.http.URL + "/member"
	ts.do(http.MethodGet, member+"/Patient/$everything", nil, "X-Test-Patient", "m1").want(t, http.StatusForbidden).outcome(t)
	// Type limits apply to what is gathered, and Patient must be readable.
	r := ts.do(http.MethodGet, member+"/Patient/$everything", nil, "X-Test-Read", "Patient,Observation").want(t, http.StatusOK)
	if got := refsOf(readPage(t, r)); !slices.Equal(got, []string{"Patient/m1", "Observation/o1", "Patient/m2", "Observation/o2"}) {
		t.Errorf("type-limited: %v", got)
	}
	ts.do(http.MethodGet, member+"/Patient/$everything", nil, "X-Test-Read", "Observation").want(t, http.StatusForbidden)
}

func refsOf(p page) []string {
	var out []string
	for _, e := range p.entries {
		out = append(out, e.ref)
	}
	return out
}

// TestEverythingMemberAccess: a member-scoped request reaches only its own
// record, and a page cursor does not carry one member's record to another.
func TestEverythingMemberAccess(t *testing.T) {
	t.Parallel()
	ts := everythingServer(t, fhir.EverythingOptions{})
	withTestAccess(ts.fhir)
	ts.http.Config.Handler.(interface {
		Mount(string, http.Handler)
	}).Mount("/member", ts.fhir.Handler())
	loadFixtures(t, ts, []string{
		`{"resourceType":"Patient","id":"m1"}`,
		`{"resourceType":"Patient","id":"m2"}`,
	})
	for range 12 {
		ts.do(http.MethodPost, "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`).want(t, http.StatusCreated)
	}
	member := ts.http.URL + "/member"
	ts.do(http.MethodGet, member+"/Patient/m2/$everything", nil, "X-Test-Patient", "m1").want(t, http.StatusNotFound)
	r := ts.do(http.MethodGet, member+"/Patient/m1/$everything?_count=5", nil, "X-Test-Patient", "m1").want(t, http.StatusOK)
	p := readPage(t, r)
	if p.total != 13 {
		t.Errorf("total %d", p.total)
	}
	next := strings.Replace(p.links["next"], ts.URL, member, 1)
	ts.do(http.MethodGet, next, nil, "X-Test-Patient", "m2").want(t, http.StatusForbidden)
	ts.do(http.MethodGet, next, nil).want(t, http.StatusForbidden) // not even unrestricted
	ts.do(http.MethodGet, next, nil, "X-Test-Patient", "m1").want(t, http.StatusOK)
	// A member whose token may not read Patient gets nothing.
	ts.do(http.MethodGet, member+"/Patient/m1/$everything", nil, "X-Test-Patient", "m1", "X-Test-Read", "Observation").want(t, http.StatusForbidden)
}

// TestEverythingWithholds: what the Withhold hook reports is left out, on
// the first page and on later ones, and its references are not followed.
func TestEverythingWithholds(t *testing.T) {
	t.Parallel()
	var calls []string
	ts := everythingServer(t, fhir.EverythingOptions{Withhold: func(tx *store.Tx, patient string) (func(*store.Version) bool, error) {
		calls = append(calls, patient)
		if patient != "m1" {
			return nil, nil
		}
		return func(v *store.Version) bool { return strings.Contains(string(v.JSON), `"code":"PSY"`) }, nil
	}})
	psy := `"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]},`
	loadFixtures(t, ts, []string{
		`{"resourceType":"Practitioner","id":"psychiatrist"}`,
		`{"resourceType":"Patient","id":"m1"}`,
		`{"resourceType":"Patient","id":"m2"}`,
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Observation","id":"o2",` + psy + `"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"},"performer":[{"reference":"Practitioner/psychiatrist"}]}`,
		`{"resourceType":"Observation","id":"o3",` + psy + `"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m2"}}`,
		`{"resourceType":"Observation","id":"o4","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
	})
	got := refsOf(readPage(t, ts.do(http.MethodGet, "/Patient/m1/$everything", nil).want(t, http.StatusOK)))
	if !slices.Equal(got, []string{"Patient/m1", "Observation/o1", "Observation/o4"}) {
		t.Errorf("m1: %v", got)
	}
	if got := refsOf(readPage(t, ts.do(http.MethodGet, "/Patient/m2/$everything", nil).want(t, http.StatusOK))); !slices.Equal(got, []string{"Patient/m2", "Observation/o3"}) {
		t.Errorf("m2: %v", got)
	}
	// A label added after the first page is honoured on the next.
	first := readPage(t, ts.do(http.MethodGet, "/Patient/m1/$everything?_count=2", nil).want(t, http.StatusOK))
	ts.do(http.MethodPut, "/Observation/o4", `{"resourceType":"Observation","id":"o4",`+psy+`"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`).want(t, http.StatusOK)
	if got := refsOf(readPage(t, ts.do(http.MethodGet, first.links["next"], nil).want(t, http.StatusOK))); len(got) != 0 {
		t.Errorf("second page after o4 was labelled: %v", got)
	}
	if !slices.Contains(calls, "m1") {
		t.Error("Withhold was never asked")
	}
}

// TestEverythingFollowsMDMLinks: with MDM links followed
// (SetPatientLinks(mdm.Linked)), Patient/{id}/$everything is the member's
// record with the linked Patients' compartments, paged like any other;
// _mdm=false (HAPI FHIR's parameter) keeps to the patient's own; the
// member's consent (Withhold) covers the linked data too. Without links,
// :mdm and _mdm=true are refused rather than ignored.
func TestEverythingFollowsMDMLinks(t *testing.T) {
	t.Parallel()
	ts := everythingServer(t, fhir.EverythingOptions{Withhold: func(tx *store.Tx, patient string) (func(*store.Version) bool, error) {
		if patient != "m1" {
			return nil, nil
		}
		return func(v *store.Version) bool { return strings.Contains(string(v.JSON), `"code":"PSY"`) }, nil
	}})
	psy := `"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]},`
	loadFixtures(t, ts, []string{
		`{"resourceType":"Patient","id":"m1","link":[{"other":{"reference":"Patient/i1"},"type":"seealso"}]}`,
		`{"resourceType":"Patient","id":"i1","link":[{"other":{"reference":"Patient/m1"},"type":"seealso"}]}`,
		`{"resourceType":"Patient","id":"m2"}`,
		`{"resourceType":"Observation","id":"o-m1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Observation","id":"o-i1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/i1"}}`,
		`{"resourceType":"Observation","id":"o-i1-psy",` + psy + `"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/i1"}}`,
		`{"resourceType":"Condition","id":"c-i1","subject":{"reference":"Patient/i1"}}`,
		`{"resourceType":"Observation","id":"o-m2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m2"}}`,
	})
	// Not following links: the patient's own compartment (which holds the
	// linked Patient itself, by the R4 CompartmentDefinition's link).
	own := []string{"Patient/m1", "Patient/i1", "Observation/o-m1"}
	if got := refsOf(readPage(t, ts.do(http.MethodGet, "/Patient/m1/$everything", nil).want(t, http.StatusOK))); !slices.Equal(got, own) {
		t.Errorf("without links: %v", got)
	}
	ts.do(http.MethodGet, "/Observation?subject:mdm=Patient/m1", nil).want(t, http.StatusBadRequest).outcome(t)
	ts.do(http.MethodGet, "/Patient/m1/$everything?_mdm=true", nil).want(t, http.StatusBadRequest).outcome(t)
	ts.do(http.MethodGet, "/Patient/m1/$everything?_mdm=false", nil).want(t, http.StatusOK)

	ts.fhir.SetPatientLinks(mdm.Linked)
	record := []string{"Patient/m1", "Patient/i1", "Condition/c-i1", "Observation/o-m1", "Observation/o-i1"}
	for _, q := range []string{"", "?_mdm=true"} {
		if got := refsOf(readPage(t, ts.do(http.MethodGet, "/Patient/m1/$everything"+q, nil).want(t, http.StatusOK))); !slices.Equal(got, record) {
			t.Errorf("$everything%s: %v, want %v", q, got, record)
		}
	}
	entries, total := all(t, ts, "/Patient/m1/$everything?_count=2", 2)
	var paged []string
	for _, e := range entries {
		paged = append(paged, e.ref)
	}
	if total != len(record) || !slices.Equal(paged, record) {
		t.Errorf("paged: %d %v", total, paged)
	}
	p := readPage(t, ts.do(http.MethodGet, "/Patient/m1/$everything?_mdm=false&_count=2", nil).want(t, http.StatusOK))
	if p.total != len(own) || !strings.Contains(p.links["self"], "_mdm=false") {
		t.Errorf("_mdm=false: total %d, self %s", p.total, p.links["self"])
	}
	// The linked record's own $everything is not under m1's consent.
	if got := refsOf(readPage(t, ts.do(http.MethodGet, "/Patient/i1/$everything?_mdm=false&_type=Observation", nil).want(t, http.StatusOK))); !slices.Equal(got, []string{"Observation/o-i1", "Observation/o-i1-psy"}) {
		t.Errorf("Patient/i1/$everything?_mdm=false: %v", got)
	}
	for _, bad := range []string{"_mdm=maybe", "_mdm"} {
		ts.do(http.MethodGet, "/Patient/m1/$everything?"+bad, nil).want(t, http.StatusBadRequest).outcome(t)
	}
	ts.do(http.MethodGet, "/Patient/$everything?_mdm=true", nil).want(t, http.StatusBadRequest).outcome(t)
	// A Parameters body may carry _mdm too.
	body := `{"resourceType":"Parameters","parameter":[{"name":"_mdm","valueBoolean":false}]}`
	if got := refsOf(readPage(t, ts.do(http.MethodPost, "/Patient/m1/$everything", body).want(t, http.StatusOK))); !slices.Equal(got, own) {
		t.Errorf("POST _mdm=false: %v", got)
	}
}
