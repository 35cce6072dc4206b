package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestInvalidEntryBatchVersusTransaction is the rule of FHIR R4 http.html
// for an entry that is not valid: in a batch (3.1.0.11.1, "Batch Processing
// Rules") each entry is processed on its own and the batch answers 200
// whatever its entries' outcomes, so an invalid entry is that entry's
// failure only (400 with an OperationOutcome in its response) and the
// other entries are written; in a transaction (3.1.0.11.2, "Transaction
// Processing Rules") the server accepts all actions or rejects them all,
// so the same entry fails the whole Bundle and nothing is written.
func TestInvalidEntryBatchVersusTransaction(t *testing.T) {
	good := func(family string) string {
		return `{"resource":{"resourceType":"Patient","name":[{"family":"` + family + `"}]},"request":{"method":"POST","url":"Patient"}}`
	}
	for _, c := range []struct {
		name  string
		entry string
		says  string // in the entry's (or the transaction's) OperationOutcome
	}{
		{"bad date", `{"resource":{"resourceType":"Patient","birthDate":"not-a-date"},"request":{"method":"POST","url":"Patient"}}`,
			"Bundle.entry[1].resource.birthDate"},
		{"unknown element", `{"resource":{"resourceType":"Patient","favouriteColour":"green"},"request":{"method":"POST","url":"Patient"}}`,
			"Bundle.entry[1].resource.favouriteColour"},
		{"wrong JSON type", `{"resource":{"resourceType":"Patient","active":"yes"},"request":{"method":"POST","url":"Patient"}}`,
			"Bundle.entry[1].resource.active"},
		{"single value where an array belongs", `{"resource":{"resourceType":"Patient","name":{"family":"One"}},"request":{"method":"POST","url":"Patient"}}`,
			"Bundle.entry[1].resource.name"},
		{"missing resourceType", `{"resource":{"birthDate":"2000-01-01"},"request":{"method":"POST","url":"Patient"}}`,
			"Bundle.entry[1].resource"},
		{"bad id", `{"resource":{"resourceType":"Patient","id":"bad id!"},"request":{"method":"PUT","url":"Patient/x"}}`,
			"Bundle.entry[1].resource.id"},
		{"bad request method", `{"resource":{"resourceType":"Patient"},"request":{"method":"FETCH","url":"Patient"}}`,
			"Bundle.entry[1].request.method"},
		{"no request", `{"resource":{"resourceType":"Patient"}}`,
			"entry 1"},
		{"request URL of no resource type", `{"request":{"method":"GET","url":"Nothing/1"}}`,
			"does not name a resource type"},
		// A version is only read: PUT or DELETE of Type/id/_history/vid
		// is no R4 interaction (http.html#vread; over REST it is 405).
		{"PUT of a version URL", `{"resource":{"resourceType":"Patient","id":"x"},"request":{"method":"PUT","url":"Patient/x/_history/1"}}`,
			"only GET and HEAD may name a version"},
		{"DELETE of a version URL", `{"request":{"method":"DELETE","url":"Patient/x/_history/1"}}`,
			"only GET and HEAD may name a version"},
		// bdl-8: fullUrl cannot be a version specific reference.
		{"version-specific fullUrl", `{"fullUrl":"http://example.org/fhir/Patient/x/_history/1","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}`,
			"bdl-8"},
		{"resource of another type than the URL", `{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"}},"request":{"method":"POST","url":"Patient"}}`,
			"is for Patient"},
	} {
		t.Run(c.name, func(t *testing.T) {
			entries := strings.Join([]string{good("First"), c.entry, good("Third")}, ",")
			ts := newServer(t)
			r := ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"batch","entry":[`+entries+`]}`).want(t, http.StatusOK)
			if r.JSON["type"] != "batch-response" {
				t.Fatalf("type %v", r.JSON["type"])
			}
			got := r.JSON["entry"].([]any)
			if len(got) != 3 {
				t.Fatalf("%d entries answered: %s", len(got), r.Body)
			}
			for i, want := range []string{"201 Created", "400 Bad Request", "201 Created"} {
				resp := got[i].(map[string]any)["response"].(map[string]any)
				if resp["status"] != want {
					t.Errorf("entry %d: %v, want %s", i, resp["status"], want)
				}
			}
			resp := got[1].(map[string]any)["response"].(map[string]any)
			oo, _ := resp["outcome"].(map[string]any)
			if oo["resourceType"] != "OperationOutcome" || !strings.Contains(fmt.Sprint(oo), c.says) {
				t.Errorf("the invalid entry's outcome does not say %q: %v", c.says, oo)
			}
			if n := ts.do(http.MethodGet, "/Patient?_summary=count", nil).JSON["total"]; n != json.Number("2") {
				t.Errorf("%v patients written by the batch, want the 2 valid entries", n)
			}

			ts = newServer(t)
			r = ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"transaction","entry":[`+entries+`]}`).want(t, http.StatusBadRequest)
			if text := string(r.Body); r.JSON["resourceType"] != "OperationOutcome" || !strings.Contains(text, strings.ReplaceAll(c.says, `"`, `\"`)) {
				t.Errorf("the transaction's outcome does not say %q: %s", c.says, r.Body)
			}
			if n := ts.do(http.MethodGet, "/Patient?_summary=count", nil).JSON["total"]; n != json.Number("0") {
				t.Errorf("a refused transaction wrote %v patients", n)
			}
		})
	}
	// Problems outside the entries fail a batch as a whole.
	ts := newServer(t)
	ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"batch","total":"many","entry":[`+good("Only")+`]}`).want(t, http.StatusBadRequest)
	if n := ts.do(http.MethodGet, "/Patient?_summary=count", nil).JSON["total"]; n != json.Number("0") {
		t.Errorf("a refused batch wrote %v patients", n)
	}
}

// TestBatchEntriesReferringToEachOther: in a batch, "there SHALL be no
// interdependencies between the different entries in the Bundle that
// cause change on the server … Servers SHOULD validate that this is the
// case" (FHIR R4 http.html, 3.1.0.11.1 "Batch Processing Rules"). An entry
// whose resource refers to another entry's fullUrl would be stored with a
// reference to nothing, whether that entry failed or not: it fails with
// 400 on its own. A reference that names no entry is stored as sent, as a
// plain create stores it; the same entries in a transaction are resolved.
func TestBatchEntriesReferringToEachOther(t *testing.T) {
	const uuid = "urn:uuid:5b0e4fd2-8e64-4a57-9e0e-1d0c3b5e2c11"
	patient := func(fullURL, birthDate string) string {
		return `{"fullUrl":"` + fullURL + `","resource":{"resourceType":"Patient","birthDate":"` + birthDate + `"},"request":{"method":"POST","url":"Patient"}}`
	}
	obs := func(method, url, ref string) string {
		return `{"resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"` + ref + `"}},"request":{"method":"` + method + `","url":"` + url + `"}}`
	}
	for _, c := range []struct {
		name      string
		entries   []string
		want      []string
		says      string
		txResolve bool // the same entries as a transaction succeed
	}{
		{"refers to an entry that failed", []string{patient(uuid, "not-a-date"), obs("POST", "Observation", uuid)},
			[]string{"400 Bad Request", "400 Bad Request"}, "is the fullUrl of entry 0", false},
		{"refers to an entry that succeeded", []string{patient(uuid, "1970-01-01"), obs("POST", "Observation", uuid)},
			[]string{"201 Created", "400 Bad Request"}, "is the fullUrl of entry 0", true},
		{"refers to a later entry, by PUT", []string{obs("PUT", "Observation/o1", uuid), patient(uuid, "1970-01-01")},
			[]string{"400 Bad Request", "201 Created"}, "is the fullUrl of entry 1", true},
		{"refers to an absolute RESTful fullUrl", []string{patient("http://example.org/fhir/Patient/p9", "1970-01-01"), obs("POST", "Observation", "http://example.org/fhir/Patient/p9")},
			[]string{"201 Created", "400 Bad Request"}, "is the fullUrl of entry 0", true},
		{"a urn:uuid reference that names no entry is stored as sent", []string{patient(uuid, "1970-01-01"), obs("POST", "Observation", "urn:uuid:00000000-0000-4000-8000-000000000000")},
			[]string{"201 Created", "201 Created"}, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := newServer(t)
			entries := strings.Join(c.entries, ",")
			r := ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"batch","entry":[`+entries+`]}`).want(t, http.StatusOK)
			got := r.JSON["entry"].([]any)
			for i, want := range c.want {
				resp := got[i].(map[string]any)["response"].(map[string]any)
				if resp["status"] != want {
					t.Errorf("entry %d: %v, want %s (%v)", i, resp["status"], want, resp["outcome"])
				}
				if want == "400 Bad Request" && c.says != "" && strings.Contains(fmt.Sprint(c.entries[i]), "Observation") &&
					!strings.Contains(fmt.Sprint(resp["outcome"]), c.says) {
					t.Errorf("entry %d's outcome does not say %q: %v", i, c.says, resp["outcome"])
				}
			}
			stored := ts.do(http.MethodGet, "/Observation?_summary=count", nil).JSON["total"]
			if wantObs := strings.Count(strings.Join(c.want, ","), "201") - strings.Count(entries, `"Patient","birthDate":"1970`); fmt.Sprint(stored) != fmt.Sprint(wantObs) {
				t.Errorf("%v Observations stored, want %d", stored, wantObs)
			}
			if !c.txResolve {
				return
			}
			ts = newServer(t)
			ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"transaction","entry":[`+entries+`]}`).want(t, http.StatusOK)
			o := ts.do(http.MethodGet, "/Observation", nil)
			if !strings.Contains(string(o.Body), `"reference":"Patient/`) {
				t.Errorf("the transaction did not resolve the reference: %s", o.Body)
			}
		})
	}
}
