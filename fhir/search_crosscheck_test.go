package fhir_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
)

// TestSearchAnswersAreTheBruteForceAnswers: every search of crossQueries
// answers, over HTTP from the store's indexes (on the backend the tests
// run on), exactly the resources of crossFixtures that the search's
// clauses match when each resource's index entries are computed from it
// and every clause is checked on every resource (search.Extract, then
// search.Matches: the brute-force answer), and a search the server
// refuses is one that does not parse. The fixtures vary what FHIR R4
// search.html makes subtle: value[x] of every kind, repeated elements,
// extensions, contained resources and references to them, resources
// lacking the element, dates of every precision with and without time
// zones, Periods and Timings, negative, zero, -0 and exponent numbers,
// UCUM quantities, identifiers with and without system, references
// relative, absolute, versioned and to other servers, values longer
// than an index key, meta tags, profiles, security labels and sources;
// the queries every parameter type, prefix and modifier (:missing,
// :exact, :contains, :not, :text, :Type), OR lists and AND repeats, and
// the parameters whose entries are other parameters' (combo-code,
// Observation patient).
func TestSearchAnswersAreTheBruteForceAnswers(t *testing.T) {
	ts := newServer(t)
	long := strings.Repeat("x", 600)
	type fixture struct {
		typ, id string
		entries []search.Entry
	}
	var fixtures []fixture
	for _, f := range crossFixtures {
		f = strings.ReplaceAll(f, "{L}", long)
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(f))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		typ, id := m["resourceType"].(string), m["id"].(string)
		ts.do(http.MethodPut, "/"+typ+"/"+id, f).want(t, http.StatusCreated)
		fixtures = append(fixtures, fixture{typ, id, registry.Extract(typ, m)})
	}
	matched := 0
	for _, raw := range crossQueries {
		typ, params := splitQuery(strings.ReplaceAll(raw, "{L}", long))
		var want []string
		q, parseErr := registry.Parse(typ, params, search.Options{})
		if parseErr == nil {
			for _, f := range fixtures {
				if f.typ != typ {
					continue
				}
				all := true
				for i := range q.Clauses {
					all = all && search.Matches(&q.Clauses[i], f.entries)
				}
				if all {
					want = append(want, f.id)
				}
			}
		}
		params.Set("_count", "1000")
		r := ts.do(http.MethodGet, "/"+typ+"?"+params.Encode(), nil)
		name := raw
		if len(name) > 120 {
			name = name[:120] + "…"
		}
		if parseErr != nil {
			if r.Status != http.StatusBadRequest {
				t.Errorf("%s: %d, want 400 (%v)", name, r.Status, parseErr)
			}
			continue
		}
		if r.Status != http.StatusOK {
			t.Errorf("%s: %d %s", name, r.Status, bytes.TrimSpace(r.Body))
			continue
		}
		got := bundleIDs(r.JSON)
		for i := range got {
			got[i] = got[i][strings.IndexByte(got[i], '/')+1:]
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: the server answers %v, brute force %v", name, got, want)
		}
		if len(want) > 0 {
			matched++
		}
	}
	if matched < len(crossQueries)/2 {
		t.Fatalf("only %d of %d searches match anything: too little to prove anything", matched, len(crossQueries))
	}
}

var crossFixtures = []string{
	`{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:mrn","value":"A1"},{"value":"NOSYS"}],"name":[{"family":"Müller","given":["Jörg","Anne-Marie"],"prefix":["Dr."]},{"text":"Joe Miller"}],"gender":"male","birthDate":"1970","telecom":[{"system":"phone","value":"555-1234"},{"system":"email","value":"J@Example.com"}],"address":[{"line":["1 Main St"],"city":"Springfield","state":"IL","postalCode":"62701","country":"US"}],"active":true,"extension":[{"url":"http://ext/x","valueString":"e"}],"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/0"}}`,
	`{"resourceType":"Patient","id":"p2","identifier":[{"system":"urn:mrn","value":"a1"}],"name":[{"family":"Muller","given":["Jorg"]}],"gender":"female","birthDate":"1970-06","deceasedDateTime":"2020-01-01T10:00:00+05:00","address":[{"city":"Spring field","text":"somewhere"}],"managingOrganization":{"reference":"Organization/o1"},"generalPractitioner":[{"reference":"http://other.example/fhir/Practitioner/pr1"}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Patient","id":"p3","name":[{"family":"Smith"}],"birthDate":"1970-06-15","deceasedBoolean":false,"active":false,"contained":[{"resourceType":"Organization","id":"org","name":"Inner"}],"managingOrganization":{"reference":"#org"}}`,
	`{"resourceType":"Patient","id":"p4","gender":"unknown","meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/3"}}`,
	`{"resourceType":"Organization","id":"o1","name":"Acme Health","identifier":[{"system":"urn:npi","value":"123"}],"address":[{"city":"Boston"}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Practitioner","id":"pr1","name":[{"family":"Who","given":["Doctor"]}]}`,
	`{"resourceType":"Observation","id":"o-q1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valueQuantity":{"value":5.4,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"},"effectiveDateTime":"2015-02-03T10:00:00Z","subject":{"reference":"Patient/p1"},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]},{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/2"}}`,
	`{"resourceType":"Observation","id":"o-q2","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"valueQuantity":{"value":5.4e2,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"},"effectiveDateTime":"2015-02-03","subject":{"reference":"http://other.example/fhir/Patient/p2"},"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":121,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"extension":[{"url":"http://ext/y","valueQuantity":{"value":9}}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Observation","id":"o-q3","status":"preliminary","code":{"text":"only text"},"valueQuantity":{"value":-0.0,"unit":"Cel","system":"http://unitsofmeasure.org","code":"Cel"},"effectiveDateTime":"2015","subject":{"reference":"Group/g1"},"performer":[{"reference":"Practitioner/pr1"},{"reference":"Organization/o1"}]}`,
	`{"resourceType":"Observation","id":"o-q4","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valueQuantity":{"value":0,"unit":"Cel","system":"http://unitsofmeasure.org","code":"Cel"},"effectiveDateTime":"2015-02-03T23:30:00-05:00","identifier":[{"system":"urn:obs","value":"OBS3"},{"value":"obs-nosys"}],"meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/1"}}`,
	`{"resourceType":"Observation","id":"o-q5","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"valueQuantity":{"value":-3.5,"code":"Cel"},"effectivePeriod":{"start":"2015-02-01T00:00:00Z","end":"2015-02-05"},"subject":{"reference":"Patient/p2"},"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":124,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"encounter":{"reference":"Encounter/e1"},"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Observation","id":"o-q6","status":"preliminary","code":{"text":"only text"},"valueQuantity":{"value":100,"unit":"g","system":"http://unitsofmeasure.org","code":"g"},"effectivePeriod":{"start":"2016-01-01"},"subject":{"reference":"#cp"},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]},{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"extension":[{"url":"http://ext/y","valueQuantity":{"value":9}}],"contained":[{"resourceType":"Patient","id":"cp","name":[{"family":"Contained"}]}]}`,
	`{"resourceType":"Observation","id":"o-q7","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valueQuantity":{"value":0.1,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"effectiveInstant":"2015-02-03T10:00:00.123Z","subject":{"reference":"Group/g1"},"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/0"}}`,
	`{"resourceType":"Observation","id":"o-q8","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"valueQuantity":{"value":1e-3,"unit":"mg"},"effectiveTiming":{"event":["2014-12-31T23:59:59+14:00","2017-05-05"]},"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":127,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Observation","id":"o-q9","status":"preliminary","code":{"text":"only text"},"valueQuantity":{"value":5.40,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"},"subject":{"reference":"Patient/p3"},"performer":[{"reference":"Practitioner/pr1"},{"reference":"Organization/o1"}]}`,
	`{"resourceType":"Observation","id":"o-cc","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valueCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"260385009","display":"Negative"}],"text":"neg"},"effectiveDateTime":"2015-02-03T10:00:00Z","subject":{"reference":"http://other.example/fhir/Patient/p2"},"extension":[{"url":"http://ext/y","valueQuantity":{"value":9}}],"encounter":{"reference":"Encounter/e1"},"meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/3"}}`,
	`{"resourceType":"Observation","id":"o-st","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"valueString":"Hello World Ünïcode","effectiveDateTime":"2015-02-03","subject":{"reference":"Group/g1"},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]},{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":130,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"identifier":[{"system":"urn:obs","value":"OBS10"},{"value":"obs-nosys"}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Observation","id":"o-bo","status":"preliminary","code":{"text":"only text"},"valueBoolean":true,"effectiveDateTime":"2015"}`,
	`{"resourceType":"Observation","id":"o-in","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valueInteger":-7,"effectiveDateTime":"2015-02-03T23:30:00-05:00","subject":{"reference":"Patient/p1"},"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/2"}}`,
	`{"resourceType":"Observation","id":"o-ra","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"valueRange":{"low":{"value":1,"unit":"mg"},"high":{"value":10,"unit":"mg"}},"effectivePeriod":{"start":"2015-02-01T00:00:00Z","end":"2015-02-05"},"subject":{"reference":"#cp"},"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":133,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"extension":[{"url":"http://ext/y","valueQuantity":{"value":9}}],"contained":[{"resourceType":"Patient","id":"cp","name":[{"family":"Contained"}]}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Observation","id":"o-rt","status":"preliminary","code":{"text":"only text"},"valueRatio":{"numerator":{"value":1},"denominator":{"value":2}},"effectivePeriod":{"start":"2016-01-01"},"subject":{"reference":"Group/g1"},"performer":[{"reference":"Practitioner/pr1"},{"reference":"Organization/o1"}],"encounter":{"reference":"Encounter/e1"}}`,
	`{"resourceType":"Observation","id":"o-sd","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valueSampledData":{"origin":{"value":0},"period":1,"dimensions":1,"data":"1 2"},"effectiveInstant":"2015-02-03T10:00:00.123Z","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]},{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/1"}}`,
	`{"resourceType":"Observation","id":"o-ti","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"valueTime":"10:00:00","effectiveTiming":{"event":["2014-12-31T23:59:59+14:00","2017-05-05"]},"subject":{"reference":"Patient/p2"},"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":136,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Observation","id":"o-dt","status":"preliminary","code":{"text":"only text"},"valueDateTime":"2021-03-04T05:06:07-08:00","subject":{"reference":"http://other.example/fhir/Patient/p2"},"identifier":[{"system":"urn:obs","value":"OBS17"},{"value":"obs-nosys"}],"extension":[{"url":"http://ext/y","valueQuantity":{"value":9}}]}`,
	`{"resourceType":"Observation","id":"o-pe","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"HR"},"valuePeriod":{"start":"2021-01-01","end":"2021-01-31"},"effectiveDateTime":"2015-02-03T10:00:00Z","subject":{"reference":"Group/g1"},"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/0"}}`,
	`{"resourceType":"Observation","id":"o-ab","status":"amended","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"},{"code":"bp"}]},"dataAbsentReason":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/data-absent-reason","code":"unknown"}]},"effectiveDateTime":"2015-02-03","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":139,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueCodeableConcept":{"coding":[{"system":"urn:x","code":"hi"}]}}],"encounter":{"reference":"Encounter/e1"},"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Condition","id":"c0","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"E11.9"}]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},"onsetDateTime":"2010-10-10","recordedDate":"2012-05-05T12:00:00+02:00","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"problem-list-item"}]}]}`,
	`{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p2"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006","display":"Diabetes"}]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"resolved"}]},"onsetAge":{"value":40,"unit":"a","system":"http://unitsofmeasure.org","code":"a"},"meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/3"}}`,
	`{"resourceType":"Condition","id":"c2","subject":{"reference":"Patient/p3"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"E11.9"}]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},"onsetPeriod":{"end":"2011"},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"problem-list-item"}]}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Condition","id":"c3","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006","display":"Diabetes"}]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"resolved"}]},"onsetString":"childhood","recordedDate":"2012-05-05T12:00:00+02:00"}`,
	`{"resourceType":"Condition","id":"c4","subject":{"reference":"Patient/p2"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"E11.9"}]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}]},"onsetRange":{"low":{"value":10,"code":"a","system":"http://unitsofmeasure.org"}},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"problem-list-item"}]}],"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/2"}}`,
	`{"resourceType":"Condition","id":"c5","subject":{"reference":"Patient/p3"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006","display":"Diabetes"}]},"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"resolved"}]},"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"MedicationRequest","id":"mr0","status":"active","intent":"order","subject":{"reference":"Patient/p1"},"authoredOn":"2019-01-01","contained":[{"resourceType":"Medication","id":"med","code":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"1049221"}]}}],"medicationReference":{"reference":"#med"}}`,
	`{"resourceType":"MedicationRequest","id":"mr1","status":"active","intent":"order","subject":{"reference":"Patient/p2"},"authoredOn":"2019-01-01T00:00:00Z","medicationCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"1049221"}]},"meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-medicationrequest"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/1"}}`,
	`{"resourceType":"MedicationRequest","id":"mr2","status":"active","intent":"order","subject":{"reference":"Patient/p3"},"authoredOn":"2019-12-31T23:59:59.999Z","contained":[{"resourceType":"Medication","id":"med","code":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"1049221"}]}}],"medicationReference":{"reference":"#med"},"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"MedicationRequest","id":"mr3","status":"active","intent":"order","subject":{"reference":"Patient/p1"},"authoredOn":"2019","medicationCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"1049221"}]},"requester":{"reference":"Practitioner/pr1","display":"Dr Who"}}`,
	`{"resourceType":"Encounter","id":"e1","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB"},"subject":{"reference":"Patient/p1"},"period":{"start":"2015-02-03T09:00:00Z","end":"2015-02-03T11:00:00Z"},"length":{"value":120,"unit":"min","system":"http://unitsofmeasure.org","code":"min"},"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-encounter"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/0"}}`,
	`{"resourceType":"Encounter","id":"e2","status":"in-progress","class":{"code":"EMER"},"subject":{"reference":"Patient/p2"},"period":{"start":"2015-02-03"},"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Coverage","id":"cov1","status":"active","beneficiary":{"reference":"Patient/p1"},"payor":[{"reference":"Organization/o1"}],"identifier":[{"system":"urn:member","value":"M-1"}]}`,
	`{"resourceType":"ExplanationOfBenefit","id":"eob1","status":"active","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"professional"}]},"use":"claim","patient":{"reference":"Patient/p1"},"created":"2020-02-02T02:02:02Z","insurer":{"reference":"Organization/o1"},"provider":{"reference":"Practitioner/pr1"},"outcome":"complete","billablePeriod":{"start":"2020-01-01","end":"2020-01-31"},"insurance":[{"focal":true,"coverage":{"reference":"Coverage/cov1"}}],"total":[{"category":{"coding":[{"code":"submitted"}]},"amount":{"value":100.5,"currency":"USD"}}],"meta":{"tag":[{"system":"urn:tags","code":"t1"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-explanationofbenefit"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/3"}}`,
	`{"resourceType":"Immunization","id":"im1","status":"completed","vaccineCode":{"coding":[{"system":"http://hl7.org/fhir/sid/cvx","code":"140"}]},"patient":{"reference":"Patient/p1"},"occurrenceString":"last year","meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"Immunization","id":"im2","status":"completed","vaccineCode":{"coding":[{"system":"http://hl7.org/fhir/sid/cvx","code":"140"}]},"patient":{"reference":"Patient/p2"},"occurrenceDateTime":"2021-09-09T09:09:09+09:00"}`,
	`{"resourceType":"RiskAssessment","id":"ra1","status":"final","subject":{"reference":"Patient/p1"},"prediction":[{"probabilityDecimal":0.25},{"probabilityDecimal":-1.5e-2},{"probabilityRange":{"low":{"value":0.1},"high":{"value":0.9}}}],"meta":{"tag":[{"system":"urn:tags","code":"t0"},{"code":"plain"}],"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-riskassessment"],"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}],"source":"http://src.example/2"}}`,
	`{"resourceType":"RiskAssessment","id":"ra2","status":"final","subject":{"reference":"Patient/p2"},"prediction":[{"probabilityDecimal":1E+1}],"meta":{"source":"#abc","versionId":"99","lastUpdated":"2001-01-01T00:00:00Z"}}`,
	`{"resourceType":"MolecularSequence","id":"ms1","type":"dna","coordinateSystem":0,"referenceSeq":{"chromosome":{"coding":[{"code":"1"}]}},"variant":[{"start":-5,"end":0}]}`,
	`{"resourceType":"Patient","id":"plong1","identifier":[{"system":"urn:long","value":"{L}1"}],"name":[{"family":"F{L}a","given":["G"]}],"managingOrganization":{"reference":"Organization/oooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo"}}`,
	`{"resourceType":"Patient","id":"plong2","identifier":[{"system":"urn:long","value":"{L}2"},{"system":"urn:long","value":"{L}1"}],"name":[{"family":"F{L}b"}]}`,
	`{"resourceType":"Observation","id":"olong","status":"final","code":{"coding":[{"system":"urn:long","code":"{L}c"}],"text":"T{L}"},"subject":{"reference":"http://example.org/fhir/Patient/{L}"},"valueString":"S{L}v"}`,
	`{"resourceType":"Provenance","id":"prov0","recorded":"2024-01-01T00:00:00Z","target":[{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"}],"agent":[{"who":{"reference":"Organization/o1"}}]}`,
	`{"resourceType":"Provenance","id":"prov1","recorded":"2024-01-02T00:00:00Z","target":[{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"}],"agent":[{"who":{"reference":"Organization/o1"}}]}`,
	`{"resourceType":"Provenance","id":"prov2","recorded":"2024-01-03T00:00:00Z","target":[{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"}],"agent":[{"who":{"reference":"Organization/o1"}}]}`,
	`{"resourceType":"Provenance","id":"prov3","recorded":"2024-01-04T00:00:00Z","target":[{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"}],"agent":[{"who":{"reference":"Organization/o1"}}]}`,
	`{"resourceType":"Provenance","id":"prov4","recorded":"2024-01-05T00:00:00Z","target":[{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"},{"reference":"Observation/o-q7"},{"reference":"Observation/o-q8"},{"reference":"Observation/o-q9"},{"reference":"Observation/o-q1"},{"reference":"Observation/o-q2"},{"reference":"Observation/o-q3"},{"reference":"Observation/o-q4"},{"reference":"Observation/o-q5"},{"reference":"Observation/o-q6"}],"agent":[{"who":{"reference":"Organization/o1"}}]}`,
}

var crossQueries = []string{
	`Patient?name=muller`,
	`Patient?name=mül`,
	`Patient?name:exact=Müller`,
	`Patient?name:exact=muller`,
	`Patient?name:contains=ller`,
	`Patient?name:contains=NNE-M`,
	`Patient?family=Muller`,
	`Patient?given=jorg`,
	`Patient?name:missing=true`,
	`Patient?name:missing=false`,
	`Patient?identifier=A1`,
	`Patient?identifier=urn:mrn|A1`,
	`Patient?identifier=urn:mrn|a1`,
	`Patient?identifier=|NOSYS`,
	`Patient?identifier=NOSYS`,
	`Patient?identifier=urn:mrn|`,
	`Patient?identifier:missing=true`,
	`Patient?identifier:not=urn:mrn|A1`,
	`Patient?identifier:text=x`,
	`Patient?gender=male,female`,
	`Patient?gender:not=male`,
	`Patient?gender:missing=true`,
	`Patient?birthdate=1970`,
	`Patient?birthdate=1970-06`,
	`Patient?birthdate=eq1970-06-15`,
	`Patient?birthdate=ge1970-06-01`,
	`Patient?birthdate=gt1970-06`,
	`Patient?birthdate=lt1970-06-15`,
	`Patient?birthdate=le1970-06-15`,
	`Patient?birthdate=sa1969`,
	`Patient?birthdate=eb1971`,
	`Patient?birthdate=ne1970-06`,
	`Patient?birthdate=ap1970-06-10`,
	`Patient?birthdate:missing=true`,
	`Patient?death-date=2020-01-01`,
	`Patient?death-date=2020-01-01T05:00:00Z`,
	`Patient?death-date=lt2020-01-01T05:00:00Z`,
	`Patient?death-date=ge2020-01-01T05:00:00Z`,
	`Patient?deceased=true`,
	`Patient?deceased=false`,
	`Patient?active=true`,
	`Patient?active=false`,
	`Patient?active:missing=true`,
	`Patient?telecom=555-1234`,
	`Patient?email=j@example.com`,
	`Patient?email=J@Example.com`,
	`Patient?phone=phone|555-1234`,
	`Patient?address=springfield`,
	`Patient?address-city=Spring`,
	`Patient?address:contains=field`,
	`Patient?address-postalcode=62701`,
	`Patient?address-country=US`,
	`Patient?organization=Organization/o1`,
	`Patient?organization=o1`,
	`Patient?organization:missing=true`,
	`Patient?organization:Organization=o1`,
	`Patient?general-practitioner=Practitioner/pr1`,
	`Patient?general-practitioner=http://other.example/fhir/Practitioner/pr1`,
	`Patient?_id=p1,p3`,
	`Patient?_id:not=p1`,
	`Patient?_id:missing=false`,
	`Observation?code=8867-4`,
	`Observation?code=http://loinc.org|8867-4`,
	`Observation?code=http://loinc.org|`,
	`Observation?code=|bp`,
	`Observation?code=bp`,
	`Observation?code:text=heart`,
	`Observation?code:text=only`,
	`Observation?code:text=HR`,
	`Observation?code:not=8867-4`,
	`Observation?code:missing=true`,
	`Observation?combo-code=8480-6`,
	`Observation?combo-code=8867-4,8462-4`,
	`Observation?component-code=8480-6`,
	`Observation?component-code:missing=true`,
	`Observation?component-code:missing=false`,
	`Observation?combo-code:missing=true`,
	`Observation?value-quantity=5.4`,
	`Observation?value-quantity=5.4|http://unitsofmeasure.org|mg`,
	`Observation?value-quantity=5.40`,
	`Observation?value-quantity=540`,
	`Observation?value-quantity=5.4e2`,
	`Observation?value-quantity=5e2`,
	`Observation?value-quantity=0`,
	`Observation?value-quantity=-0`,
	`Observation?value-quantity=0.0`,
	`Observation?value-quantity=lt0`,
	`Observation?value-quantity=le0`,
	`Observation?value-quantity=gt0`,
	`Observation?value-quantity=ge0`,
	`Observation?value-quantity=ne0`,
	`Observation?value-quantity=lt-1`,
	`Observation?value-quantity=gt-4`,
	`Observation?value-quantity=-3.5`,
	`Observation?value-quantity=-3.5||Cel`,
	`Observation?value-quantity=ap5`,
	`Observation?value-quantity=ap100`,
	`Observation?value-quantity=sa5`,
	`Observation?value-quantity=eb6`,
	`Observation?value-quantity=0.001`,
	`Observation?value-quantity=1e-3`,
	`Observation?value-quantity=1e-3||mg`,
	`Observation?value-quantity=100|http://unitsofmeasure.org|g`,
	`Observation?value-quantity=0.1|http://unitsofmeasure.org|kg`,
	`Observation?value-quantity=1`,
	`Observation?value-quantity=10`,
	`Observation?value-quantity=gt1000`,
	`Observation?value-quantity:missing=true`,
	`Observation?value-quantity:missing=false`,
	`Observation?value-concept=260385009`,
	`Observation?value-concept:text=neg`,
	`Observation?value-concept:text=negative`,
	`Observation?value-concept:missing=false`,
	`Observation?value-string=hello`,
	`Observation?value-string=hello world ünïcode`,
	`Observation?value-string=hello world unicode`,
	`Observation?value-string:exact=Hello World Ünïcode`,
	`Observation?value-string:contains=world`,
	`Observation?value-string:missing=false`,
	`Observation?value-date=2021-03-04`,
	`Observation?value-date=2021-03-04T13:06:07Z`,
	`Observation?value-date=2021-01`,
	`Observation?value-date=ge2021-01-15`,
	`Observation?value-date=sa2020`,
	`Observation?value-date:missing=false`,
	`Observation?date=2015-02-03`,
	`Observation?date=2015-02-03T10:00:00Z`,
	`Observation?date=2015-02-03T10:00:00.123Z`,
	`Observation?date=2015-02-04`,
	`Observation?date=2015`,
	`Observation?date=2015-02`,
	`Observation?date=gt2015-02-03`,
	`Observation?date=ge2015-02-03`,
	`Observation?date=lt2015-02-03`,
	`Observation?date=le2015-02-03`,
	`Observation?date=lt2015-02-03T10:00:00Z`,
	`Observation?date=ge2015-02-03T10:00:00+01:00`,
	`Observation?date=sa2015-12-31`,
	`Observation?date=eb2015`,
	`Observation?date=ne2015`,
	`Observation?date=ap2015-02-03`,
	`Observation?date=2014-12-31`,
	`Observation?date=2014-12-31T09:59:59Z`,
	`Observation?date=2017-05-05`,
	`Observation?date=gt2030`,
	`Observation?date=2016-06`,
	`Observation?date:missing=true`,
	`Observation?date=ge2015-02-01&date=le2015-02-28`,
	`Observation?date=ge2015-02-04T04:00:00Z&date=lt2015-02-04T05:00:00Z`,
	`Observation?subject=Patient/p1`,
	`Observation?subject=p1`,
	`Observation?subject=p2`,
	`Observation?subject=Patient/p2`,
	`Observation?subject=http://other.example/fhir/Patient/p2`,
	`Observation?subject:Patient=p1`,
	`Observation?subject:Group=g1`,
	`Observation?subject:missing=true`,
	`Observation?subject=Patient/p1/_history/1`,
	`Observation?subject=#cp`,
	`Observation?subject=cp`,
	`Observation?patient=p1`,
	`Observation?patient=Patient/p2`,
	`Observation?patient=g1`,
	`Observation?patient:missing=true`,
	`Observation?patient:missing=false`,
	`Observation?performer=Practitioner/pr1`,
	`Observation?encounter=e1`,
	`Observation?category=vital-signs`,
	`Observation?category=laboratory`,
	`Observation?category:not=vital-signs`,
	`Observation?status=final`,
	`Observation?status=final,amended`,
	`Observation?status:not=final`,
	`Observation?status:not=final&status:not=amended`,
	`Observation?identifier=OBS3`,
	`Observation?identifier=urn:obs|OBS3`,
	`Observation?identifier=obs-nosys`,
	`Observation?identifier=|obs-nosys`,
	`Observation?data-absent-reason=unknown`,
	`Observation?data-absent-reason:missing=false`,
	`Observation?code-value-quantity=http://loinc.org|8867-4$5.4`,
	`Observation?code-value-quantity=8867-4$gt5`,
	`Observation?code-value-quantity=85354-9$540`,
	`Observation?code-value-concept=http://loinc.org|85354-9$260385009`,
	`Observation?code-value-concept=only text$260385009`,
	`Observation?combo-code-value-quantity=8480-6$lt130`,
	`Observation?combo-code-value-quantity=8480-6$gt130`,
	`Observation?component-code-value-quantity=8480-6$121`,
	`Observation?component-code-value-quantity=8480-6$ge122`,
	`Observation?component-code-value-concept=8462-4$hi`,
	`Observation?combo-code-value-concept=8462-4$urn:x|hi`,
	`Observation?code-value-string=8867-4$hello`,
	`Observation?code-value-date=8867-4$2021`,
	`Observation?component-value-quantity=121`,
	`Observation?component-value-quantity=gt125`,
	`Observation?combo-value-quantity=5.4`,
	`Observation?combo-value-quantity=gt125`,
	`Observation?combo-value-concept=hi`,
	`Observation?combo-data-absent-reason:missing=true`,
	`Observation?_id=o-q1,o-st`,
	`Observation?code=8867-4&value-quantity=gt5&date=ge2015`,
	`Observation?subject=Patient/p1&code=85354-9`,
	`Condition?onset-date=2010`,
	`Condition?onset-date=2010-10-10`,
	`Condition?onset-date=le2011-06`,
	`Condition?onset-date=lt2010`,
	`Condition?onset-date:missing=true`,
	`Condition?onset-age=40`,
	`Condition?onset-age=ge10`,
	`Condition?onset-age=gt10||a`,
	`Condition?onset-age=lt20|http://unitsofmeasure.org|a`,
	`Condition?onset-age:missing=true`,
	`Condition?onset-info=childhood`,
	`Condition?recorded-date=2012-05-05`,
	`Condition?recorded-date=2012-05-05T10:00:00Z`,
	`Condition?recorded-date=gt2012-05-05T10:00:00Z`,
	`Condition?code=E11.9`,
	`Condition?code=http://snomed.info/sct|44054006`,
	`Condition?code:text=diabetes`,
	`Condition?clinical-status=active`,
	`Condition?clinical-status:not=resolved`,
	`Condition?category=problem-list-item`,
	`Condition?category:missing=true`,
	`Condition?patient=p1`,
	`MedicationRequest?code=1049221`,
	`MedicationRequest?code=http://www.nlm.nih.gov/research/umls/rxnorm|1049221`,
	`MedicationRequest?medication=#med`,
	`MedicationRequest?medication:missing=true`,
	`MedicationRequest?medication:missing=false`,
	`MedicationRequest?authoredon=2019-01-01`,
	`MedicationRequest?authoredon=2019`,
	`MedicationRequest?authoredon=2019-12-31`,
	`MedicationRequest?authoredon=gt2019-12-31T23:59:59Z`,
	`MedicationRequest?authoredon=ge2019-12-31T23:59:59.999Z`,
	`MedicationRequest?authoredon=lt2019-01-01T00:00:01Z`,
	`MedicationRequest?requester=pr1`,
	`Encounter?date=2015-02-03`,
	`Encounter?date=2015-02-03T10:00:00Z`,
	`Encounter?date=gt2015-02-04`,
	`Encounter?date=lt2015-02-03T09:00:00Z`,
	`Encounter?date=sa2015-02-02`,
	`Encounter?length=120`,
	`Encounter?length=2|http://unitsofmeasure.org|h`,
	`Encounter?class=AMB`,
	`Coverage?beneficiary=p1`,
	`Coverage?identifier=M-1`,
	`ExplanationOfBenefit?patient=p1`,
	`ExplanationOfBenefit?created=2020-02-02`,
	`ExplanationOfBenefit?created=ge2020-02-02T02:02:02Z`,
	`ExplanationOfBenefit?type=professional`,
	`ExplanationOfBenefit?coverage=Coverage/cov1`,
	`ExplanationOfBenefit?provider=Practitioner/pr1`,
	`Immunization?date=2021-09-09`,
	`Immunization?date=2021-09-09T00:09:09Z`,
	`Immunization?date:missing=true`,
	`Immunization?vaccine-code=140`,
	`RiskAssessment?probability=0.25`,
	`RiskAssessment?probability=-0.015`,
	`RiskAssessment?probability=-1.5e-2`,
	`RiskAssessment?probability=lt0`,
	`RiskAssessment?probability=gt0.5`,
	`RiskAssessment?probability=10`,
	`RiskAssessment?probability=1e1`,
	`RiskAssessment?probability=ge1E+1`,
	`RiskAssessment?probability=0.5`,
	`RiskAssessment?probability=ap0.3`,
	`MolecularSequence?variant-start=-5`,
	`MolecularSequence?variant-start=lt0`,
	`MolecularSequence?variant-end=0`,
	`MolecularSequence?variant-end=-0`,
	`MolecularSequence?coordinate=1$lt0`,
	`Observation?status=final&patient=p1`,
	`Observation?status=final,amended&patient=Patient/p2`,
	`Observation?status=final&patient:missing=true`,
	`Observation?status=preliminary&patient:missing=false`,
	`Observation?status=amended&combo-code=8480-6`,
	`Observation?status=amended&combo-code:missing=false`,
	`Observation?status=final&combo-code:not=8867-4`,
	`Observation?combo-code:not=8480-6`,
	`Observation?patient:not=p1`,
	`Observation?status=final&combo-value-quantity=ge5`,
	`Observation?status:not=final&combo-value-quantity=gt100`,
	`Observation?combo-code=8480-6&status:not=amended`,
	`Observation?combo-code=8480-6&patient=p2`,
	`Observation?patient=p1&combo-code=8867-4`,
	`Observation?_id=o-q1,o-q2,o-q5&patient=p1`,
	`Observation?_id=o-q1,o-q2,o-q5&combo-code=8480-6`,
	`Observation?_id:not=o-q1&status=final`,
	`Observation?code=8867-4&code=http://loinc.org|8867-4`,
	`Observation?code=8867-4,8867-4`,
	`Observation?code=8867-4&code:not=bp`,
	`Observation?category=vital-signs&category=laboratory`,
	`Observation?subject:Patient=p1,p2`,
	`Observation?performer=Practitioner/pr1&performer=Organization/o1`,
	`Observation?performer=Practitioner/pr1&status:not=amended&date=ge2015`,
	`Observation?value-concept=http://snomed.info/sct|260385009&status=final`,
	`Observation?value-string:exact=Hello World Ünïcode&status=final`,
	`Observation?value-string:exact=hello world ünïcode`,
	`Observation?identifier=urn:obs|OBS3&identifier=obs-nosys`,
	`Observation?identifier=urn:obs|`,
	`Observation?identifier:not=obs-nosys`,
	`Observation?data-absent-reason=unknown&combo-code=8480-6`,
	`Patient?_id=p1&name=muller`,
	`Patient?_id=p1,p2&identifier=urn:mrn|a1`,
	`Patient?gender=male&address-city=springfield`,
	`Patient?email=J@Example.com&phone=555-1234`,
	`Patient?telecom=email|J@Example.com`,
	`Patient?organization=Organization/o1&gender=female`,
	`Patient?general-practitioner:missing=false`,
	`Patient?link:missing=true`,
	`Condition?code=E11.9&patient=p1`,
	`Condition?subject=Patient/p1&onset-age:missing=false`,
	`MedicationRequest?subject=p1&medication:missing=true`,
	`Encounter?class=AMB&date=2015-02-03`,
	`Encounter?subject=p1&length=gt100`,
	`ExplanationOfBenefit?patient=p1&created=ge2020`,
	`Immunization?patient=p1&vaccine-code=140`,
	`RiskAssessment?subject=p1&probability=gt0.2`,
	`RiskAssessment?probability=ge0.9`,
	`RiskAssessment?probability=le0.1`,
	`Observation?_tag=plain`,
	`Observation?_tag=urn:tags|t0`,
	`Observation?_tag=urn:tags|`,
	`Observation?_tag:not=urn:tags|t1`,
	`Observation?_tag:missing=true`,
	`Observation?_tag=plain&status=final`,
	`Patient?_tag=urn:tags|t1,urn:tags|t0`,
	`Observation?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation`,
	`Observation?_profile:missing=false`,
	`Patient?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient`,
	`Observation?_security=R`,
	`Observation?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R&code=8867-4`,
	`Observation?_source=http://src.example/0`,
	`Observation?_source=#abc`,
	`Observation?_source:missing=true`,
	`Condition?_source=http://src.example/1`,
	`Patient?identifier=urn:long|{L}1`,
	`Patient?identifier={L}2`,
	`Patient?identifier=urn:long|{L}3`,
	`Patient?identifier=urn:long|xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`,
	`Patient?family=F{L}`,
	`Patient?family=F{L}a`,
	`Patient?family:exact=F{L}b`,
	`Patient?family:exact=F{L}`,
	`Patient?family:contains=xxxxxxxxxxxxxxxxxxxxb`,
	`Observation?code=urn:long|{L}c`,
	`Observation?code={L}c&status=final`,
	`Observation?code:text=txxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`,
	`Observation?subject=http://example.org/fhir/Patient/{L}`,
	`Observation?value-string=s{L}`,
	`Observation?value-string:exact=S{L}v`,
	`Observation?value-string:exact=S{L}`,
	`Provenance?target=Observation/o-q1`,
	`Provenance?target=Observation/o-q1&recorded=ge2024-01-10`,
	`Provenance?recorded=2024-01-05`,
	`Provenance?agent=Organization/o1&recorded=lt2024-01-03`,
}

// splitQuery splits a query of crossQueries, Type?name=value&..., into
// its type and its parameters, taken as they are (not unescaped).
func splitQuery(raw string) (typ string, params url.Values) {
	typ, query, _ := strings.Cut(raw, "?")
	params = url.Values{}
	for kv := range strings.SplitSeq(query, "&") {
		k, v, _ := strings.Cut(kv, "=")
		params.Add(k, v)
	}
	return typ, params
}
