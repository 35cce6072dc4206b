package fhir_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestSearchRefusesWhatItDoesNotSupport: a search feature of FHIR R4
// search.html the server does not support is refused with 400 and an
// OperationOutcome naming it, never answered as if it were absent (which
// would give every resource the other parameters match): the :identifier
// modifier on reference parameters (search.html#reference: it matches
// Reference.identifier, which the reference indexes do not hold), _has
// (search.html#has, reverse chaining), and the token modifiers :in,
// :not-in, :above, :below and :of-type (search.html#token: they need
// terminology). Under Prefer: handling=lenient (search.html#errors: the
// server ignores unknown or unsupported parameters) _has is left out and
// named in an outcome entry and the self link; an unsupported modifier of
// a known parameter is still refused, as a value it cannot read.
func TestSearchRefusesWhatItDoesNotSupport(t *testing.T) {
	ts := newServer(t)
	loadFixtures(t, ts, searchFixtures)
	rows := []struct {
		query, names string
		lenientOK    bool // answered under handling=lenient, the feature left out
	}{
		{"Observation?subject:identifier=urn:mrn|1001", ":identifier", false},
		{"Observation?patient:identifier=urn:mrn|1001", ":identifier", false},
		{"Observation?performer:identifier=urn:npi|1", ":identifier", false},
		{"Observation?subject:identifier=urn:mrn|1001&status=final", ":identifier", false},
		{"Patient?_has:Observation:patient:code=8867-4", "_has", true},
		{"Patient?_has:Observation:subject:status=final&gender=male", "_has", true},
		{"Observation?code:in=http://example.org/ValueSet/vitals", ":in", false},
		{"Observation?code:not-in=http://example.org/ValueSet/vitals", ":not-in", false},
		{"Observation?code:below=http://loinc.org|8867", ":below", false},
		{"Observation?code:above=http://loinc.org|8867-4", ":above", false},
		{"Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|1001", ":of-type", false},
	}
	for _, row := range rows {
		t.Run(row.query, func(t *testing.T) {
			r := ts.do(http.MethodGet, "/"+row.query, nil).want(t, http.StatusBadRequest)
			if oo := r.outcome(t); !strings.Contains(oo, row.names) || !strings.Contains(oo, "not supported") {
				t.Errorf("the refusal does not say %s is not supported: %s", row.names, oo)
			}
			l := ts.do(http.MethodGet, "/"+row.query, nil, "Prefer", "handling=lenient")
			if !row.lenientOK {
				l.want(t, http.StatusBadRequest).outcome(t)
				return
			}
			l.want(t, http.StatusOK)
			if !strings.Contains(outcomes(l.JSON), "_has") {
				t.Errorf("lenient: no outcome entry names _has: %.600s", l.Body)
			}
			for k := range selfParams(t, l.JSON) {
				if strings.HasPrefix(k, "_has") {
					t.Errorf("lenient: the self link lists %s, which was not applied", k)
				}
			}
		})
	}

	// The CapabilityStatement claims none of them: no _has search
	// parameter, and no parameter documented with those modifiers.
	cs := ts.do(http.MethodGet, "/metadata", nil).want(t, http.StatusOK)
	rest := cs.JSON["rest"].([]any)[0].(map[string]any)
	for _, res := range rest["resource"].([]any) {
		res := res.(map[string]any)
		params, _ := res["searchParam"].([]any)
		for _, sp := range params {
			sp := sp.(map[string]any)
			doc, _ := sp["documentation"].(string)
			if sp["name"] == "_has" || strings.Contains(doc, ":identifier") || strings.Contains(doc, ":in") || strings.Contains(doc, ":of-type") {
				t.Errorf("the CapabilityStatement claims %v for %v", sp, res["type"])
			}
		}
	}
}
