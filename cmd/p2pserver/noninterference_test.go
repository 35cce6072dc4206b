package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// The non-interference proof: nothing a member or a narrowly scoped client
// is answered depends on another member's data.
//
// Three servers hold the same data but for member B's: the first has B's
// record (records_fixture_test.go), the second none of it, the third B's
// record with every value changed. The same requests, made under member
// A's tokens and a narrow client's, must get the same answers from the
// three, once what the servers assign themselves (ids, times, ETags,
// cursor keys, their own base URLs) is normalised. The requests are
// generated from a table of every interaction, search parameter kind,
// modifier, chain, include, operation and bundle form the server supports
// (TestNonInterference), and from random combinations of them
// (FuzzNonInterference: its seeds run in every go test, `make fuzz` runs
// it for longer).

// niRequest is one request of the proof.
type niRequest struct {
	Method, Path, Body string
	Headers            []string
	Walk               bool // follow next links to the last page
}

func (r niRequest) String() string {
	s := r.Method + " " + r.Path
	if r.Body != "" {
		s += " " + r.Body
	}
	if len(r.Headers) > 0 {
		s += " " + strings.Join(r.Headers, "; ")
	}
	return s
}

// niPrincipal is who asks: member A, or a client, with scopes.
type niPrincipal struct {
	Name    string
	Patient string
	Scopes  []string
}

var niPrincipals = []niPrincipal{
	{"member A, read-write", "A", []string{"launch/patient", "patient/*.*"}},
	{"member A, two types (v2)", "A", []string{"patient/Observation.rs", "patient/Coverage.crus"}},
	{"client with reference data only", "", []string{"system/Practitioner.rs", "system/Organization.cruds", "system/Location.rs"}},
}

// niWorld is the three servers and the normalisers of their answers.
type niWorld struct {
	servers []*recordsServer
	tokens  [][]string // [principal][server]
	norm    []*niNormaliser
}

func newNIWorld(tb testing.TB) *niWorld {
	idp := oidctest.New(tb)
	idp.AddClient("partner", "partner-secret")
	w := &niWorld{}
	for _, b := range []*bValues{&bOriginal, nil, &bChanged} {
		s := startRecords(tb, idp, b)
		w.servers = append(w.servers, s)
		w.norm = append(w.norm, newNormaliser(s))
	}
	for _, p := range niPrincipals {
		var toks []string
		for _, s := range w.servers {
			toks = append(toks, s.token(tb, idp, p.Patient, p.Scopes...))
		}
		w.tokens = append(w.tokens, toks)
	}
	return w
}

// run makes r as principal p on every server, at the same time, and
// reports the first server whose normalised answer differs from the
// first's.
func (w *niWorld) run(tb testing.TB, p int, r niRequest) {
	tb.Helper()
	got := make([][]string, len(w.servers))
	var wg sync.WaitGroup
	for i, s := range w.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = w.exchange(tb, i, s, w.tokens[p][i], r)
		}()
	}
	wg.Wait()
	for i := 1; i < len(got); i++ {
		if !slices.Equal(got[0], got[i]) {
			variant := map[int]string{1: "without B's data", 2: "with B's values changed"}[i]
			tb.Errorf("%s: %s\nanswers differ %s:\n  with B's data: %s\n  %s: %s",
				niPrincipals[p].Name, r, variant, strings.Join(got[0], "\n    "), variant, strings.Join(got[i], "\n    "))
			return
		}
	}
}

// exchange makes r on server i and returns its normalised answer (every
// page of it for a walk).
func (w *niWorld) exchange(tb testing.TB, i int, s *recordsServer, token string, r niRequest) []string {
	var out []string
	r = w.resolve(r, s)
	path := r.Path
	for page := 0; page < 12; page++ {
		a := s.send(tb, r.Method, path, token, r.Body, r.Headers...)
		out = append(out, w.norm[i].answer(a))
		if !r.Walk || a.status != 200 {
			break
		}
		next := ""
		var b struct {
			Link []struct{ Relation, URL string } `json:"link"`
		}
		_ = json.Unmarshal(a.body, &b)
		for _, l := range b.Link {
			if l.Relation == "next" {
				next = l.URL
			}
		}
		if next == "" {
			break
		}
		path = next
	}
	return out
}

// niNormaliser turns one server's answers into a form the servers can
// agree on: its base URL, the ids and uuids it assigns (numbered in the
// order they first appear), cursor keys and times are replaced.
type niNormaliser struct {
	mu    sync.Mutex
	bases []string
	uuids map[string]string
}

func newNormaliser(s *recordsServer) *niNormaliser {
	return &niNormaliser{bases: []string{s.fhir, url.QueryEscape(s.fhir), s.URL, url.QueryEscape(s.URL)}, uuids: map[string]string{}}
}

var (
	niUUID        = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	niCursorKey   = regexp.MustCompile(`_cursor=[ck][0-9A-Za-z_-]{16,}\.`)
	niHistoryCurs = regexp.MustCompile(`_cursor=[0-9]+`)
	niVersionETag = regexp.MustCompile(`W/\\?"[0-9]+\\?"`)
)

func (n *niNormaliser) text(s string) string {
	for _, b := range n.bases {
		s = strings.ReplaceAll(s, b, "BASE")
	}
	s = niCursorKey.ReplaceAllString(s, "_cursor=KEY.")
	s = niHistoryCurs.ReplaceAllString(s, "_cursor=SEQ")
	n.mu.Lock()
	defer n.mu.Unlock()
	return niUUID.ReplaceAllStringFunc(s, func(u string) string {
		if l, ok := n.uuids[u]; ok {
			return l
		}
		l := fmt.Sprintf("UUID-%d", len(n.uuids)+1)
		n.uuids[u] = l
		return l
	})
}

// answer normalises one HTTP answer: status, Location, and the body with
// the Bundle's own id and every time stamp removed (JSON re-encoded with
// sorted keys, so member order is not compared).
func (n *niNormaliser) answer(a *answer) string {
	var v any
	body := string(a.body)
	if json.Unmarshal(a.body, &v) == nil {
		if m, ok := v.(map[string]any); ok && m["resourceType"] == "Bundle" {
			switch m["type"] {
			case "searchset", "history", "transaction-response", "batch-response":
				delete(m, "id")
			}
		} else if ok && m["resourceType"] == "CapabilityStatement" {
			delete(m, "date") // when the server started
		}
		stripTimes(v)
		raw, _ := json.Marshal(v)
		body = string(raw)
	}
	// ETags and versions of what the servers write are the servers'.
	body = niVersionETag.ReplaceAllString(body, `W/"N"`)
	loc := niVersionETag.ReplaceAllString(a.header.Get("Location"), "N")
	return fmt.Sprintf("%d %s %s", a.status, n.text(loc), n.text(body))
}

// stripTimes removes the members that hold when something happened, not
// what.
func stripTimes(v any) {
	switch x := v.(type) {
	case map[string]any:
		for _, k := range []string{"lastUpdated", "lastModified", "timestamp", "recorded"} {
			delete(x, k)
		}
		if meta, ok := x["meta"].(map[string]any); ok {
			delete(meta, "versionId")
		}
		for _, c := range x {
			stripTimes(c)
		}
	case []any:
		for _, c := range x {
			stripTimes(c)
		}
	}
}

// The table of requests.

// niSearchTypes are the types searched: those A's and B's data use, and
// Encounter, which no one's does.
var niSearchTypes = []string{
	"Patient", "Observation", "Coverage", "Condition", "ExplanationOfBenefit", "Group", "Composition", "Binary",
	"Bundle", "Device", "Subscription", "Provenance", "MessageHeader", "Practitioner", "Organization", "Encounter",
}

// niValues are search values by parameter type: B's values (original and
// changed) and A's, so that a search that reached B's data would show it.
var niValues = map[string][]string{
	"token":     {"8867-4", "http://loinc.org|8867-4", "urn:mrn|B-1", "B-2", "male", "active", "29463-7", "http://hl7.org/fhir/sid/us-ssn|123-45-6789"},
	"string":    {"Brown", "bert", "Castle", "Able", "555-0101"},
	"date":      {"1961-03-14", "ge1961-03-14", "lt1976", "1975-07-07", "eq2024-01", "sa1960"},
	"number":    {"99", "gt60", "61"},
	"quantity":  {"99", "99|http://unitsofmeasure.org|/min", "ge61", "lt100||/min"},
	"reference": {"Patient/B", "B", "Patient/A", "Observation/b-obs", "Coverage/b-cov", "Patient/B-old", BaseMarker + "/Patient/B"},
	"uri":       {"urn:source", "http://example.org"},
}

// BaseMarker in a request stands for the server's FHIR base URL.
const BaseMarker = "{base}"

var niModifiers = map[string][]string{
	"token":     {":not", ":text", ":missing"},
	"string":    {":exact", ":contains", ":missing"},
	"date":      {":missing"},
	"number":    {":missing"},
	"quantity":  {":missing"},
	"reference": {":missing", ":Patient", ":identifier", ":mdm"},
	"uri":       {":below", ":above", ":missing"},
}

// niChainTargets are, per type a chain may reach, parameters and values
// that hold for B's data.
var niChainTargets = map[string][]string{
	"Patient":     {"birthdate=1961-03-14", "family=Brown", "identifier=urn:mrn|B-1", "gender=male", "phone=555-0101", "name=Castle", "birthdate=1975-07-07"},
	"Observation": {"code=8867-4", "value-quantity=99", "subject.family=Brown"},
	"Coverage":    {"status=active", "subscriber=Patient/B"},
	"Group":       {"member=Patient/B"},
	"Device":      {"device-name=Brown"},
	"Condition":   {"code:text=Brown"},
}

// niTable builds the requests of the proof: every search parameter of
// every searched type with values and each modifier of its kind, every
// chain from a reference parameter into a type that holds B's data,
// includes and revincludes, paging, every interaction on A's, B's and
// unknown ids, writes into B's record, conditional interactions, Bundles,
// $everything and $member-match.
func niTable(reg *search.Registry) []niRequest {
	var out []niRequest
	get := func(path string) { out = append(out, niRequest{Method: "GET", Path: path}) }
	for _, typ := range niSearchTypes {
		base := "/fhir/" + typ
		get(base)
		out = append(out, niRequest{Method: "GET", Path: base + "?_count=1&_sort=_id", Walk: true})
		get(base + "?_summary=count")
		get(base + "?_total=accurate&_elements=id")
		for i, p := range reg.Params(typ) {
			vals := niValues[p.Type]
			if len(vals) == 0 {
				continue
			}
			// A value of the kind, in turn (two for references and
			// dates, which B's data answers most to), and each modifier.
			get(base + "?" + p.Code + "=" + url.QueryEscape(vals[i%len(vals)]))
			if p.Type == "reference" || p.Type == "date" {
				get(base + "?" + p.Code + "=" + url.QueryEscape(vals[(i+1)%len(vals)]))
			}
			for _, m := range niModifiers[p.Type] {
				v := vals[i%len(vals)]
				switch m {
				case ":missing":
					v = []string{"true", "false"}[i%2]
				case ":Patient":
					v = "B"
				case ":identifier":
					v = "urn:mrn|B-1"
				case ":mdm":
					v = "Patient/B"
				}
				get(base + "?" + p.Code + m + "=" + url.QueryEscape(v))
			}
			// Not by _lastUpdated: the servers set it, each at its own time.
			if (i < 4 || p.Type == "date") && p.Code != "_lastUpdated" {
				get(base + "?_sort=-" + p.Code + ",_id&_count=5")
			}
			if p.Type != "reference" {
				continue
			}
			// Chains into every type that holds B's data.
			for _, target := range reg.TargetTypes(p) {
				for _, cv := range niChainTargets[target] {
					k, v, _ := strings.Cut(cv, "=")
					get(base + "?" + p.Code + ":" + target + "." + k + "=" + url.QueryEscape(v))
					if len(p.Targets) == 1 {
						get(base + "?" + p.Code + "." + k + "=" + url.QueryEscape(v))
					}
				}
			}
			get(base + "?_include=" + typ + ":" + p.Code)
		}
		get(base + "?_include=*")
		for _, other := range niSearchTypes {
			for _, rp := range reg.ReferenceParams(other, typ) {
				get(base + "?_revinclude=" + other + ":" + rp.Code)
			}
		}
		get(base + "?_revinclude=*")
		get(base + "?_has:Observation:subject:code=8867-4")
	}
	// Every interaction on every id: A's, B's, unknown.
	ids := append(append(append([]string{}, aIDs...), bIDs...), "Observation/zz-none", "Patient/Z", "Binary/zz", "Device/zz")
	for _, id := range ids {
		get("/fhir/" + id)
		get("/fhir/" + id + "/_history")
		for v := 1; v <= 3; v++ {
			get(fmt.Sprintf("/fhir/%s/_history/%d", id, v))
		}
	}
	for _, id := range ids {
		typ, rid, _ := strings.Cut(id, "/")
		body := fmt.Sprintf(`{"resourceType":%q,"id":%q}`, typ, rid)
		if typ == "Observation" {
			body = fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}`, rid)
		}
		out = append(out,
			niRequest{Method: "PUT", Path: "/fhir/" + id, Body: body},
			niRequest{Method: "PUT", Path: "/fhir/" + id, Body: body, Headers: []string{`If-Match: W/"1"`}},
			niRequest{Method: "PUT", Path: "/fhir/" + id, Body: body, Headers: []string{`If-Match: W/"2"`}},
		)
	}
	out = append(out, niWrites()...)
	out = append(out, niBundles()...)
	out = append(out, niOperations()...)
	// Deletes last but one: the member's own go too, then everything is
	// read again.
	for _, id := range ids {
		out = append(out,
			niRequest{Method: "DELETE", Path: "/fhir/" + id, Headers: []string{`If-Match: W/"1"`}},
			niRequest{Method: "DELETE", Path: "/fhir/" + id})
	}
	for _, typ := range niSearchTypes {
		out = append(out, niRequest{Method: "GET", Path: "/fhir/" + typ + "/_history", Walk: true})
	}
	for _, id := range ids {
		get("/fhir/" + id)
		get("/fhir/" + id + "/_history")
	}
	get("/fhir/_history")
	return out
}

func niObservation(extra string) string {
	return `{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]}` + extra + `}`
}

// niWrites are writes into B's record and A's, and conditional
// interactions whose conditions hold for B's data.
func niWrites() []niRequest {
	post := func(path, body string, headers ...string) niRequest {
		return niRequest{Method: "POST", Path: path, Body: body, Headers: headers}
	}
	return []niRequest{
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/B"},"performer":[{"reference":"Patient/A"}]`)),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"},"performer":[{"reference":"Patient/B"}]`)),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"},"derivedFrom":[{"reference":"Observation/b-obs"}]`)),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"},"hasMember":[{"reference":"Observation/b-del"}]`)),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"}`)),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"}`), "If-None-Exist: subject:Patient.birthdate=1961-03-14"),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"}`), "If-None-Exist: code=8867-4&subject=Patient/B"),
		post("/fhir/Observation", niObservation(`,"subject":{"reference":"Patient/A"}`), "If-None-Exist: _id=b-obs", "Prefer: return=representation"),
		post("/fhir/Patient", `{"resourceType":"Patient","name":[{"family":"Brown"}]}`, "If-None-Exist: identifier=urn:mrn|B-1"),
		post("/fhir/Provenance", `{"resourceType":"Provenance","target":[{"reference":"ExplanationOfBenefit/b-eob"}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Patient/A"}}]}`),
		post("/fhir/Provenance", `{"resourceType":"Provenance","target":[{"reference":"ExplanationOfBenefit/a-eob"}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Patient/A"}}]}`),
		post("/fhir/Binary", `{"resourceType":"Binary","contentType":"text/plain","securityContext":{"reference":"Patient/B"}}`),
		post("/fhir/Device", `{"resourceType":"Device","patient":{"reference":"Observation/b-obs"}}`),
		post("/fhir/Subscription", `{"resourceType":"Subscription","status":"off","reason":"x","criteria":"Observation?patient=Patient/B","channel":{"type":"rest-hook","endpoint":"http://127.0.0.1:9/h"}}`),
		post("/fhir/Observation/_search", "subject:Patient.birthdate=1961-03-14"),
		post("/fhir/Coverage/_search", "subscriber.family=Brown&_include=Coverage:subscriber"),
		post("/fhir/Organization", `{"resourceType":"Organization","name":"made by the client"}`),
		{Method: "PUT", Path: "/fhir/Observation?code=8867-4&subject=Patient/B", Body: niObservation(`,"subject":{"reference":"Patient/A"}`)},
		{Method: "PUT", Path: "/fhir/Observation?subject:Patient.family=Brown", Body: niObservation(`,"subject":{"reference":"Patient/A"}`)},
		{Method: "PUT", Path: "/fhir/Observation?_id=b-obs", Body: niObservation(`,"id":"b-obs","subject":{"reference":"Patient/A"}`)},
		{Method: "PUT", Path: "/fhir/Patient?identifier=urn:mrn|B-1", Body: `{"resourceType":"Patient","name":[{"family":"Brown"}]}`},
		{Method: "PUT", Path: "/fhir/Group/shared", Body: `{"resourceType":"Group","id":"shared","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/A"}}]}`},
		{Method: "PUT", Path: "/fhir/Coverage/a-cov", Body: `{"resourceType":"Coverage","id":"a-cov","status":"active","beneficiary":{"reference":"Patient/A"},"payor":[{"reference":"Organization/org1"}]}`},
		{Method: "DELETE", Path: "/fhir/Observation?subject=Patient/B"},
		{Method: "DELETE", Path: "/fhir/Observation?subject.birthdate=1961-03-14"},
		{Method: "DELETE", Path: "/fhir/Coverage?beneficiary:Patient.family=Brown"},
	}
}

// niBundleEntries are Bundle entries that touch B's record, one of each
// form.
var niBundleEntries = []string{
	`{"request":{"method":"GET","url":"Patient/B"}}`,
	`{"request":{"method":"GET","url":"Observation/b-del/_history/1"}}`,
	`{"request":{"method":"GET","url":"Observation?subject:Patient.birthdate=1961-03-14"}}`,
	`{"request":{"method":"GET","url":"Coverage?_include=Coverage:subscriber"}}`,
	`{"request":{"method":"POST","url":"Observation","ifNoneExist":"subject.family=Brown"},"resource":` + niObservation(`,"subject":{"reference":"Patient/A"}`) + `}`,
	`{"request":{"method":"POST","url":"Observation","ifNoneExist":"_id=b-obs"},"resource":` + niObservation(`,"subject":{"reference":"Patient/A"}`) + `}`,
	`{"request":{"method":"POST","url":"Observation"},"resource":` + niObservation(`,"subject":{"reference":"Patient?identifier=urn:mrn|B-1"}`) + `}`,
	`{"request":{"method":"POST","url":"Observation"},"resource":` + niObservation(`,"subject":{"reference":"Patient/B"}`) + `}`,
	`{"request":{"method":"PUT","url":"Observation/b-del"},"resource":` + niObservation(`,"id":"b-del","subject":{"reference":"Patient/A"}`) + `}`,
	`{"request":{"method":"PUT","url":"Observation?subject.identifier=urn:mrn|B-1"},"resource":` + niObservation(`,"subject":{"reference":"Patient/A"}`) + `}`,
	`{"request":{"method":"DELETE","url":"Observation/b-obs","ifMatch":"W/\"1\""}}`,
	`{"request":{"method":"DELETE","url":"Coverage?beneficiary=Patient/B"}}`,
	`{"fullUrl":"urn:uuid:6a3e1f52-0000-4000-8000-000000000001","request":{"method":"POST","url":"Observation"},"resource":` + niObservation(`,"subject":{"reference":"Patient/A"}`) + `}`,
}

func niBundles() []niRequest {
	var out []niRequest
	for _, typ := range []string{"batch", "transaction"} {
		for _, e := range niBundleEntries {
			out = append(out, niRequest{Method: "POST", Path: "/fhir", Body: `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + e + `]}`,
				Headers: []string{"Prefer: return=representation"}})
		}
		out = append(out, niRequest{Method: "POST", Path: "/fhir", Body: `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(niBundleEntries, ",") + `]}`})
	}
	return out
}

func niOperations() []niRequest {
	// The Consent holds today, whatever the day (its end moves with it).
	matchBody := `{"resourceType":"Parameters","parameter":[
	  {"name":"MemberPatient","resource":{"resourceType":"Patient","name":[{"family":"Brown","given":["Bert"]}],"birthDate":"1961-03-14","gender":"male"}},
	  {"name":"CoverageToMatch","resource":{"resourceType":"Coverage","status":"active","beneficiary":{"reference":"Patient/1"},"payor":[{"reference":"Organization/org1"}],"subscriberId":"B-1"}},
	  {"name":"Consent","resource":{"resourceType":"Consent","status":"active","scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},"category":[{"coding":[{"system":"http://loinc.org","code":"64292-6"}]}],"patient":{"reference":"Patient/1"},"policy":[{"uri":"http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"}],"provision":{"type":"permit","period":{"start":"2024-01-01","end":"` + time.Now().UTC().AddDate(2, 0, 0).Format(time.DateOnly) + `"},"actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/provenance-participant-type","code":"performer"}]},"reference":{"identifier":{"system":"http://hl7.org/fhir/sid/us-npi","value":"9876543210"}}}],"action":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentaction","code":"disclose"}]}]}}}]}`
	return []niRequest{
		{Method: "GET", Path: "/fhir/Patient/A/$everything"},
		{Method: "GET", Path: "/fhir/Patient/A/$everything?_count=2", Walk: true},
		{Method: "GET", Path: "/fhir/Patient/A/$everything?_type=Observation,Device,Binary,Patient"},
		{Method: "GET", Path: "/fhir/Patient/A/$everything?_since=2000-01-01T00:00:00Z&_count=3", Walk: true},
		{Method: "POST", Path: "/fhir/Patient/A/$everything", Body: `{"resourceType":"Parameters","parameter":[{"name":"_count","valueInteger":2}]}`, Walk: true},
		{Method: "GET", Path: "/fhir/Patient/B/$everything"},
		{Method: "GET", Path: "/fhir/Patient/B-old/$everything"},
		{Method: "GET", Path: "/fhir/Patient/$everything?_count=2", Walk: true},
		{Method: "POST", Path: "/fhir/Patient/$member-match", Body: matchBody},
		{Method: "GET", Path: "/fhir/Patient/A/_history"},
		{Method: "GET", Path: "/fhir/Observation/_history", Walk: true},
		{Method: "GET", Path: "/fhir/_history"},
		{Method: "GET", Path: "/fhir/metadata"},
	}
}

// resolveBase puts the server's base URL where a request names it.
func (w *niWorld) resolve(r niRequest, s *recordsServer) niRequest {
	r.Path = strings.ReplaceAll(r.Path, url.QueryEscape(BaseMarker), url.QueryEscape(s.fhir))
	r.Path = strings.ReplaceAll(r.Path, BaseMarker, s.fhir)
	r.Body = strings.ReplaceAll(r.Body, BaseMarker, s.fhir)
	return r
}

var niRegistry = sync.OnceValue(func() *search.Registry { return search.NewRegistry(spec.R4()) })

// TestNonInterference runs the whole table under every principal against
// the three servers.
func TestNonInterference(t *testing.T) {
	t.Parallel()
	w := newNIWorld(t)
	table := niTable(niRegistry())
	t.Logf("%d requests per principal", len(table))
	for p := range niPrincipals {
		for _, r := range table {
			w.run(t, p, r)
			if t.Failed() && testing.Short() {
				return
			}
		}
	}
}

// FuzzNonInterference makes random combinations of the table's parts
// (parameters of every kind with B's values and random modifiers, chains,
// includes, sorting, paging, reads and writes of A's, B's and unknown ids,
// Bundles of random entries, operations) from a seed, under a random
// principal, against the three servers of TestNonInterference. Its seeds
// run in every go test; `make fuzz` explores for longer. The servers keep
// what earlier inputs wrote (A's own data only), on all three alike.
func FuzzNonInterference(f *testing.F) {
	for seed := range uint64(8) {
		f.Add(seed)
	}
	w := newNIWorld(f)
	reg := niRegistry()
	f.Fuzz(func(t *testing.T, seed uint64) {
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		for range 25 {
			p := rng.IntN(len(niPrincipals))
			r := niRandom(rng, reg)
			w.run(t, p, r)
			if t.Failed() {
				return
			}
		}
	})
}

// niRandom makes one random request.
func niRandom(rng *rand.Rand, reg *search.Registry) niRequest {
	pick := func(list []string) string { return list[rng.IntN(len(list))] }
	ids := append(append(append([]string{}, aIDs...), bIDs...), "Observation/zz-none", "Patient/Z")
	switch n := rng.IntN(100); {
	case n < 55:
		typ := pick(niSearchTypes)
		return niRequest{Method: "GET", Path: "/fhir/" + typ + "?" + niRandomQuery(rng, reg, typ), Walk: rng.IntN(3) == 0}
	case n < 70:
		id := pick(ids)
		switch rng.IntN(4) {
		case 0:
			return niRequest{Method: "GET", Path: "/fhir/" + id}
		case 1:
			return niRequest{Method: "GET", Path: fmt.Sprintf("/fhir/%s/_history/%d", id, 1+rng.IntN(3))}
		case 2:
			return niRequest{Method: "GET", Path: "/fhir/" + id + "/_history"}
		}
		var h []string
		if rng.IntN(2) == 0 {
			h = []string{fmt.Sprintf(`If-Match: W/"%d"`, 1+rng.IntN(3))}
		}
		return niRequest{Method: "DELETE", Path: "/fhir/" + id, Headers: h}
	case n < 80:
		ws := niWrites()
		return ws[rng.IntN(len(ws))]
	case n < 93:
		typ := pick([]string{"batch", "transaction"})
		var entries []string
		for range 1 + rng.IntN(4) {
			if rng.IntN(2) == 0 {
				entries = append(entries, pick(niBundleEntries))
				continue
			}
			t := pick(niSearchTypes)
			u, _ := json.Marshal(t + "?" + niRandomQuery(rng, reg, t))
			entries = append(entries, `{"request":{"method":"GET","url":`+string(u)+`}}`)
		}
		var h []string
		if rng.IntN(2) == 0 {
			h = []string{"Prefer: return=representation"}
		}
		return niRequest{Method: "POST", Path: "/fhir", Body: `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(entries, ",") + `]}`, Headers: h}
	}
	ops := niOperations()
	return ops[rng.IntN(len(ops))]
}

// niRandomQuery makes a search query on typ: one to three parameters with
// values of their kind and random modifiers or chains, and random
// result parameters.
func niRandomQuery(rng *rand.Rand, reg *search.Registry, typ string) string {
	params := reg.Params(typ)
	q := url.Values{}
	for range 1 + rng.IntN(3) {
		p := params[rng.IntN(len(params))]
		vals := niValues[p.Type]
		if len(vals) == 0 {
			continue
		}
		name, v := p.Code, vals[rng.IntN(len(vals))]
		switch {
		case p.Type == "reference" && rng.IntN(3) == 0:
			targets := reg.TargetTypes(p)
			t := targets[rng.IntN(len(targets))]
			if cs := niChainTargets[t]; len(cs) > 0 {
				k, cv, _ := strings.Cut(cs[rng.IntN(len(cs))], "=")
				name, v = p.Code+":"+t+"."+k, cv
			}
		case rng.IntN(3) == 0:
			if mods := niModifiers[p.Type]; len(mods) > 0 {
				m := mods[rng.IntN(len(mods))]
				name += m
				if m == ":missing" {
					v = []string{"true", "false"}[rng.IntN(2)]
				}
			}
		}
		if rng.IntN(4) == 0 {
			v += "," + vals[rng.IntN(len(vals))]
		}
		q.Add(name, v)
	}
	refs := reg.ReferenceParams(typ, "Patient")
	if len(refs) > 0 && rng.IntN(4) == 0 {
		q.Add("_include", typ+":"+refs[rng.IntN(len(refs))].Code)
	}
	if rng.IntN(4) == 0 {
		other := niSearchTypes[rng.IntN(len(niSearchTypes))]
		if rps := reg.ReferenceParams(other, typ); len(rps) > 0 {
			q.Add("_revinclude", other+":"+rps[rng.IntN(len(rps))].Code)
		}
	}
	if p := params[rng.IntN(len(params))]; rng.IntN(4) == 0 && p.Code != "_lastUpdated" {
		q.Add("_sort", p.Code+",_id")
	}
	if rng.IntN(3) == 0 {
		q.Add("_count", fmt.Sprint(1+rng.IntN(3)))
	}
	if rng.IntN(8) == 0 {
		q.Add("_summary", "count")
	}
	return q.Encode()
}
