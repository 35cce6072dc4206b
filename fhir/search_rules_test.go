package fhir_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
)

var includeFixtures = []string{
	`{"resourceType":"Organization","id":"org1","partOf":{"reference":"Organization/org2"}}`,
	`{"resourceType":"Organization","id":"org2","partOf":{"reference":"Organization/org3"}}`,
	`{"resourceType":"Organization","id":"org3","partOf":{"reference":"Organization/org1"}}`,
	`{"resourceType":"Practitioner","id":"pr1"}`,
	`{"resourceType":"PractitionerRole","id":"role1","practitioner":{"reference":"Practitioner/pr1"},"organization":{"reference":"Organization/org1"}}`,
	`{"resourceType":"Patient","id":"p1","generalPractitioner":[{"reference":"Practitioner/pr1"}],"managingOrganization":{"reference":"Organization/org1"}}`,
	`{"resourceType":"Patient","id":"p2"}`,
	`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner/pr1"}]}`,
	`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"},"performer":[{"reference":"Practitioner/pr1"}]}`,
	`{"resourceType":"Provenance","id":"prov-o1","recorded":"2024-01-01T00:00:00Z","target":[{"reference":"Observation/o1"}],"agent":[{"who":{"display":"x"}}]}`,
	`{"resourceType":"Provenance","id":"prov-p1","recorded":"2024-01-01T00:00:00Z","target":[{"reference":"Patient/p1"}],"agent":[{"who":{"display":"x"}}]}`,
	`{"resourceType":"Provenance","id":"prov-pr1","recorded":"2024-01-01T00:00:00Z","target":[{"reference":"Practitioner/pr1"}],"agent":[{"who":{"display":"x"}}]}`,
	// Canonical references (R4 references.html#canonical): url, or url|version.
	`{"resourceType":"Questionnaire","id":"intake1","status":"active","url":"http://example.org/Questionnaire/intake","version":"1"}`,
	`{"resourceType":"Questionnaire","id":"intake2","status":"active","url":"http://example.org/Questionnaire/intake","version":"2"}`,
	`{"resourceType":"Questionnaire","id":"other","status":"active","url":"http://example.org/Questionnaire/other"}`,
	`{"resourceType":"QuestionnaireResponse","id":"qr-v2","status":"completed","questionnaire":"http://example.org/Questionnaire/intake|2"}`,
	`{"resourceType":"QuestionnaireResponse","id":"qr-any","status":"completed","questionnaire":"http://example.org/Questionnaire/intake"}`,
}

// outcomes returns the diagnostics of a searchset's outcome entries.
func outcomes(b map[string]any) string {
	var out []string
	entries, _ := b["entry"].([]any)
	for _, e := range entries {
		em := e.(map[string]any)
		if s, _ := em["search"].(map[string]any); s != nil && s["mode"] == "outcome" {
			raw, _ := json.Marshal(em["resource"])
			out = append(out, string(raw))
		}
	}
	return strings.Join(out, "\n")
}

// selfParams returns the query of a searchset's self link.
func selfParams(t *testing.T, b map[string]any) url.Values {
	t.Helper()
	u, err := url.Parse(link(b, "self"))
	if err != nil {
		t.Fatal(err)
	}
	return u.Query()
}

// TestSearchIncludeIterate: FHIR R4 search.html#include: "_include and
// _revinclude ... the :iterate modifier ... indicate[s] that the inclusion
// should be repeated on the included resources" (and only then); includes
// never reach what the request may not see; the iteration is bounded, and
// a page cut at the bound says so in an outcome entry; the self link lists
// the parameters applied, :iterate included.
func TestSearchIncludeIterate(t *testing.T) {
	ts := newServer(t, func(c *fhir.Config) { c.MaxIncluded = 5 })
	loadFixtures(t, ts, includeFixtures)
	cases := []struct {
		query   string
		matches []string
		include []string
		outcome string
	}{
		{"Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:general-practitioner",
			[]string{"Observation/o1"}, []string{"Patient/p1", "Practitioner/pr1"}, ""},
		{"Observation?_id=o1&_include=Observation:subject&_revinclude=Provenance:target",
			[]string{"Observation/o1"}, []string{"Patient/p1", "Provenance/prov-o1"}, ""},
		{"Observation?_id=o1&_include=Observation:subject&_revinclude:iterate=Provenance:target",
			[]string{"Observation/o1"}, []string{"Patient/p1", "Provenance/prov-o1", "Provenance/prov-p1"}, ""},
		{"Organization?_id=org1&_include=Organization:partof",
			[]string{"Organization/org1"}, []string{"Organization/org2"}, ""},
		{"Organization?_id=org1&_include:iterate=Organization:partof", // a cycle back to the match ends it
			[]string{"Organization/org1"}, []string{"Organization/org2", "Organization/org3"}, ""},
		{"Practitioner?_id=pr1&_revinclude=PractitionerRole:practitioner&_include:iterate=PractitionerRole:organization",
			[]string{"Practitioner/pr1"}, []string{"Organization/org1", "PractitionerRole/role1"}, ""},
		{"Patient?_id=p1&_revinclude=Observation:subject&_include:iterate=Observation:performer&_revinclude:iterate=Provenance:target",
			[]string{"Patient/p1"}, []string{"Observation/o1", "Practitioner/pr1", "Provenance/prov-o1", "Provenance/prov-p1", "Provenance/prov-pr1"}, ""},
		{"Observation?_id=o1&_include:iterate=*", // every reference, of every type, again and again
			[]string{"Observation/o1"}, []string{"Organization/org1", "Organization/org2", "Organization/org3", "Patient/p1", "Practitioner/pr1"}, ""},
		{"Observation?_id=o1&_include:iterate=*&_revinclude:iterate=Provenance:target", // cut at 5, in the second round
			[]string{"Observation/o1"}, []string{"Organization/org1", "Patient/p1", "Practitioner/pr1", "Provenance/prov-o1", "Provenance/prov-p1"}, "stopped at 5"},
		{"Practitioner?_id=pr1&_revinclude:iterate=Observation:performer&_include:iterate=Observation:subject&_revinclude:iterate=Provenance:target",
			[]string{"Practitioner/pr1"}, []string{"Observation/o1", "Observation/o2", "Patient/p1", "Patient/p2", "Provenance/prov-pr1"}, "stopped at 5"},
		// A reference parameter on a canonical element is followed too:
		// url|version names that version, url alone every version.
		{"QuestionnaireResponse?_id=qr-v2&_include=QuestionnaireResponse:questionnaire",
			[]string{"QuestionnaireResponse/qr-v2"}, []string{"Questionnaire/intake2"}, ""},
		{"QuestionnaireResponse?_id=qr-any&_include=QuestionnaireResponse:questionnaire:Questionnaire",
			[]string{"QuestionnaireResponse/qr-any"}, []string{"Questionnaire/intake1", "Questionnaire/intake2"}, ""},
		{"QuestionnaireResponse?_id=qr-v2&_include=*",
			[]string{"QuestionnaireResponse/qr-v2"}, []string{"Questionnaire/intake2"}, ""},
		{"Questionnaire?_id=intake2&_revinclude=QuestionnaireResponse:questionnaire",
			[]string{"Questionnaire/intake2"}, []string{"QuestionnaireResponse/qr-any", "QuestionnaireResponse/qr-v2"}, ""},
		{"Questionnaire?_id=intake1&_revinclude=QuestionnaireResponse:questionnaire",
			[]string{"Questionnaire/intake1"}, []string{"QuestionnaireResponse/qr-any"}, ""},
		{"Questionnaire?_id=other&_revinclude=QuestionnaireResponse:questionnaire",
			[]string{"Questionnaire/other"}, nil, ""},
		{"QuestionnaireResponse?_id=qr-v2&_include=QuestionnaireResponse:questionnaire&_revinclude:iterate=QuestionnaireResponse:questionnaire",
			[]string{"QuestionnaireResponse/qr-v2"}, []string{"Questionnaire/intake2", "QuestionnaireResponse/qr-any"}, ""},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			r := ts.do(http.MethodGet, "/"+c.query, nil).want(t, http.StatusOK)
			if got := bundleIDs(r.JSON); !slices.Equal(got, c.matches) {
				t.Errorf("matches %v, want %v", got, c.matches)
			}
			if got := includes(r.JSON); !slices.Equal(got, c.include) {
				t.Errorf("includes %v, want %v", got, c.include)
			}
			oc := outcomes(r.JSON)
			if (c.outcome == "") != (oc == "") || !strings.Contains(oc, c.outcome) {
				t.Errorf("outcome %q, want one saying %q", oc, c.outcome)
			}
			want, _ := url.ParseQuery(strings.SplitN(c.query, "?", 2)[1])
			if got := selfParams(t, r.JSON); !equalValues(got, want) {
				t.Errorf("self link has %v, want exactly %v", got, want)
			}
		})
	}

	// A non-iterated _include names the searched type; an iterated one may
	// name any type, which must have the parameter.
	for q, says := range map[string]string{
		"Observation?_include=Patient:general-practitioner":         "_include:iterate",
		"Observation?_include:iterate=Patient:nonsense":             "no reference search parameter",
		"Observation?_summary=text&_include=Observation:subject":    "cannot be mixed",
		"Observation?_summary=text&_revinclude=Provenance:target":   "cannot be mixed",
		"Observation?_include:iterate=Observation:subject:Organism": "unknown resource type",
	} {
		r := ts.do(http.MethodGet, "/"+q, nil).want(t, http.StatusBadRequest)
		if !strings.Contains(r.outcome(t), says) {
			t.Errorf("%s: %s, want it to say %q", q, r.Body, says)
		}
	}

	// A member's token: iterating never leaves the member's compartment
	// (Observation/o2 is Patient/p2's, reached through Practitioner/pr1).
	withTestAccess(ts.fhir)
	ts.http.Config.Handler.(interface {
		Mount(string, http.Handler)
	}).Mount("/member", ts.fhir.Handler())
	r := ts.do(http.MethodGet, ts.http.URL+"/member/Observation?_include:iterate=*&_revinclude:iterate=Observation:performer&_revinclude:iterate=Provenance:target", nil,
		"X-Test-Patient", "p1").want(t, http.StatusOK)
	for _, ref := range append(bundleIDs(r.JSON), includes(r.JSON)...) {
		if ref == "Observation/o2" || ref == "Patient/p2" {
			t.Errorf("a member's search included %s, outside the member's compartment", ref)
		}
	}
	if got := bundleIDs(r.JSON); !slices.Equal(got, []string{"Observation/o1"}) {
		t.Errorf("member matches %v", got)
	}
}

func equalValues(a, b url.Values) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w := slices.Clone(b[k])
		v = slices.Clone(v)
		slices.Sort(v)
		slices.Sort(w)
		if !slices.Equal(v, w) {
			return false
		}
	}
	return true
}

// TestSearchSelfLinkListsWhatWasApplied: the self link of a searchset
// "SHALL represent the search parameters as processed"; ignored parameters
// (Prefer: handling=lenient) are left out, a capped _count is given as
// applied (FHIR R4 search.html#conformance, #count).
func TestSearchSelfLinkListsWhatWasApplied(t *testing.T) {
	ts := newServer(t)
	loadFixtures(t, ts, includeFixtures)
	cases := []struct {
		query   string
		lenient bool
		want    string
	}{
		{"Observation?_count=5000", false, "_count=1000"},
		{"Observation?colour=blue&status=final", true, "status=final"},
		{"Observation?_elements=subject,colour", true, "_elements=subject"},
		{"Observation?_elements=colour", true, ""},
		{"Observation?_summary=true&_sort=-date&_total=none", false, "_sort=-date&_summary=true&_total=none"},
		// _summary=count returns no resources: what would choose, order or
		// shape them is not applied.
		{"Observation?status=final&_summary=count&_include=Observation:subject&_revinclude:iterate=Provenance:target&_sort=-date&_count=5", false, "status=final&_summary=count"},
		{"Observation?_include=Observation:subject&_include:iterate=Patient:general-practitioner&_revinclude:iterate=Provenance:target", false,
			"_include=Observation:subject&_include:iterate=Patient:general-practitioner&_revinclude:iterate=Provenance:target"},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			var h []string
			if c.lenient {
				h = []string{"Prefer", "handling=lenient"}
			}
			r := ts.do(http.MethodGet, "/"+c.query, nil, h...).want(t, http.StatusOK)
			want, _ := url.ParseQuery(c.want)
			if got := selfParams(t, r.JSON); !equalValues(got, want) {
				t.Errorf("self link %s, want the parameters %s", link(r.JSON, "self"), c.want)
			}
			if c.lenient && !strings.Contains(outcomes(r.JSON), "colour") {
				t.Errorf("no outcome entry names what was ignored: %s", r.Body)
			}
		})
	}
}

// summaryFixtures have elements inside and outside R4's summary
// (ElementDefinition.isSummary), mandatory ones (min 1), narrative and
// extensions at several levels.
var summaryFixtures = []string{
	`{"resourceType":"Patient","id":"ps","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Pat</div>"},
	  "extension":[{"url":"http://example.org/fhir/StructureDefinition/x","valueString":"top"}],
	  "identifier":[{"system":"urn:t","value":"1"}],"active":true,
	  "name":[{"extension":[{"url":"http://example.org/fhir/StructureDefinition/y","valueString":"in-name"}],"family":"Sum","given":["Mary"]}],
	  "gender":"female","birthDate":"1980-01-02","_birthDate":{"extension":[{"url":"http://example.org/fhir/StructureDefinition/z","valueString":"bd"}]},
	  "multipleBirthBoolean":false,"maritalStatus":{"text":"single"},
	  "contact":[{"name":{"family":"Kin"}}],"communication":[{"language":{"text":"en"}}],
	  "managingOrganization":{"reference":"Organization/org1"},
	  "link":[{"other":{"reference":"Patient/p2"},"type":"seealso"}]}`,
	`{"resourceType":"Observation","id":"os","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">Obs</div>"},
	  "status":"final","category":[{"text":"vital-signs"}],"code":{"text":"bp"},"subject":{"reference":"Patient/ps"},
	  "effectiveDateTime":"2024-01-01","valueQuantity":{"value":1,"unit":"x"},"interpretation":[{"text":"high"}],"note":[{"text":"n"}],
	  "component":[{"code":{"text":"sys"},"valueQuantity":{"value":120},"interpretation":[{"text":"high"}]}],
	  "referenceRange":[{"text":"normal"}]}`,
	`{"resourceType":"Organization","id":"org1","name":"Org","contact":[{"name":{"text":"c"}}]}`,
}

// keysOf returns the sorted member names of a JSON object.
func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func subsettedTag(m map[string]any) bool {
	meta, _ := m["meta"].(map[string]any)
	tags, _ := meta["tag"].([]any)
	for _, t := range tags {
		if t.(map[string]any)["code"] == "SUBSETTED" {
			return true
		}
	}
	return false
}

// TestSearchSummaryAndElements: FHIR R4 search.html#summary, every mode
// ("true: ... elements that are marked as summary in the base definition",
// "text: ... the text element, the id element, the meta element, and only
// top-level mandatory elements", "data: Remove the text element", "count",
// "false"), and #elements ("Servers SHOULD always return mandatory
// elements whether they are requested or not"), with the SUBSETTED tag on
// whatever was cut down.
func TestSearchSummaryAndElements(t *testing.T) {
	ts := newServer(t)
	loadFixtures(t, ts, summaryFixtures)
	stored := func(typ, id string) map[string]any {
		return ts.do(http.MethodGet, "/"+typ+"/"+id, nil).want(t, http.StatusOK).JSON
	}
	cases := []struct {
		query  string
		keys   []string // top-level members of the match
		subset bool
		check  func(t *testing.T, res map[string]any, b map[string]any)
	}{
		{"Patient?_id=ps&_summary=true",
			[]string{"_birthDate", "active", "birthDate", "gender", "id", "identifier", "link", "managingOrganization", "meta", "name", "resourceType"}, true,
			func(t *testing.T, res, _ map[string]any) {
				name := res["name"].([]any)[0].(map[string]any)
				if name["extension"] != nil || name["family"] != "Sum" {
					t.Errorf("HumanName in summary mode: %v (extension is not in the summary)", name)
				}
				if link := res["link"].([]any)[0].(map[string]any); link["other"] == nil || link["type"] != "seealso" {
					t.Errorf("Patient.link (summary, mandatory parts): %v", link)
				}
			}},
		{"Observation?_id=os&_summary=true",
			[]string{"code", "component", "effectiveDateTime", "id", "meta", "resourceType", "status", "subject", "valueQuantity"}, true,
			func(t *testing.T, res, _ map[string]any) {
				comp := res["component"].([]any)[0].(map[string]any)
				if got := keysOf(comp); !slices.Equal(got, []string{"code", "valueQuantity"}) {
					t.Errorf("Observation.component in summary mode has %v (interpretation is not in the summary)", got)
				}
			}},
		{"Observation?_id=os&_summary=true&_include=Observation:subject",
			[]string{"code", "component", "effectiveDateTime", "id", "meta", "resourceType", "status", "subject", "valueQuantity"}, true,
			func(t *testing.T, _, b map[string]any) {
				for _, e := range b["entry"].([]any) {
					res := e.(map[string]any)["resource"].(map[string]any)
					if res["resourceType"] == "Patient" && (res["contact"] != nil || res["text"] != nil || !subsettedTag(res)) {
						t.Errorf("the included Patient is not in summary form: %v", keysOf(res))
					}
				}
			}},
		{"Patient?_id=ps&_summary=text", []string{"id", "meta", "resourceType", "text"}, true, nil},
		{"Observation?_id=os&_summary=text", []string{"code", "id", "meta", "resourceType", "status", "text"}, true, nil},
		{"Patient?_id=ps&_summary=data", nil, true, func(t *testing.T, res, _ map[string]any) {
			want := stored("Patient", "ps")
			delete(want, "text")
			if got := keysOf(res); !slices.Equal(got, keysOf(want)) {
				t.Errorf("_summary=data kept %v, want %v", got, keysOf(want))
			}
		}},
		{"Patient?_id=ps&_summary=false", nil, false, func(t *testing.T, res, _ map[string]any) {
			a, _ := json.Marshal(res)
			b, _ := json.Marshal(stored("Patient", "ps"))
			if string(a) != string(b) {
				t.Errorf("_summary=false changed the resource:\n%s\n%s", a, b)
			}
		}},
		{"Patient?_elements=birthDate", []string{"_birthDate", "birthDate", "id", "meta", "resourceType"}, true, nil},
		{"Patient?_elements=Patient.gender,deceased", []string{"gender", "id", "meta", "resourceType"}, true, nil},
		{"Observation?_elements=subject", []string{"code", "id", "meta", "resourceType", "status", "subject"}, true, nil},
		{"Observation?_elements=value", []string{"code", "id", "meta", "resourceType", "status", "valueQuantity"}, true, nil},
		{"Observation?_elements=value[x]", []string{"code", "id", "meta", "resourceType", "status", "valueQuantity"}, true, nil},
		{"Observation?_elements=valueQuantity,effective", []string{"code", "effectiveDateTime", "id", "meta", "resourceType", "status", "valueQuantity"}, true, nil},
		{"Observation?_elements=subject&_include=Observation:subject", []string{"code", "id", "meta", "resourceType", "status", "subject"}, true,
			func(t *testing.T, _, b map[string]any) {
				for _, e := range b["entry"].([]any) {
					res := e.(map[string]any)["resource"].(map[string]any)
					if res["resourceType"] == "Patient" && (res["contact"] == nil || subsettedTag(res)) {
						t.Errorf("_elements names Observation's elements; the included Patient must be whole: %v", keysOf(res))
					}
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			r := ts.do(http.MethodGet, "/"+c.query, nil).want(t, http.StatusOK)
			var res map[string]any
			for _, e := range r.JSON["entry"].([]any) {
				if em := e.(map[string]any); em["search"].(map[string]any)["mode"] == "match" {
					res = em["resource"].(map[string]any)
				}
			}
			if res == nil {
				t.Fatalf("no match: %s", r.Body)
			}
			if c.keys != nil {
				if got := keysOf(res); !slices.Equal(got, c.keys) {
					t.Errorf("members %v, want %v", got, c.keys)
				}
			}
			if subsettedTag(res) != c.subset {
				t.Errorf("SUBSETTED tag %v, want %v", subsettedTag(res), c.subset)
			}
			if c.check != nil {
				c.check(t, res, r.JSON)
			}
		})
	}

	r := ts.do(http.MethodGet, "/Patient?_summary=count", nil).want(t, http.StatusOK)
	if r.JSON["total"] != json.Number("1") || r.JSON["entry"] != nil {
		t.Errorf("_summary=count: %s", r.Body)
	}
	for q, says := range map[string]string{
		"Patient?_summary=maybe":               "_summary must be",
		"Patient?_summary=true&_elements=name": "cannot be combined",
		"Patient?_elements=colour":             "no top-level element",
		"Patient?_elements=name.family":        "no top-level element",
	} {
		r := ts.do(http.MethodGet, "/"+q, nil).want(t, http.StatusBadRequest)
		if !strings.Contains(r.outcome(t), says) {
			t.Errorf("%s: %s, want it to say %q", q, r.Body, says)
		}
	}
}

// TestReadSummaryAndElements: _summary and _elements apply to read and
// vread as to search (FHIR R4 search.html#summary, #elements): the
// resource read is the one a search with the same parameter returns, cut
// down and tagged SUBSETTED; _summary=count (search only) and an unknown
// element are refused, never ignored.
func TestReadSummaryAndElements(t *testing.T) {
	ts := newServer(t)
	loadFixtures(t, ts, summaryFixtures)
	for _, c := range []struct {
		path, params string
		status       int
	}{
		{"/Patient/ps", "_summary=true", http.StatusOK},
		{"/Patient/ps", "_summary=text", http.StatusOK},
		{"/Patient/ps", "_summary=data", http.StatusOK},
		{"/Patient/ps", "_elements=name,birthDate", http.StatusOK},
		{"/Observation/os", "_elements=value", http.StatusOK},
		{"/Observation/os", "_summary=true", http.StatusOK},
		{"/Observation/os/_history/1", "_elements=subject", http.StatusOK},
		{"/Patient/ps", "_summary=count", http.StatusBadRequest},
		{"/Patient/ps", "_elements=colour", http.StatusBadRequest},
		{"/Patient/ps", "_summary=true&_elements=name", http.StatusBadRequest},
	} {
		t.Run(c.path+"?"+c.params, func(t *testing.T) {
			r := ts.do(http.MethodGet, c.path+"?"+c.params, nil).want(t, c.status)
			if c.status != http.StatusOK {
				r.outcome(t)
				return
			}
			if !subsettedTag(r.JSON) {
				t.Errorf("no SUBSETTED tag: %s", r.Body)
			}
			typ, rest, _ := strings.Cut(strings.TrimPrefix(c.path, "/"), "/")
			id, _, _ := strings.Cut(rest, "/")
			s := ts.do(http.MethodGet, "/"+typ+"?_id="+id+"&"+c.params, nil).want(t, http.StatusOK)
			want := s.JSON["entry"].([]any)[0].(map[string]any)["resource"].(map[string]any)
			if got, w := keysOf(r.JSON), keysOf(want); !slices.Equal(got, w) {
				t.Errorf("read has %v, the search's resource %v", got, w)
			}
			gotJSON, _ := json.Marshal(r.JSON)
			wantJSON, _ := json.Marshal(want)
			if string(gotJSON) != string(wantJSON) {
				t.Errorf("read %s\nsearch %s", gotJSON, wantJSON)
			}
		})
	}
}
