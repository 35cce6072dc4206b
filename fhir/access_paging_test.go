package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestMemberSearchesServeOnlyTheMembersRecord: a member-bound request's
// searches (SMART App Launch: patient/ scopes confine to the patient's
// compartment), paged with _count 2 through next links answered in turn
// by two servers on one database (on PostgreSQL), with _include of a
// reference to the other member, _revinclude, _summary=count,
// _total=accurate, _id and chained parameters, serve exactly the
// resources of the member's compartment that the same search serves an
// unconfined client (their matches) and no resource of the other
// member; the counts are the member's. The two members' resources
// interleave in id order, half with ids the server gave (UUIDs).
func TestMemberSearchesServeOnlyTheMembersRecord(t *testing.T) {
	mount := func(ts *testServer) string {
		withTestAccess(ts.fhir)
		ts.http.Config.Handler.(interface {
			Mount(string, http.Handler)
		}).Mount("/member", ts.fhir.Handler())
		return ts.http.URL + "/member"
	}
	a, b := serversOnOneDatabase(t)
	ma, mb := mount(a), ""
	if b != a {
		mb = mount(b)
	} else {
		mb = ma
	}
	put := func(typ, id, body string) {
		if id == "" {
			a.do(http.MethodPost, "/"+typ, body).want(t, http.StatusCreated)
			return
		}
		a.do(http.MethodPut, "/"+typ+"/"+id, body).want(t, http.StatusCreated)
	}
	put("Patient", "p1", `{"resourceType":"Patient","id":"p1","name":[{"family":"One"}],"gender":"male"}`)
	put("Patient", "p2", `{"resourceType":"Patient","id":"p2","name":[{"family":"Two"}],"gender":"male"}`)
	put("Practitioner", "dr", `{"resourceType":"Practitioner","id":"dr","name":[{"family":"Who"}]}`)
	owner := map[string]string{"Patient/p1": "p1", "Patient/p2": "p2"}
	for i := range 12 {
		for _, p := range []string{"p1", "p2"} {
			id := fmt.Sprintf("o%02d%s", i, p)
			if i%2 == 1 {
				id = ""
			}
			// The first member's Observations name the other
			// member as their performer, once in three.
			perf := "Practitioner/dr"
			if p == "p1" && i%3 == 0 {
				perf = "Patient/p2"
			}
			put("Observation", id, fmt.Sprintf(`{"resourceType":"Observation",%s"status":"final","code":{"text":"x%d"},"valueInteger":%d,"subject":{"reference":"Patient/%s"},"performer":[{"reference":%q}]}`,
				map[bool]string{true: `"id":"` + id + `",`, false: ""}[id != ""], i%4, i, p, perf))
			put("Condition", "", fmt.Sprintf(`{"resourceType":"Condition","subject":{"reference":"Patient/%s"},"code":{"text":"c%d"}}`, p, i%3))
		}
	}
	// Every resource's owner, from what the unconfined client reads.
	for _, typ := range []string{"Observation", "Condition"} {
		for _, e := range pageEntries(t, a.do(http.MethodGet, "/"+typ+"?_count=1000", nil).want(t, http.StatusOK).JSON) {
			var m struct {
				Resource struct {
					ResourceType, ID string
					Subject          struct{ Reference string }
				}
			}
			json.Unmarshal([]byte(e), &m)
			owner[m.Resource.ResourceType+"/"+m.Resource.ID] = strings.TrimPrefix(m.Resource.Subject.Reference, "Patient/")
		}
	}
	mine := func(ref string) bool { o, ok := owner[ref]; return !ok || o == "p1" }
	var theirs string
	for ref, o := range owner {
		if o == "p2" && strings.HasPrefix(ref, "Observation/") {
			theirs = strings.TrimPrefix(ref, "Observation/")
		}
	}
	answered := 0
	queries := []string{
		"Observation",
		"Observation?code=x1,x2",
		"Observation?_include=Observation:performer",
		"Observation?_include=Observation:subject&_include=Observation:performer&_sort=-value-quantity",
		"Observation?_revinclude=Provenance:target&_include:iterate=Observation:subject",
		"Patient?_revinclude=Observation:subject&_revinclude=Condition:subject",
		"Patient",
		"Patient?gender=male",
		"Observation?subject=Patient/p2",
		"Observation?performer=Patient/p2&_include=Observation:performer",
		"Observation?subject:Patient.name=Two",
		"Observation?subject:Patient.gender=male&_sort=_id",
		"Observation?_id=" + theirs,
		"Condition?code=c1&_total=accurate",
		"Observation?_elements=status",
	}
	for _, q := range queries {
		sep := "?"
		if strings.Contains(q, "?") {
			sep = "&"
		}
		// The unconfined answer's matches in the member's record.
		var want []string
		for _, e := range distinct(pageEntries(t, a.do(http.MethodGet, "/"+q+sep+"_count=1000", nil).want(t, http.StatusOK).JSON)) {
			if strings.Contains(e, `"mode":"match"`) && mine(entryRef(e)) {
				want = append(want, entryRef(e))
			}
		}
		var got, all []string
		path, servers := ma+"/"+q+sep+"_count=2", []string{ma, mb}
		for i := 0; path != ""; i++ {
			if i > 40 {
				t.Fatalf("%s: more than 40 pages", q)
			}
			s := servers[i%2]
			path = s + path[strings.Index(path, "/member")+len("/member"):]
			pg := a.do(http.MethodGet, path, nil, "X-Test-Patient", "p1")
			if pg.Status != http.StatusOK {
				t.Fatalf("%s: %d %s", q, pg.Status, pg.Body)
			}
			for _, e := range pageEntries(t, pg.JSON) {
				all = append(all, entryRef(e))
				if strings.Contains(e, `"mode":"match"`) {
					got = append(got, entryRef(e))
				}
			}
			if tot, ok := pg.JSON["total"]; ok && i == 0 {
				if n, _ := tot.(json.Number).Int64(); int(n) != len(want) {
					t.Errorf("%s: total %v, the member has %d", q, tot, len(want))
				}
			}
			// The links name the configured base; the member's
			// requests go to where its access is set.
			path = link(pg.JSON, "next")
			if path != "" && !strings.HasPrefix(path, a.URL) && !strings.HasPrefix(path, b.URL) {
				t.Fatalf("%s: the next link %s is not the server's", q, path)
			}
			path = strings.Replace(strings.Replace(path, a.URL, "/member", 1), b.URL, "/member", 1)
		}
		if len(want) > 0 {
			answered++
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: the member's pages match %v, want %v", q, got, want)
		}
		for _, ref := range all {
			if !mine(ref) {
				t.Errorf("%s: the member is served %s, the other member's", q, ref)
			}
		}
		cnt := a.do(http.MethodGet, ma+"/"+q+sep+"_summary=count", nil, "X-Test-Patient", "p1").want(t, http.StatusOK)
		if n, _ := cnt.JSON["total"].(json.Number).Int64(); int(n) != len(want) {
			t.Errorf("%s&_summary=count: %d, the member has %d", q, n, len(want))
		}
	}
	if answered < len(queries)*2/3 {
		t.Fatalf("only %d of %d searches serve the member anything", answered, len(queries))
	}
}

// entryRef returns type/id of an entry of pageEntries.
func entryRef(e string) string {
	var m struct {
		Resource struct{ ResourceType, ID string }
	}
	json.Unmarshal([]byte(e), &m)
	return m.Resource.ResourceType + "/" + m.Resource.ID
}
