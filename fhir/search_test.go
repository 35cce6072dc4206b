package fhir_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

var searchFixtures = []string{
	`{"resourceType":"Patient","id":"p1","active":true,"gender":"male","birthDate":"1970-05-10",
	  "name":[{"family":"Müller","given":["Jürgen"]}],"identifier":[{"system":"urn:mrn","value":"1001"}],
	  "address":[{"city":"Boston","state":"MA"}]}`,
	`{"resourceType":"Patient","id":"p2","gender":"female","birthDate":"1985",
	  "name":[{"family":"Mueller","given":["Anna"]}],"identifier":[{"system":"urn:mrn","value":"1002"}],
	  "address":[{"city":"Springfield"}]}`,
	`{"resourceType":"Patient","id":"p3","gender":"male","birthDate":"1985-07-04",
	  "name":[{"family":"Smith","given":["John","Quincy"]}],"identifier":[{"system":"urn:other","value":"1001"}],
	  "telecom":[{"system":"email","value":"john@example.org"}]}`,
	`{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},
	  "code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},
	  "effectiveDateTime":"2024-01-15T10:00:00Z","valueQuantity":{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}`,
	`{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":"Patient/p1"},
	  "code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}],"text":"Systolic blood pressure"},
	  "effectivePeriod":{"start":"2024-02-01","end":"2024-02-03"},
	  "valueQuantity":{"value":120,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}`,
	`{"resourceType":"Observation","id":"o3","status":"final","subject":{"reference":"Patient/p2"},
	  "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
	  "effectiveDateTime":"2023-12-31","valueQuantity":{"value":88.0,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}`,
	`{"resourceType":"Observation","id":"o4","status":"preliminary","subject":{"reference":"Patient/p3"},
	  "code":{"coding":[{"system":"urn:other","code":"x"}]}}`,
	`{"resourceType":"Provenance","id":"prov1","target":[{"reference":"Observation/o1"}],"recorded":"2024-01-15T10:00:00Z",
	  "agent":[{"who":{"display":"Payer A"}}]}`,
}

func loadFixtures(t *testing.T, ts *testServer, fixtures []string) {
	t.Helper()
	for _, f := range fixtures {
		var m map[string]any
		if err := json.Unmarshal([]byte(f), &m); err != nil {
			t.Fatal(err)
		}
		ts.do(http.MethodPut, "/"+m["resourceType"].(string)+"/"+m["id"].(string), f).want(t, http.StatusCreated)
	}
}

// TestSearchSemantics checks every parameter type, modifier and prefix
// against a small data set whose answers are known.
func TestSearchSemantics(t *testing.T) {
	ts := newServer(t)
	loadFixtures(t, ts, searchFixtures)
	cases := []struct {
		query string
		want  []string // match ids in order when ordered, else any order
		order bool
	}{
		// string: case- and accent-insensitive prefix, :exact, :contains
		{"Patient?family=muller", []string{"p1"}, false},
		{"Patient?family=MÜL", []string{"p1"}, false},
		{"Patient?family=mueller", []string{"p2"}, false},
		{"Patient?name=quin", []string{"p3"}, false},
		{"Patient?family:exact=Müller", []string{"p1"}, false},
		{"Patient?family:exact=müller", nil, false},
		{"Patient?family:contains=ell", []string{"p2"}, false},
		{"Patient?address-city=bos", []string{"p1"}, false},
		// token
		{"Patient?gender=male", []string{"p1", "p3"}, false},
		{"Patient?gender:not=male", []string{"p2"}, false},
		// search.html#modifiers, :not: "this includes resources that have
		// no value for the parameter" (p1 and p2 have no email).
		{"Patient?email:not=john@example.org", []string{"p1", "p2"}, false},
		{"Patient?identifier:not=urn:mrn|1001", []string{"p2", "p3"}, false},
		{"Observation?code:not=http://loinc.org|8867-4", []string{"o2", "o4"}, false},
		{"Patient?identifier=1001", []string{"p1", "p3"}, false},
		{"Patient?identifier=urn:mrn|1001", []string{"p1"}, false},
		{"Patient?identifier=urn:mrn|", []string{"p1", "p2"}, false},
		{"Patient?identifier=|1001", nil, false},
		{"Patient?email=john@example.org", []string{"p3"}, false},
		{"Patient?active=true", []string{"p1"}, false},
		{"Observation?code=http://loinc.org|8867-4", []string{"o1", "o3"}, false},
		{"Observation?code:text=systolic", []string{"o2"}, false},
		{"Observation?code:text=heart", []string{"o1"}, false},
		{"Observation?status=final", []string{"o1", "o2", "o3"}, false},
		{"Patient?_id=p2", []string{"p2"}, false},
		{"Patient?_id=p2,p3", []string{"p2", "p3"}, false},
		// date: precision and every prefix
		{"Patient?birthdate=1985", []string{"p2", "p3"}, false},
		{"Patient?birthdate=1985-07", []string{"p3"}, false},
		{"Patient?birthdate=eq1985-07-04", []string{"p3"}, false},
		{"Patient?birthdate=ne1985-07-04", []string{"p1", "p2"}, false},
		{"Patient?birthdate=lt1980", []string{"p1"}, false},
		{"Patient?birthdate=le1970-05-10", []string{"p1"}, false},
		{"Patient?birthdate=gt1985-06-30", []string{"p2", "p3"}, false},
		{"Patient?birthdate=ge1985-07-04", []string{"p2", "p3"}, false},
		{"Patient?birthdate=sa1980", []string{"p2", "p3"}, false},
		{"Patient?birthdate=eb1980", []string{"p1"}, false},
		{"Patient?birthdate=ap1970-05-11", []string{"p1"}, false},
		{"Observation?date=2024-01-15", []string{"o1"}, false},
		{"Observation?date=2024-01-15T10:00:00Z", []string{"o1"}, false},
		{"Observation?date=2024-01-15T10:00:00%2B02:00", nil, false},
		{"Observation?date=2024-02-02", nil, false},
		{"Observation?date=2024-02", []string{"o2"}, false},
		{"Observation?date=ge2024-01-01", []string{"o1", "o2"}, false},
		{"Observation?date=lt2024", []string{"o3"}, false},
		{"Observation?date=ge2024-01-01&date=lt2024-02", []string{"o1"}, false},
		// quantity
		{"Observation?value-quantity=72", []string{"o1"}, false},
		{"Observation?value-quantity=88", []string{"o3"}, false},
		{"Observation?value-quantity=gt80", []string{"o2", "o3"}, false},
		{"Observation?value-quantity=120|http://unitsofmeasure.org|mm[Hg]", []string{"o2"}, false},
		{"Observation?value-quantity=lt100||/min", []string{"o1", "o3"}, false},
		{"Observation?value-quantity=ap75", []string{"o1"}, false},
		// reference: Type/id, id, :Type, absolute URL on this server
		{"Observation?subject=Patient/p1", []string{"o1", "o2"}, false},
		{"Observation?subject=p1", []string{"o1", "o2"}, false},
		{"Observation?subject:Patient=p1", []string{"o1", "o2"}, false},
		{"Observation?patient=p2", []string{"o3"}, false},
		{"Observation?subject={base}/Patient/p2", []string{"o3"}, false},
		{"Provenance?target=Observation/o1", []string{"prov1"}, false},
		// chained, one level
		{"Observation?subject.family=muller", []string{"o1", "o2"}, false},
		{"Observation?subject:Patient.name=smith", []string{"o4"}, false},
		{"Observation?patient.identifier=urn:mrn|1002", []string{"o3"}, false},
		// :missing
		{"Observation?date:missing=true", []string{"o4"}, false},
		{"Observation?date:missing=false", []string{"o1", "o2", "o3"}, false},
		// AND (repeated/different params) and OR (comma)
		{"Patient?gender=male&birthdate=1985", []string{"p3"}, false},
		{"Patient?gender=female,male", []string{"p1", "p2", "p3"}, false},
		{"Patient?name=smith&name=john", []string{"p3"}, false},
		{"Patient?name=smith&name=anna", nil, false},
		// open-ended clauses after a selective one are checked per candidate
		{"Observation?subject=p1&date=ge2024-01-01", []string{"o1", "o2"}, false},
		{"Observation?code=http://loinc.org|8867-4&value-quantity=gt80", []string{"o3"}, false},
		{"Patient?gender=male&name:contains=uin", []string{"p3"}, false},
		{"Observation?subject=p3&date:missing=true", []string{"o4"}, false},
		{"Observation?status=final&date:missing=true", nil, false},
		{"Patient?identifier=urn:mrn|&gender:not=male", []string{"p2"}, false},
		{"Patient?identifier=urn:mrn|&birthdate=lt1980", []string{"p1"}, false},
		{"Patient?identifier=urn:mrn|&birthdate=ap1985-07-01", []string{"p2"}, false},
		// _sort with several keys and descending
		{"Patient?_sort=birthdate", []string{"p1", "p2", "p3"}, true},
		{"Patient?_sort=-birthdate", []string{"p3", "p2", "p1"}, true},
		{"Patient?_sort=family,-birthdate", []string{"p2", "p1", "p3"}, true},
		{"Patient?_sort=gender,-birthdate", []string{"p2", "p3", "p1"}, true},
		{"Observation?_sort=-date", []string{"o2", "o1", "o3", "o4"}, true},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			q := strings.ReplaceAll(c.query, "{base}", url.QueryEscape(ts.URL))
			r := ts.do(http.MethodGet, "/"+q, nil).want(t, http.StatusOK)
			got := bundleIDs(r.JSON)
			for i := range got {
				got[i] = got[i][strings.IndexByte(got[i], '/')+1:]
			}
			want := append([]string(nil), c.want...)
			if !c.order {
				slices.Sort(got)
				slices.Sort(want)
			}
			if !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
			if r.JSON["total"] != json.Number(itoa(len(c.want))) {
				t.Errorf("total %v, want %d", r.JSON["total"], len(c.want))
			}
		})
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestSearchIncludesAndShapes(t *testing.T) {
	ts := newServer(t)
	loadFixtures(t, ts, searchFixtures)

	r := ts.do(http.MethodGet, "/Observation?code=http://loinc.org|8867-4&_include=Observation:subject", nil).want(t, http.StatusOK)
	if got := includes(r.JSON); !slices.Equal(got, []string{"Patient/p1", "Patient/p2"}) {
		t.Errorf("_include gave %v", got)
	}
	r = ts.do(http.MethodGet, "/Patient?_id=p1&_revinclude=Observation:subject", nil).want(t, http.StatusOK)
	if got := includes(r.JSON); !slices.Equal(got, []string{"Observation/o1", "Observation/o2"}) {
		t.Errorf("_revinclude gave %v", got)
	}
	r = ts.do(http.MethodGet, "/Observation?_id=o1&_revinclude=Provenance:target", nil).want(t, http.StatusOK)
	if got := includes(r.JSON); !slices.Equal(got, []string{"Provenance/prov1"}) {
		t.Errorf("_revinclude=Provenance:target gave %v", got)
	}
	if r.JSON["total"] != json.Number("1") {
		t.Errorf("included resources counted in total: %v", r.JSON["total"])
	}

	r = ts.do(http.MethodGet, "/Patient?_id=p1&_elements=birthDate", nil).want(t, http.StatusOK)
	res := r.JSON["entry"].([]any)[0].(map[string]any)["resource"].(map[string]any)
	if res["birthDate"] == nil || res["name"] != nil || !strings.Contains(string(r.Body), "SUBSETTED") {
		t.Errorf("_elements gave %v", res)
	}
	r = ts.do(http.MethodGet, "/Patient?_summary=count", nil).want(t, http.StatusOK)
	if r.JSON["total"] != json.Number("3") || r.JSON["entry"] != nil {
		t.Errorf("_summary=count gave %s", r.Body)
	}
	r = ts.do(http.MethodGet, "/Patient?_total=none", nil).want(t, http.StatusOK)
	if r.JSON["total"] != nil {
		t.Errorf("_total=none still has a total")
	}
	// POST _search takes form parameters, also combined with the URL's.
	req := ts.do(http.MethodGet, "/Patient", nil) // warm
	_ = req
	form := url.Values{"family": {"smith"}}
	resp, err := http.Post(ts.URL+"/Patient/_search?gender=male", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	json.NewDecoder(resp.Body).Decode(&b)
	resp.Body.Close()
	if resp.StatusCode != 200 || !slices.Equal(bundleIDs(b), []string{"Patient/p3"}) {
		t.Errorf("POST _search: %d %v", resp.StatusCode, b)
	}
}

func includes(b map[string]any) []string {
	var out []string
	for _, e := range b["entry"].([]any) {
		em := e.(map[string]any)
		if em["search"].(map[string]any)["mode"] == "include" {
			res := em["resource"].(map[string]any)
			out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
		}
	}
	slices.Sort(out)
	return out
}

// TestPagingUnderWrites pages through a search while other clients
// write: each page is the search run again from the position after the
// last resource served (FHIR R4 search.html#paging lets a server either
// keep a result set or do this). Resources that still match are served
// exactly once; ones created meanwhile (server ids sort by creation) come
// on later pages; ones deleted before their page are not served; an
// update that keeps a resource matching does not serve it twice.
func TestPagingUnderWrites(t *testing.T) {
	ts := newServer(t)
	obs := `{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:t","code":"page"}]}}`
	var created []string
	for range 25 {
		r := ts.do(http.MethodPost, "/Observation", obs).want(t, http.StatusCreated)
		created = append(created, "Observation/"+r.JSON["id"].(string))
	}
	r := ts.do(http.MethodGet, "/Observation?code=urn:t|page&_count=10", nil).want(t, http.StatusOK)
	seen := map[string]bool{}
	var added []string
	deleted := created[24]
	pages := 0
	for {
		pages++
		for _, id := range bundleIDs(r.JSON) {
			if seen[id] {
				t.Fatalf("%s seen twice", id)
			}
			seen[id] = true
		}
		next := link(r.JSON, "next")
		if next == "" {
			break
		}
		if !strings.HasPrefix(next, ts.URL+"/Observation?") || link(r.JSON, "first") == "" {
			t.Fatalf("links %v", r.JSON["link"])
		}
		// Writes between pages: a new match, an update of one already
		// served, and (once) a deletion of one not yet served.
		nr := ts.do(http.MethodPost, "/Observation", obs).want(t, http.StatusCreated)
		added = append(added, "Observation/"+nr.JSON["id"].(string))
		ts.do(http.MethodPut, "/"+created[0], strings.Replace(obs, `"resourceType":"Observation"`, `"resourceType":"Observation","id":"`+strings.TrimPrefix(created[0], "Observation/")+`"`, 1)).want(t, http.StatusOK)
		if pages == 1 {
			ts.do(http.MethodDelete, "/"+deleted, nil).want(t, http.StatusOK)
		}
		r = ts.do(http.MethodGet, next, nil).want(t, http.StatusOK)
	}
	for _, id := range append(slices.Clone(created[:24]), added...) {
		if !seen[id] {
			t.Errorf("%s not served", id)
		}
	}
	if seen[deleted] {
		t.Errorf("%s served after its deletion", deleted)
	}
	if len(seen) != 24+len(added) || len(added) != pages-1 {
		t.Errorf("saw %d resources over %d pages (%d added)", len(seen), pages, len(added))
	}
	ts.do(http.MethodGet, "/Observation?_cursor=nonsense.0", nil).want(t, http.StatusGone).outcome(t)
}

// TestSearchRepeatedItemsSharingAKey: a parameter matches a resource when
// any of its values does (FHIR R4 search.html#search, and #date, #quantity),
// also when two of the resource's items have the same index key but
// different extents or units: Timing events 2015 and 2015-01-01T00:00:00Z
// (one start, two ends), a component's 120 mm[Hg] and another's 120 /min
// (one number, two units). An update taking one of the items away leaves
// the other's match alone.
func TestSearchRepeatedItemsSharingAKey(t *testing.T) {
	ts := newServer(t)
	component := func(code, unit string) string {
		return `{"code":{"coding":[{"system":"http://loinc.org","code":"` + code + `"}]},"valueQuantity":{"value":120,"system":"http://unitsofmeasure.org","code":"` + unit + `"}}`
	}
	obs := func(id, rest string) string {
		return `{"resourceType":"Observation","id":"` + id + `","status":"final","code":{"text":"x"},` + rest + `}`
	}
	loadFixtures(t, ts, []string{
		obs("bp1", `"component":[`+component("8480-6", "mm[Hg]")+`,`+component("8867-4", "/min")+`]`),
		obs("bp2", `"valueQuantity":{"value":120,"system":"http://unitsofmeasure.org","code":"mm[Hg]"},"component":[`+component("8867-4", "/min")+`]`),
		obs("bp3", `"component":[`+component("8480-6", "mm[Hg]")+`]`),
		obs("t1", `"effectiveTiming":{"event":["2015","2015-01-01T00:00:00Z"]}`),
		obs("t2", `"effectiveTiming":{"event":["2015-01-01T00:00:00Z","2015"]}`),
		obs("t3", `"effectiveDateTime":"2015"`),
		obs("t4", `"effectiveTiming":{"event":["2015-01-01T00:00:00Z","2015-01-01T00:00:00.000Z"]}`),
		`{"resourceType":"Goal","id":"g1","lifecycleStatus":"active","description":{"text":"x"},"subject":{"reference":"Patient/p1"},"target":[{"dueDate":"2020"},{"dueDate":"2020-01-01"}]}`,
		`{"resourceType":"Goal","id":"g2","lifecycleStatus":"active","description":{"text":"x"},"subject":{"reference":"Patient/p1"},"target":[{"dueDate":"2020"}]}`,
	})
	search := func(t *testing.T, query string, want ...string) {
		t.Helper()
		r := ts.do(http.MethodGet, "/"+query, nil).want(t, http.StatusOK)
		got := bundleIDs(r.JSON)
		for i := range got {
			got[i] = got[i][strings.IndexByte(got[i], '/')+1:]
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", query, got, want)
		}
	}
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"Observation?component-value-quantity=120|http://unitsofmeasure.org|/min", []string{"bp1", "bp2"}},
		{"Observation?component-value-quantity=120|http://unitsofmeasure.org|mm[Hg]", []string{"bp1", "bp3"}},
		{"Observation?component-value-quantity=120||/min", []string{"bp1", "bp2"}},
		{"Observation?component-value-quantity=120||g", nil},
		{"Observation?combo-value-quantity=120||/min", []string{"bp1", "bp2"}},
		{"Observation?combo-value-quantity=120||mm[Hg]", []string{"bp1", "bp2", "bp3"}},
		{"Observation?value-quantity=120||/min", nil},
		{"Observation?date=2015-01-01T00:00:00Z", []string{"t1", "t2", "t4"}},
		{"Observation?date=2015", []string{"t1", "t2", "t3", "t4"}},
		{"Observation?date=gt2015-06-01", []string{"t1", "t2", "t3"}},
		{"Observation?date=ne2015-01-01T00:00:00Z", []string{"t1", "t2", "t3"}},
		{"Observation?date=le2015-01-01T00:00:00Z", []string{"t1", "t2", "t4"}},
		{"Goal?target-date=2020-01-01", []string{"g1"}},
		{"Goal?target-date=2020", []string{"g1", "g2"}},
		{"Goal?target-date=ne2020-01-01", []string{"g1", "g2"}},
	} {
		search(t, c.query, c.want...)
	}
	// An update that takes one item away: the entry keeps the other's.
	ts.do(http.MethodPut, "/Observation/bp1", obs("bp1", `"component":[`+component("8480-6", "mm[Hg]")+`]`)).want(t, http.StatusOK)
	ts.do(http.MethodPut, "/Observation/t1", obs("t1", `"effectiveTiming":{"event":["2015"]}`)).want(t, http.StatusOK)
	search(t, "Observation?component-value-quantity=120||/min", "bp2")
	search(t, "Observation?component-value-quantity=120||mm[Hg]", "bp1", "bp3")
	search(t, "Observation?date=2015-01-01T00:00:00Z", "t2", "t4")
	search(t, "Observation?date=ne2015-01-01T00:00:00Z", "t1", "t2", "t3")
	// And one that adds it back.
	ts.do(http.MethodPut, "/Observation/t1", obs("t1", `"effectiveTiming":{"event":["2015","2015-01-01T00:00:00Z"]}`)).want(t, http.StatusOK)
	search(t, "Observation?date=2015-01-01T00:00:00Z", "t1", "t2", "t4")
}
