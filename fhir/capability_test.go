package fhir_test

import (
	"net/http"
	"net/url"
	"testing"
)

// TestCapabilityStatementTellsTheTruth: every type, search parameter and
// include the CapabilityStatement lists is accepted by the server.
func TestCapabilityStatementTellsTheTruth(t *testing.T) {
	ts := newServer(t)
	cs := ts.do(http.MethodGet, "/metadata", nil).want(t, http.StatusOK).JSON
	if cs["resourceType"] != "CapabilityStatement" || cs["fhirVersion"] != "4.0.1" {
		t.Fatalf("metadata: %v %v", cs["resourceType"], cs["fhirVersion"])
	}
	rest := cs["rest"].([]any)[0].(map[string]any)
	resources := rest["resource"].([]any)
	if len(resources) < 140 {
		t.Fatalf("only %d resource types listed", len(resources))
	}
	params, checked := 0, 0
	for _, r := range resources {
		res := r.(map[string]any)
		typ := res["type"].(string)
		sps, _ := res["searchParam"].([]any)
		for _, sp := range sps {
			name := sp.(map[string]any)["name"].(string)
			params++
			// Check a sample of every type, and every parameter of the
			// types the payer-to-payer exchange uses.
			if params%7 != 0 && !core[typ] {
				continue
			}
			checked++
			q := url.Values{name + ":missing": {"true"}, "_summary": {"count"}}
			if r := ts.do(http.MethodGet, "/"+typ+"?"+q.Encode(), nil); r.Status != http.StatusOK {
				t.Errorf("%s?%s: %d %.200s", typ, name, r.Status, r.Body)
			}
		}
		incs, _ := res["searchInclude"].([]any)
		for _, inc := range incs {
			if !core[typ] {
				break
			}
			q := url.Values{"_include": {inc.(string)}}
			if r := ts.do(http.MethodGet, "/"+typ+"?"+q.Encode(), nil); r.Status != http.StatusOK {
				t.Errorf("%s?_include=%s: %d", typ, inc, r.Status)
			}
		}
	}
	if checked < 400 {
		t.Errorf("checked only %d of %d listed parameters", checked, params)
	}
	for typ := range core {
		found := false
		for _, r := range resources {
			if r.(map[string]any)["type"] == typ {
				found = true
			}
		}
		if !found {
			t.Errorf("%s missing from the CapabilityStatement", typ)
		}
	}
}

var core = map[string]bool{
	"Patient": true, "Practitioner": true, "PractitionerRole": true, "Organization": true, "Location": true,
	"Coverage": true, "ExplanationOfBenefit": true, "Claim": true, "Encounter": true, "Condition": true,
	"Observation": true, "Procedure": true, "MedicationRequest": true, "Immunization": true,
	"AllergyIntolerance": true, "Appointment": true, "CoverageEligibilityRequest": true,
	"CoverageEligibilityResponse": true, "Task": true, "Provenance": true, "Subscription": true, "Consent": true,
}
