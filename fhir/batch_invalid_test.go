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
