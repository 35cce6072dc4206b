package fhir_test

import (
	"encoding/json"
	"fmt"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
)

var testdata = td.Dir

// stripServerFields removes what the server sets: id and meta.versionId /
// meta.lastUpdated (and meta itself when nothing else is left in it).
func stripServerFields(m map[string]any) {
	delete(m, "id")
	if meta, ok := m["meta"].(map[string]any); ok {
		delete(meta, "versionId")
		delete(meta, "lastUpdated")
		if len(meta) == 0 {
			delete(m, "meta")
		}
	}
}

// TestExamplesRoundTrip stores every HL7 US Core and PDex example and reads
// it back: the JSON must be the same apart from id and meta.
func TestExamplesRoundTrip(t *testing.T) {
	ts := newServer(t, func(c *fhir.Config) { c.MaxBody = 8 << 20 })
	var files []string
	for _, dir := range []string{"us-core", "pdex"} {
		fs, _ := filepath.Glob(filepath.Join(testdata, dir, "*.json"))
		files = append(files, fs...)
	}
	if len(files) < 150 {
		t.Fatalf("found only %d example files", len(files))
	}
	for _, f := range files {
		want := readJSON(t, f)
		raw, _ := os.ReadFile(f)
		typ := want["resourceType"].(string)
		id, _ := want["id"].(string)
		var created *result
		if id != "" {
			created = ts.do(http.MethodPut, "/"+typ+"/"+id, raw)
		} else {
			created = ts.do(http.MethodPost, "/"+typ, raw)
		}
		if created.Status != http.StatusCreated {
			t.Errorf("%s: status %d: %.400s", filepath.Base(f), created.Status, created.Body)
			continue
		}
		got := ts.do(http.MethodGet, "/"+typ+"/"+created.JSON["id"].(string), nil).want(t, http.StatusOK).JSON
		stripServerFields(want)
		stripServerFields(got)
		if !reflect.DeepEqual(want, got) {
			w, _ := json.Marshal(want)
			g, _ := json.Marshal(got)
			t.Errorf("%s: read back differs\nsent: %.800s\ngot:  %.800s", filepath.Base(f), w, g)
		}
	}
}

func TestCreateReadUpdateDelete(t *testing.T) {
	ts := newServer(t)
	pat := `{"resourceType":"Patient","id":"ignored","active":true,"name":[{"family":"Doe","given":["Jane"]}],"birthDate":"1980-02-03","_birthDate":{"extension":[{"url":"http://example.org/x","valueString":"y"}]}}`
	c := ts.do(http.MethodPost, "/Patient", pat).want(t, http.StatusCreated)
	id := c.JSON["id"].(string)
	if id == "ignored" || id == "" {
		t.Fatalf("create kept the client id %q", id)
	}
	if got, want := c.Header.Get("Location"), ts.URL+"/Patient/"+id+"/_history/1"; got != want {
		t.Errorf("Location %q, want %q", got, want)
	}
	if c.Header.Get("ETag") != `W/"1"` || c.Header.Get("Last-Modified") == "" {
		t.Errorf("ETag %q Last-Modified %q", c.Header.Get("ETag"), c.Header.Get("Last-Modified"))
	}
	meta := c.JSON["meta"].(map[string]any)
	if meta["versionId"] != "1" || meta["lastUpdated"] == "" {
		t.Errorf("meta %v", meta)
	}

	r := ts.do(http.MethodGet, "/Patient/"+id, nil).want(t, http.StatusOK)
	if r.JSON["_birthDate"] == nil {
		t.Error("primitive extension _birthDate was dropped")
	}

	upd := strings.Replace(pat, `"ignored"`, `"`+id+`"`, 1)
	upd = strings.Replace(upd, `"Jane"`, `"Janet"`, 1)
	u := ts.do(http.MethodPut, "/Patient/"+id, upd, "If-Match", `W/"1"`).want(t, http.StatusOK)
	if u.Header.Get("ETag") != `W/"2"` {
		t.Errorf("ETag after update %q", u.Header.Get("ETag"))
	}
	// A stale If-Match loses nothing and says why.
	ts.do(http.MethodPut, "/Patient/"+id, upd, "If-Match", `W/"1"`).want(t, http.StatusPreconditionFailed).outcome(t)
	ts.do(http.MethodGet, "/Patient/"+id+"/_history/1", nil).want(t, http.StatusOK)
	v2 := ts.do(http.MethodGet, "/Patient/"+id+"/_history/2", nil).want(t, http.StatusOK)
	if !strings.Contains(string(v2.Body), "Janet") {
		t.Errorf("version 2 is %s", v2.Body)
	}
	ts.do(http.MethodGet, "/Patient/"+id+"/_history/3", nil).want(t, http.StatusNotFound).outcome(t)

	// Prefer: return=minimal and OperationOutcome.
	m := ts.do(http.MethodPut, "/Patient/"+id, upd, "Prefer", "return=minimal").want(t, http.StatusOK)
	if len(m.Body) != 0 || m.Header.Get("ETag") != `W/"3"` {
		t.Errorf("minimal: body %q etag %q", m.Body, m.Header.Get("ETag"))
	}
	o := ts.do(http.MethodPut, "/Patient/"+id, upd, "Prefer", "return=OperationOutcome").want(t, http.StatusOK)
	o.outcome(t)

	ts.do(http.MethodDelete, "/Patient/"+id, nil).want(t, http.StatusOK)
	g := ts.do(http.MethodGet, "/Patient/"+id, nil).want(t, http.StatusGone)
	g.outcome(t)
	if g.Header.Get("ETag") != `W/"5"` {
		t.Errorf("410 ETag %q", g.Header.Get("ETag"))
	}
	ts.do(http.MethodDelete, "/Patient/"+id, nil).want(t, http.StatusOK) // idempotent

	h := ts.do(http.MethodGet, "/Patient/"+id+"/_history", nil).want(t, http.StatusOK)
	entries := h.JSON["entry"].([]any)
	if len(entries) != 5 || h.JSON["total"] != json.Number("5") {
		t.Fatalf("history has %d entries, total %v", len(entries), h.JSON["total"])
	}
	first := entries[0].(map[string]any)["request"].(map[string]any)
	last := entries[4].(map[string]any)["request"].(map[string]any)
	if first["method"] != "DELETE" || last["method"] != "POST" {
		t.Errorf("history order: first %v last %v", first, last)
	}

	// Update can create with the client's id; it comes back after deletion too.
	ts.do(http.MethodPut, "/Patient/client-1", `{"resourceType":"Patient","id":"client-1"}`).want(t, http.StatusCreated)
	ts.do(http.MethodPut, "/Patient/"+id, upd).want(t, http.StatusCreated)
}

func TestConditionalInteractions(t *testing.T) {
	ts := newServer(t)
	p := `{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"42"}]}`
	a := ts.do(http.MethodPost, "/Patient", p, "If-None-Exist", "identifier=urn:mrn|42").want(t, http.StatusCreated)
	b := ts.do(http.MethodPost, "/Patient", p, "If-None-Exist", "identifier=urn:mrn|42").want(t, http.StatusOK)
	if a.JSON["id"] != b.JSON["id"] {
		t.Fatalf("conditional create made a second resource")
	}
	// Conditional update: matches one, updates it.
	u := ts.do(http.MethodPut, "/Patient?identifier=urn:mrn|42", `{"resourceType":"Patient","active":true,"identifier":[{"system":"urn:mrn","value":"42"}]}`).want(t, http.StatusOK)
	if u.JSON["id"] != a.JSON["id"] || u.JSON["meta"].(map[string]any)["versionId"] != "2" {
		t.Fatalf("conditional update: %s", u.Body)
	}
	// No match: creates.
	ts.do(http.MethodPut, "/Patient?identifier=urn:mrn|43", `{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"43"}]}`).want(t, http.StatusCreated)
	// Several matches: 412, nothing changed.
	ts.do(http.MethodPost, "/Patient", `{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"42"}]}`).want(t, http.StatusCreated)
	ts.do(http.MethodPost, "/Patient", p, "If-None-Exist", "identifier=urn:mrn|42").want(t, http.StatusPreconditionFailed)
	ts.do(http.MethodPut, "/Patient?identifier=urn:mrn|42", p).want(t, http.StatusPreconditionFailed)
	ts.do(http.MethodDelete, "/Patient?identifier=urn:mrn|42", nil).want(t, http.StatusPreconditionFailed)
	// Conditional delete of one.
	ts.do(http.MethodDelete, "/Patient?identifier=urn:mrn|43", nil).want(t, http.StatusOK)
	s := ts.do(http.MethodGet, "/Patient?identifier=urn:mrn|43", nil).want(t, http.StatusOK)
	if s.JSON["total"] != json.Number("0") {
		t.Errorf("deleted patient still found: %s", s.Body)
	}
}

func TestErrorsAreOperationOutcomes(t *testing.T) {
	ts := newServer(t)
	big := `{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">` + strings.Repeat("x", 2<<20) + `</div>"}}`
	cases := []struct {
		name    string
		method  string
		path    string
		body    string
		headers []string
		status  int
		says    string
	}{
		{"malformed JSON", "POST", "/Patient", `{"resourceType":"Patient",`, nil, 400, "not valid JSON"},
		{"not an object", "POST", "/Patient", `[1,2]`, nil, 400, "not a JSON object"},
		{"trailing data", "POST", "/Patient", `{"resourceType":"Patient"} {}`, nil, 400, "after the JSON"},
		{"empty body", "POST", "/Patient", ``, nil, 400, "empty"},
		{"wrong type for URL", "POST", "/Patient", `{"resourceType":"Observation","status":"final","code":{"text":"x"}}`, nil, 400, "URL is for Patient"},
		{"no resourceType", "POST", "/Patient", `{"id":"x"}`, nil, 400, "no resourceType"},
		{"unknown property", "POST", "/Patient", `{"resourceType":"Patient","colour":"blue"}`, nil, 400, "colour"},
		{"wrong JSON kind", "POST", "/Patient", `{"resourceType":"Patient","birthDate":19800101}`, nil, 400, "birthDate"},
		{"bad date", "POST", "/Patient", `{"resourceType":"Patient","birthDate":"1980-13-01"}`, nil, 400, "birthDate"},
		{"bad code", "POST", "/Patient", `{"resourceType":"Patient","gender":"mail"}`, nil, 400, "gender"},
		{"unknown type", "GET", "/Spaceship/1", ``, nil, 404, "Spaceship"},
		{"unknown id", "GET", "/Patient/nope", ``, nil, 404, "nope"},
		{"bad id", "GET", "/Patient/no%20pe", ``, nil, 404, "not a valid FHIR id"},
		{"update without id", "PUT", "/Patient/abc", `{"resourceType":"Patient"}`, nil, 400, "id"},
		{"update id mismatch", "PUT", "/Patient/abc", `{"resourceType":"Patient","id":"xyz"}`, nil, 400, "does not match"},
		{"method not allowed", "PATCH", "/Patient/abc", `{}`, nil, 405, "PATCH"},
		{"XML wanted", "GET", "/Patient", ``, []string{"Accept", "application/fhir+xml"}, 406, "JSON"},
		{"_format xml", "GET", "/Patient?_format=xml", ``, nil, 406, "JSON"},
		{"XML sent", "POST", "/Patient", `<Patient/>`, []string{"Content-Type", "application/fhir+xml"}, 415, "application/fhir+json"},
		{"too large", "POST", "/Patient", big, nil, 413, "larger"},
		{"unknown search parameter", "GET", "/Patient?colour=blue", ``, nil, 400, "colour"},
		{"bad date search", "GET", "/Patient?birthdate=yesterday", ``, nil, 400, "birthdate"},
		{"unsupported modifier", "GET", "/Patient?name:below=x", ``, nil, 400, "below"},
		{"bad If-Match", "PUT", "/Patient/abc", `{"resourceType":"Patient","id":"abc"}`, []string{"If-Match", "yesterday"}, 400, "If-Match"},
		{"stale If-Match on new", "PUT", "/Patient/abc", `{"resourceType":"Patient","id":"abc"}`, []string{"If-Match", `W/"3"`}, 412, "version"},
		{"unknown operation", "POST", "/Patient/$frobnicate", `{}`, nil, 404, "frobnicate"},
		{"bundle of wrong type", "POST", "/", `{"resourceType":"Bundle","type":"collection"}`, nil, 400, "transaction or batch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ts.do(c.method, c.path, c.body, c.headers...)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %.300s", r.Status, c.status, r.Body)
			}
			text := r.outcome(t)
			if !strings.Contains(text, c.says) {
				t.Errorf("outcome does not mention %q: %.400s", c.says, text)
			}
			if strings.Contains(text, "goroutine") || strings.Contains(text, "invalid character") {
				t.Errorf("outcome leaks Go internals: %s", text)
			}
		})
	}
	// Nothing was written by any of those.
	s := ts.do(http.MethodGet, "/Patient", nil).want(t, http.StatusOK)
	if s.JSON["total"] != json.Number("0") {
		t.Errorf("failed requests left %v patients", s.JSON["total"])
	}
	// Lenient handling ignores the unknown parameter and says so.
	l := ts.do(http.MethodGet, "/Patient?colour=blue", nil, "Prefer", "handling=lenient").want(t, http.StatusOK)
	if !strings.Contains(string(l.Body), "colour") || strings.Contains(link(l.JSON, "self"), "colour") {
		t.Errorf("lenient search: %s", l.Body)
	}
}

// TestConcurrentWriters runs many clients creating and updating at once:
// every write lands exactly once, versions never skip or repeat, and
// optimistic locking lets exactly one of the racing updates through.
func TestConcurrentWriters(t *testing.T) {
	ts := newServer(t)
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errc := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r := ts.do(http.MethodPost, "/Observation", fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:w","code":"w%d"}]},"valueInteger":%d}`, w, i))
				if r.Status != http.StatusCreated {
					errc <- fmt.Errorf("create: %d %s", r.Status, r.Body)
				}
			}
		}()
	}
	ts.do(http.MethodPut, "/Patient/shared", `{"resourceType":"Patient","id":"shared"}`).want(t, http.StatusCreated)
	var wins sync.Map
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := ts.do(http.MethodPut, "/Patient/shared", fmt.Sprintf(`{"resourceType":"Patient","id":"shared","gender":"other","name":[{"text":"w%d"}]}`, w), "If-Match", `W/"1"`)
			switch r.Status {
			case http.StatusOK:
				wins.Store(w, true)
			case http.StatusPreconditionFailed:
			default:
				errc <- fmt.Errorf("update: %d %s", r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	n := 0
	wins.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d racing updates with the same If-Match succeeded, want 1", n)
	}
	s := ts.do(http.MethodGet, "/Observation?_summary=count", nil).want(t, http.StatusOK)
	if s.JSON["total"] != json.Number(fmt.Sprint(writers*each)) {
		t.Errorf("total %v, want %d", s.JSON["total"], writers*each)
	}
	for w := range writers {
		s := ts.do(http.MethodGet, fmt.Sprintf("/Observation?code=urn:w|w%d&_summary=count", w), nil).want(t, http.StatusOK)
		if s.JSON["total"] != json.Number(fmt.Sprint(each)) {
			t.Errorf("writer %d: total %v, want %d", w, s.JSON["total"], each)
		}
	}
	h := ts.do(http.MethodGet, "/Patient/shared/_history", nil).want(t, http.StatusOK)
	if h.JSON["total"] != json.Number("2") {
		t.Errorf("shared patient has %v versions, want 2", h.JSON["total"])
	}
}

// TestConditionalUpdateMatchingNothing: FHIR R4 http.html#cond-update,
// "No matches, id provided: The server treats the interaction as an Update
// as Create" — a create with the client's id. When that id is an existing
// resource the condition did not match, writing over it would replace
// what the condition did not select: refused with 409, as FHIR R5 states
// ("No matches, id provided and already exist: ... 409 Conflict"), over
// REST and in a transaction alike. A new id, or a deleted resource's, is
// created.
func TestConditionalUpdateMatchingNothing(t *testing.T) {
	for _, c := range []struct {
		name   string
		id     string
		status int
	}{
		{"the id of an existing resource the condition does not match", "other", http.StatusConflict},
		{"a new id", "fresh", http.StatusCreated},
		{"the id of a deleted resource", "gone", http.StatusCreated},
	} {
		for _, how := range []string{"REST", "transaction"} {
			t.Run(how+": "+c.name, func(t *testing.T) {
				ts := newServer(t)
				ts.do(http.MethodPut, "/Patient/other", `{"resourceType":"Patient","id":"other","gender":"female","identifier":[{"system":"urn:mrn","value":"1"}]}`).want(t, http.StatusCreated)
				ts.do(http.MethodPut, "/Patient/gone", `{"resourceType":"Patient","id":"gone"}`).want(t, http.StatusCreated)
				ts.do(http.MethodDelete, "/Patient/gone", nil).want(t, http.StatusOK)
				body := `{"resourceType":"Patient","id":"` + c.id + `","gender":"male","identifier":[{"system":"urn:mrn","value":"99"}]}`
				if how == "REST" {
					ts.do(http.MethodPut, "/Patient?identifier=urn:mrn|99", body).want(t, c.status)
				} else {
					want := http.StatusOK
					if c.status == http.StatusConflict {
						want = c.status
					}
					ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"transaction","entry":[{"resource":`+body+
						`,"request":{"method":"PUT","url":"Patient?identifier=urn:mrn|99"}}]}`).want(t, want)
				}
				other := ts.do(http.MethodGet, "/Patient/other", nil).want(t, http.StatusOK)
				if other.JSON["gender"] != "female" || other.JSON["meta"].(map[string]any)["versionId"] != "1" {
					t.Errorf("Patient/other, which the condition did not match, was written over: %s", other.Body)
				}
				found := ts.do(http.MethodGet, "/Patient?identifier=urn:mrn|99", nil).want(t, http.StatusOK)
				wantTotal := json.Number("1")
				if c.status == http.StatusConflict {
					wantTotal = "0"
				}
				if found.JSON["total"] != wantTotal {
					t.Errorf("%v resources hold the new identifier, want %v", found.JSON["total"], wantTotal)
				}
			})
		}
	}
}
