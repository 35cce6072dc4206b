package fhir_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// txFixtures are stored before each row of the transaction rule tables.
var txFixtures = []string{
	`{"resourceType":"Patient","id":"a","identifier":[{"system":"urn:t","value":"A"}],"name":[{"family":"Alpha"}]}`,
	`{"resourceType":"Patient","id":"b","identifier":[{"system":"urn:t","value":"B"}],"name":[{"family":"Beta"}]}`,
	`{"resourceType":"Organization","id":"o1","identifier":[{"system":"urn:org","value":"O1"}]}`,
	`{"resourceType":"Organization","id":"o2","identifier":[{"system":"urn:org","value":"DUP"}]}`,
	`{"resourceType":"Organization","id":"o3","identifier":[{"system":"urn:org","value":"DUP"}]}`,
	`{"resourceType":"Observation","id":"obsA","status":"final","code":{"coding":[{"system":"urn:c","code":"x"}]},"subject":{"reference":"Patient/a"}}`,
}

func txBundle(entries ...string) string {
	if len(entries) == 0 {
		return `{"resourceType":"Bundle","type":"transaction"}`
	}
	return `{"resourceType":"Bundle","type":"transaction","entry":[` + strings.Join(entries, ",") + `]}`
}

// versionCount is how many versions the server holds, all types together.
func versionCount(t *testing.T, ts *testServer) int {
	t.Helper()
	r := ts.do(http.MethodGet, "/_history?_count=1000", nil).want(t, http.StatusOK)
	entries, _ := r.JSON["entry"].([]any)
	return len(entries)
}

// TestTransactionFailsWholeOnRuleBreach: FHIR R4 http.html#trules, "For a
// transaction, servers SHALL either accept all actions ... or reject all
// resources and return an HTTP 400 or 500 type response"; "A resource can
// only appear in a transaction once (by identity)"; "If any resource
// identities (including resolved identities from conditional update/delete)
// overlap in steps 1-3, then the transaction SHALL fail"; conditional
// references: "if there are no matches, or multiple matches, the
// transaction fails". Every row must fail with nothing written.
func TestTransactionFailsWholeOnRuleBreach(t *testing.T) {
	newPat := `{"fullUrl":"urn:uuid:0b8c5f3e-0000-4000-8000-000000000001","resource":{"resourceType":"Patient","name":[{"family":"Written"}]},"request":{"method":"POST","url":"Patient"}}`
	cases := []struct {
		name    string
		entries []string
		status  int
		says    string
	}{
		{"identity: two PUTs of one id", []string{
			`{"resource":{"resourceType":"Patient","id":"x","gender":"male"},"request":{"method":"PUT","url":"Patient/x"}}`,
			`{"resource":{"resourceType":"Patient","id":"x","gender":"female"},"request":{"method":"PUT","url":"Patient/x"}}`,
		}, 400, "Patient/x"},
		{"identity: DELETE then PUT of one id", []string{
			`{"request":{"method":"DELETE","url":"Patient/a"}}`,
			`{"resource":{"resourceType":"Patient","id":"a","gender":"male"},"request":{"method":"PUT","url":"Patient/a"}}`,
		}, 400, "Patient/a"},
		{"identity: PUT then DELETE of one id (entry order does not matter)", []string{
			`{"resource":{"resourceType":"Patient","id":"a","gender":"male"},"request":{"method":"PUT","url":"Patient/a"}}`,
			`{"request":{"method":"DELETE","url":"Patient/a"}}`,
		}, 400, "Patient/a"},
		{"identity: two DELETEs of one id", []string{
			`{"request":{"method":"DELETE","url":"Patient/a"}}`,
			`{"request":{"method":"DELETE","url":"Patient/a"}}`,
		}, 400, "Patient/a"},
		{"identity: two conditional PUTs resolving to one resource", []string{
			`{"resource":{"resourceType":"Patient","gender":"male"},"request":{"method":"PUT","url":"Patient?identifier=urn:t|A"}}`,
			`{"resource":{"resourceType":"Patient","gender":"female"},"request":{"method":"PUT","url":"Patient?family=alpha"}}`,
		}, 400, "Patient/a"},
		{"identity: two conditional DELETEs resolving to one resource", []string{
			`{"request":{"method":"DELETE","url":"Patient?identifier=urn:t|A"}}`,
			`{"request":{"method":"DELETE","url":"Patient?family=alpha"}}`,
		}, 400, "Patient/a"},
		{"identity: conditional PUT resolving to an id also PUT by id", []string{
			`{"resource":{"resourceType":"Patient","id":"b","gender":"male"},"request":{"method":"PUT","url":"Patient/b"}}`,
			`{"resource":{"resourceType":"Patient","gender":"female"},"request":{"method":"PUT","url":"Patient?identifier=urn:t|B"}}`,
		}, 400, "Patient/b"},
		{"identity: conditional DELETE resolving to an id also PUT by id", []string{
			`{"request":{"method":"DELETE","url":"Patient?identifier=urn:t|B"}}`,
			`{"resource":{"resourceType":"Patient","id":"b","gender":"female"},"request":{"method":"PUT","url":"Patient/b"}}`,
		}, 400, "Patient/b"},
		{"identity: conditional PUT creating with the id another entry PUTs", []string{
			`{"resource":{"resourceType":"Patient","id":"n1","gender":"male"},"request":{"method":"PUT","url":"Patient?identifier=urn:t|none"}}`,
			`{"resource":{"resourceType":"Patient","id":"n1","gender":"female"},"request":{"method":"PUT","url":"Patient/n1"}}`,
		}, 400, "Patient/n1"},
		{"identity: POST ifNoneExist matching a resource also updated", []string{
			`{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"A"}]},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=urn:t|A"}}`,
			`{"resource":{"resourceType":"Patient","id":"a","gender":"male"},"request":{"method":"PUT","url":"Patient/a"}}`,
		}, 400, "Patient/a"},
		{"identity: POST ifNoneExist matching a resource also deleted", []string{
			`{"request":{"method":"DELETE","url":"Patient/a"}}`,
			`{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"A"}]},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=urn:t|A"}}`,
		}, 400, "Patient/a"},
		{"identity: POST ifNoneExist matching a resource also conditionally updated", []string{
			`{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"A"}]},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=urn:t|A"}}`,
			`{"resource":{"resourceType":"Patient","gender":"male"},"request":{"method":"PUT","url":"Patient?family=alpha"}}`,
		}, 400, "Patient/a"},
		{"bdl-7: two entries with one fullUrl", []string{
			newPat,
			`{"fullUrl":"urn:uuid:0b8c5f3e-0000-4000-8000-000000000001","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}`,
		}, 400, "fullUrl"},
		{"conditional reference with no match", []string{newPat,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|nobody"}},"request":{"method":"POST","url":"Patient"}}`,
		}, 412, "matched 0"},
		{"conditional reference with several matches", []string{newPat,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|DUP"}},"request":{"method":"POST","url":"Patient"}}`,
		}, 412, "matched 2"},
		{"conditional reference in a contained resource with several matches", []string{newPat,
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient","id":"c1","managingOrganization":{"reference":"Organization?identifier=urn:org|DUP"}}],"subject":{"reference":"#c1"}},"request":{"method":"POST","url":"Observation"}}`,
		}, 412, "matched 2"},
		{"conditional reference using a control parameter (only filtering parameters are allowed)", []string{newPat,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|O1&_sort=name"}},"request":{"method":"POST","url":"Patient"}}`,
		}, 400, "_sort"},
		{"conditional reference with an unknown parameter", []string{newPat,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?nonsense=1"}},"request":{"method":"POST","url":"Patient"}}`,
		}, 400, "nonsense"},
		{"conditional reference matching nothing once its match is deleted in the same transaction", []string{
			`{"request":{"method":"DELETE","url":"Organization/o1"}}`,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|O1"}},"request":{"method":"POST","url":"Patient"}}`,
		}, 412, "matched 0"},
		{"conditional PUT matching several", []string{newPat,
			`{"resource":{"resourceType":"Organization","name":"x"},"request":{"method":"PUT","url":"Organization?identifier=urn:org|DUP"}}`,
		}, 412, "matched 2"},
		{"conditional DELETE matching several", []string{newPat,
			`{"request":{"method":"DELETE","url":"Organization?identifier=urn:org|DUP"}}`,
		}, 412, "matched 2"},
		{"POST ifNoneExist matching several", []string{newPat,
			`{"resource":{"resourceType":"Organization"},"request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=urn:org|DUP"}}`,
		}, 412, "matched 2"},
		{"a GET entry that fails fails the transaction", []string{newPat,
			`{"request":{"method":"GET","url":"Patient/missing"}}`,
		}, 404, "entry 1"},
		{"a stale ifMatch fails the transaction", []string{newPat,
			`{"resource":{"resourceType":"Patient","id":"a"},"request":{"method":"PUT","url":"Patient/a","ifMatch":"W/\"7\""}}`,
		}, 412, "entry 1"},
		{"a PUT whose resource id differs from the url", []string{newPat,
			`{"resource":{"resourceType":"Patient","id":"zz"},"request":{"method":"PUT","url":"Patient/a"}}`,
		}, 400, "zz"},
		{"a conditional PUT whose resource id differs from the match", []string{newPat,
			`{"resource":{"resourceType":"Patient","id":"zz"},"request":{"method":"PUT","url":"Patient?identifier=urn:t|A"}}`,
		}, 400, "zz"},
		{"a DELETE of a version URL (no R4 interaction; the resource must not be deleted)", []string{newPat,
			`{"request":{"method":"DELETE","url":"Patient/a/_history/1"}}`,
		}, 400, "only GET and HEAD may name a version"},
		{"a PUT of a version URL (no R4 interaction; the resource must not be updated)", []string{newPat,
			`{"resource":{"resourceType":"Patient","id":"a","gender":"male"},"request":{"method":"PUT","url":"Patient/a/_history/1"}}`,
		}, 400, "only GET and HEAD may name a version"},
		{"bdl-8: a version-specific fullUrl", []string{newPat,
			`{"fullUrl":"http://example.org/fhir/Patient/a/_history/1","resource":{"resourceType":"Patient","id":"a","gender":"male"},"request":{"method":"PUT","url":"Patient/a"}}`,
		}, 400, "bdl-8"},
		{"a conditional PUT matching nothing whose resource id is another existing resource", []string{newPat,
			`{"resource":{"resourceType":"Patient","id":"b","gender":"male"},"request":{"method":"PUT","url":"Patient?identifier=urn:t|none"}}`,
		}, 409, "may only create"},
		{"a resource of another type than request.url", []string{newPat,
			`{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Observation"}}`,
		}, 400, "Observation"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := newServer(t)
			loadFixtures(t, ts, txFixtures)
			before := versionCount(t, ts)
			r := ts.do(http.MethodPost, "/", txBundle(c.entries...)).want(t, c.status)
			if text := r.outcome(t); !strings.Contains(text, c.says) || !strings.Contains(text, "nothing was written") {
				t.Errorf("outcome does not say %q and that nothing was written: %s", c.says, text)
			}
			if after := versionCount(t, ts); after != before {
				t.Errorf("a failed transaction wrote %d versions", after-before)
			}
		})
	}
}

// txResult is a transaction's answer with helpers to look at its entries.
type txResult struct {
	t  *testing.T
	ts *testServer
	r  *result
}

func (x txResult) entry(i int) map[string]any {
	x.t.Helper()
	entries, _ := x.r.JSON["entry"].([]any)
	if i >= len(entries) {
		x.t.Fatalf("no entry %d in %s", i, x.r.Body)
	}
	return entries[i].(map[string]any)
}

func (x txResult) status(i int) string {
	return x.entry(i)["response"].(map[string]any)["status"].(string)
}

// ref is "Type/id" of what entry i wrote, from its response location.
func (x txResult) ref(i int) string {
	x.t.Helper()
	loc, _ := x.entry(i)["response"].(map[string]any)["location"].(string)
	parts := strings.Split(loc, "/")
	if len(parts) < 2 {
		x.t.Fatalf("entry %d has no location: %v", i, x.entry(i))
	}
	return parts[0] + "/" + parts[1]
}

// read returns the stored resource ref as raw JSON text and decoded.
func (x txResult) read(ref string) (string, map[string]any) {
	x.t.Helper()
	r := x.ts.do(http.MethodGet, "/"+ref, nil).want(x.t, http.StatusOK)
	return string(r.Body), r.JSON
}

func refOf(m map[string]any, key string) string {
	v, _ := m[key].(map[string]any)
	s, _ := v["reference"].(string)
	return s
}

// TestTransactionProcessingRules: each row is one rule of FHIR R4
// http.html#trules (and "Conditional References" and "Resolving references
// in Bundles" there) that a successful transaction must honour.
func TestTransactionProcessingRules(t *testing.T) {
	const (
		u1 = "urn:uuid:1a7e2b52-0000-4000-8000-000000000001"
		u2 = "urn:uuid:1a7e2b52-0000-4000-8000-000000000002"
		u3 = "urn:uuid:1a7e2b52-0000-4000-8000-000000000003"
	)
	cases := []struct {
		name    string
		entries []string
		check   func(x txResult)
	}{
		{"an empty transaction is not an error", nil, func(x txResult) {
			if x.r.JSON["type"] != "transaction-response" || x.r.JSON["entry"] != nil {
				x.t.Errorf("answer %s", x.r.Body)
			}
		}},
		{"order: a GET listed first is answered after the POST", []string{
			`{"request":{"method":"GET","url":"Patient?identifier=urn:t|NEW"}}`,
			`{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"NEW"}]},"request":{"method":"POST","url":"Patient"}}`,
		}, func(x txResult) {
			if got := x.entry(0)["resource"].(map[string]any)["total"]; got != json.Number("1") {
				x.t.Errorf("the search saw %v resources, want the one the transaction created", got)
			}
			if x.status(1) != "201 Created" {
				x.t.Errorf("POST status %s", x.status(1))
			}
		}},
		{"order: a GET listed first is answered after the DELETE", []string{
			`{"request":{"method":"GET","url":"Patient?identifier=urn:t|A"}}`,
			`{"request":{"method":"DELETE","url":"Patient/a"}}`,
		}, func(x txResult) {
			if got := x.entry(0)["resource"].(map[string]any)["total"]; got != json.Number("0") {
				x.t.Errorf("the search saw %v resources after the delete", got)
			}
			x.ts.do(http.MethodGet, "/Patient/a", nil).want(x.t, http.StatusGone)
		}},
		{"order: a read listed first sees the PUT's version", []string{
			`{"request":{"method":"GET","url":"Patient/b"}}`,
			`{"resource":{"resourceType":"Patient","id":"b","gender":"other"},"request":{"method":"PUT","url":"Patient/b"}}`,
		}, func(x txResult) {
			res := x.entry(0)["resource"].(map[string]any)
			if res["gender"] != "other" || x.entry(0)["response"].(map[string]any)["etag"] != `W/"2"` {
				x.t.Errorf("the read saw %v", x.entry(0))
			}
		}},
		{"HEAD is answered like GET, without a body", []string{
			`{"request":{"method":"HEAD","url":"Patient/a"}}`,
			`{"request":{"method":"HEAD","url":"Patient?identifier=urn:t|A"}}`,
		}, func(x txResult) {
			for i := range 2 {
				if x.status(i) != "200 OK" || x.entry(i)["resource"] != nil {
					x.t.Errorf("HEAD entry %d: %v", i, x.entry(i))
				}
			}
		}},
		{"response entries follow the request order", []string{
			`{"request":{"method":"GET","url":"Patient/a"}}`,
			`{"resource":{"resourceType":"Patient","id":"b","gender":"other"},"request":{"method":"PUT","url":"Patient/b"}}`,
			`{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}`,
			`{"request":{"method":"DELETE","url":"Organization/o1"}}`,
		}, func(x txResult) {
			want := []string{"200 OK", "200 OK", "201 Created", "200 OK"}
			for i, w := range want {
				if x.status(i) != w {
					x.t.Errorf("entry %d: %s, want %s", i, x.status(i), w)
				}
			}
			if x.entry(0)["resource"].(map[string]any)["id"] != "a" || !strings.HasPrefix(x.ref(3), "Organization/o1") {
				x.t.Errorf("entries out of order: %s", x.r.Body)
			}
		}},
		{"urn:uuid references replaced in every place the rules name", []string{
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient","name":[{"family":"Linked"}]},"request":{"method":"POST","url":"Patient"}}`,
			`{"fullUrl":"` + u2 + `","resource":{"resourceType":"Binary","contentType":"text/plain","data":"aGk="},"request":{"method":"POST","url":"Binary"}}`,
			`{"fullUrl":"urn:oid:1.2.840.99.1","resource":{"resourceType":"Organization","name":"by oid"},"request":{"method":"POST","url":"Organization"}}`,
			`{"fullUrl":"` + u3 + `","resource":{"resourceType":"DocumentReference","status":"current",
			  "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">For <a href=\"` + u1 + `\">the patient</a> <img src='` + u2 + `'/> &amp; <a href=\"urn:uuid:not-in-bundle\">x</a></div>"},
			  "extension":[{"url":"http://example.org/fhir/StructureDefinition/source","valueUri":"` + u1 + `"},
			               {"url":"http://example.org/fhir/StructureDefinition/derived","valueCanonical":"` + u1 + `"},
			               {"url":"http://example.org/fhir/StructureDefinition/u","valueUuid":"` + u1 + `"},
			               {"url":"http://example.org/fhir/StructureDefinition/l","valueUrl":"` + u2 + `"},
			               {"url":"http://example.org/fhir/StructureDefinition/o","valueOid":"urn:oid:1.2.840.99.1"}],
			  "identifier":[{"system":"urn:ietf:rfc:3986","value":"` + u1 + `"}],
			  "subject":{"reference":"` + u1 + `"},
			  "content":[{"attachment":{"contentType":"text/plain","url":"` + u2 + `"}}]},"request":{"method":"POST","url":"DocumentReference"}}`,
		}, func(x txResult) {
			pat, bin, org := x.ref(0), x.ref(1), x.ref(2)
			raw, doc := x.read(x.ref(3))
			if got := refOf(doc, "subject"); got != pat {
				x.t.Errorf("Reference.reference %q, want %q", got, pat)
			}
			att := doc["content"].([]any)[0].(map[string]any)["attachment"].(map[string]any)
			if got := att["url"]; got != x.ts.URL+"/"+bin {
				x.t.Errorf("Attachment.url (url) %q, want %q", got, x.ts.URL+"/"+bin)
			}
			ext := doc["extension"].([]any)
			if got := ext[0].(map[string]any)["valueUri"]; got != x.ts.URL+"/"+pat {
				x.t.Errorf("valueUri (uri) %q", got)
			}
			if got := ext[1].(map[string]any)["valueCanonical"]; got != u1 {
				x.t.Errorf("valueCanonical was replaced with %q; canonical elements are not replaced", got)
			}
			for i, want := range map[int]string{2: x.ts.URL + "/" + pat, 3: x.ts.URL + "/" + bin, 4: x.ts.URL + "/" + org} {
				for k, v := range ext[i].(map[string]any) {
					if k != "url" && v != want {
						x.t.Errorf("%s (of type %s) is %q, want %q", k, strings.ToLower(strings.TrimPrefix(k, "value")), v, want)
					}
				}
			}
			if got := doc["identifier"].([]any)[0].(map[string]any)["value"]; got != u1 {
				x.t.Errorf("Identifier.value (a string) was replaced with %q", got)
			}
			div := doc["text"].(map[string]any)["div"].(string)
			if !strings.Contains(div, `<a href="`+x.ts.URL+"/"+pat+`">`) || !strings.Contains(div, `<img src='`+x.ts.URL+"/"+bin+`'/>`) {
				x.t.Errorf("narrative href/src not replaced: %s", div)
			}
			if !strings.Contains(div, `href="urn:uuid:not-in-bundle"`) || !strings.Contains(div, "&amp;") {
				x.t.Errorf("narrative outside the links changed: %s", div)
			}
			if strings.Contains(raw, `\u003c`) {
				x.t.Errorf("narrative re-escaped: %s", raw)
			}
		}},
		{"circular references between created resources", []string{
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient","link":[{"other":{"reference":"` + u2 + `"},"type":"seealso"}]},"request":{"method":"POST","url":"Patient"}}`,
			`{"fullUrl":"` + u2 + `","resource":{"resourceType":"Patient","link":[{"other":{"reference":"` + u1 + `"},"type":"seealso"}]},"request":{"method":"POST","url":"Patient"}}`,
		}, func(x txResult) {
			_, p1 := x.read(x.ref(0))
			_, p2 := x.read(x.ref(1))
			if refOf(p1["link"].([]any)[0].(map[string]any), "other") != x.ref(1) || refOf(p2["link"].([]any)[0].(map[string]any), "other") != x.ref(0) {
				x.t.Errorf("circular references: %v / %v", p1["link"], p2["link"])
			}
		}},
		{"references to resources outside the bundle are left untouched", []string{
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/a"},"performer":[{"reference":"http://elsewhere.example/fhir/Practitioner/9"}]},"request":{"method":"POST","url":"Observation"}}`,
		}, func(x txResult) {
			_, obs := x.read(x.ref(0))
			if refOf(obs, "subject") != "Patient/a" || obs["performer"].([]any)[0].(map[string]any)["reference"] != "http://elsewhere.example/fhir/Practitioner/9" {
				x.t.Errorf("references changed: %v", obs)
			}
		}},
		{"a RESTful fullUrl of a POST: absolute, version-specific and relative references", []string{
			`{"fullUrl":"http://other.example/fhir/Patient/p9","resource":{"resourceType":"Patient","id":"p9"},"request":{"method":"POST","url":"Patient"}}`,
			`{"fullUrl":"http://other.example/fhir/Observation/o9","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
			  "subject":{"reference":"Patient/p9"},"focus":[{"reference":"http://other.example/fhir/Patient/p9"}],
			  "hasMember":[{"reference":"http://other.example/fhir/Patient/p9/_history/3"}]},"request":{"method":"POST","url":"Observation"}}`,
		}, func(x txResult) {
			pat := x.ref(0)
			if pat == "Patient/p9" {
				x.t.Errorf("a POST kept the client's id")
			}
			_, obs := x.read(x.ref(1))
			if got := refOf(obs, "subject"); got != pat {
				x.t.Errorf("relative reference resolved against the fullUrl root: %q, want %q", got, pat)
			}
			if got := obs["focus"].([]any)[0].(map[string]any)["reference"]; got != pat {
				x.t.Errorf("absolute reference %q, want %q", got, pat)
			}
			if got := obs["hasMember"].([]any)[0].(map[string]any)["reference"]; got != pat+"/_history/1" {
				x.t.Errorf("version-specific reference %q, want %q", got, pat+"/_history/1")
			}
		}},
		{"a relative reference from an entry without a RESTful fullUrl is not resolved", []string{
			`{"fullUrl":"http://other.example/fhir/Patient/p8","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}`,
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p8"}},"request":{"method":"POST","url":"Observation"}}`,
		}, func(x txResult) {
			if _, obs := x.read(x.ref(1)); refOf(obs, "subject") != "Patient/p8" {
				x.t.Errorf("subject %q", refOf(obs, "subject"))
			}
		}},
		{"the fullUrl of a PUT maps to its request.url identity, with its next version", []string{
			`{"fullUrl":"http://other.example/fhir/Patient/b","resource":{"resourceType":"Patient","id":"b","gender":"other"},"request":{"method":"PUT","url":"Patient/b"}}`,
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient","id":"put1"},"request":{"method":"PUT","url":"Patient/put1"}}`,
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"` + u1 + `"},
			  "focus":[{"reference":"http://other.example/fhir/Patient/b/_history/1"}]},"request":{"method":"POST","url":"Observation"}}`,
		}, func(x txResult) {
			_, obs := x.read(x.ref(2))
			if got := refOf(obs, "subject"); got != "Patient/put1" {
				x.t.Errorf("subject %q", got)
			}
			if got := obs["focus"].([]any)[0].(map[string]any)["reference"]; got != "Patient/b/_history/2" {
				x.t.Errorf("version-specific reference to an update %q, want Patient/b/_history/2", got)
			}
		}},
		{"a conditional create that matches: references to its fullUrl point to the existing resource", []string{
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Organization","identifier":[{"system":"urn:org","value":"O1"}]},"request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=urn:org|O1"}}`,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"` + u1 + `"}},"request":{"method":"POST","url":"Patient"}}`,
		}, func(x txResult) {
			if x.status(0) != "200 OK" {
				x.t.Errorf("matched conditional create: %s", x.status(0))
			}
			if _, p := x.read(x.ref(1)); refOf(p, "managingOrganization") != "Organization/o1" {
				x.t.Errorf("managingOrganization %q", refOf(p, "managingOrganization"))
			}
		}},
		{"a conditional PUT that matches nothing creates with the resource's id", []string{
			`{"resource":{"resourceType":"Patient","id":"cp1","identifier":[{"system":"urn:t","value":"CP1"}]},"request":{"method":"PUT","url":"Patient?identifier=urn:t|CP1"}}`,
		}, func(x txResult) {
			if x.status(0) != "201 Created" || x.ref(0) != "Patient/cp1" {
				x.t.Errorf("conditional PUT: %s %s", x.status(0), x.ref(0))
			}
		}},
		{"a conditional PUT that matches updates the match", []string{
			`{"resource":{"resourceType":"Patient","gender":"female"},"request":{"method":"PUT","url":"Patient?identifier=urn:t|A"}}`,
		}, func(x txResult) {
			if x.status(0) != "200 OK" || x.ref(0) != "Patient/a" {
				x.t.Errorf("conditional PUT: %s %s", x.status(0), x.ref(0))
			}
		}},
		{"a conditional DELETE that matches nothing is not an error", []string{
			`{"request":{"method":"DELETE","url":"Patient?identifier=urn:t|none"}}`,
		}, func(x txResult) {
			if x.status(0) != "200 OK" {
				x.t.Errorf("status %s", x.status(0))
			}
		}},
		{"conditional reference to a stored resource", []string{
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|O1"}},"request":{"method":"POST","url":"Patient"}}`,
		}, func(x txResult) {
			if _, p := x.read(x.ref(0)); refOf(p, "managingOrganization") != "Organization/o1" {
				x.t.Errorf("managingOrganization %q", refOf(p, "managingOrganization"))
			}
		}},
		{"conditional reference resolved after the writes: to a resource PUT later in the processing order", []string{
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient?identifier=urn:t|LATER"}},"request":{"method":"POST","url":"Observation"}}`,
			`{"resource":{"resourceType":"Patient","id":"later","identifier":[{"system":"urn:t","value":"LATER"}]},"request":{"method":"PUT","url":"Patient/later"}}`,
		}, func(x txResult) {
			if _, o := x.read(x.ref(0)); refOf(o, "subject") != "Patient/later" {
				x.t.Errorf("subject %q", refOf(o, "subject"))
			}
		}},
		{"conditional reference resolved after the writes: to a resource POSTed in the transaction", []string{
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|NEWORG"}},"request":{"method":"POST","url":"Patient"}}`,
			`{"resource":{"resourceType":"Organization","identifier":[{"system":"urn:org","value":"NEWORG"}]},"request":{"method":"POST","url":"Organization"}}`,
		}, func(x txResult) {
			if _, p := x.read(x.ref(0)); refOf(p, "managingOrganization") != x.ref(1) {
				x.t.Errorf("managingOrganization %q, want %q", refOf(p, "managingOrganization"), x.ref(1))
			}
		}},
		{"conditional reference resolved after the writes: a deleted match no longer counts", []string{
			`{"request":{"method":"DELETE","url":"Organization/o3"}}`,
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|DUP"}},"request":{"method":"POST","url":"Patient"}}`,
		}, func(x txResult) {
			if _, p := x.read(x.ref(1)); refOf(p, "managingOrganization") != "Organization/o2" {
				x.t.Errorf("managingOrganization %q", refOf(p, "managingOrganization"))
			}
		}},
		{"conditional reference resolved after the writes: an update moves a match away", []string{
			`{"resource":{"resourceType":"Patient","managingOrganization":{"reference":"Organization?identifier=urn:org|DUP"}},"request":{"method":"POST","url":"Patient"}}`,
			`{"resource":{"resourceType":"Organization","id":"o2","identifier":[{"system":"urn:org","value":"MOVED"}]},"request":{"method":"PUT","url":"Organization/o2"}}`,
		}, func(x txResult) {
			if _, p := x.read(x.ref(0)); refOf(p, "managingOrganization") != "Organization/o3" {
				x.t.Errorf("managingOrganization %q", refOf(p, "managingOrganization"))
			}
		}},
		{"a fullUrl in an ifNoneExist is replaced: the condition finds the existing resource", []string{
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient","id":"a","gender":"female"},"request":{"method":"PUT","url":"Patient/a"}}`,
			`{"resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:c","code":"x"}]},"subject":{"reference":"` + u1 + `"}},
			  "request":{"method":"POST","url":"Observation","ifNoneExist":"subject=` + u1 + `&code=urn:c|x"}}`,
		}, func(x txResult) {
			if x.status(1) != "200 OK" || x.entry(1)["fullUrl"] != x.ts.URL+"/Observation/obsA" {
				x.t.Errorf("conditional create: %v", x.entry(1))
			}
		}},
		{"a fullUrl in a conditional PUT's url is replaced: the condition finds the existing resource", []string{
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient","id":"a","gender":"female"},"request":{"method":"PUT","url":"Patient/a"}}`,
			`{"resource":{"resourceType":"Observation","status":"amended","code":{"coding":[{"system":"urn:c","code":"x"}]},"subject":{"reference":"` + u1 + `"}},
			  "request":{"method":"PUT","url":"Observation?subject=` + u1 + `&code=urn:c|x"}}`,
		}, func(x txResult) {
			if x.status(1) != "200 OK" || x.ref(1) != "Observation/obsA" {
				x.t.Errorf("conditional update: %s %s", x.status(1), x.ref(1))
			}
			if _, o := x.read("Observation/obsA"); o["status"] != "amended" || refOf(o, "subject") != "Patient/a" {
				x.t.Errorf("Observation/obsA: %v", o)
			}
		}},
		{"a fullUrl in a GET entry's search is replaced", []string{
			`{"request":{"method":"GET","url":"Observation?subject=` + u1 + `"}}`,
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}`,
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"` + u1 + `"}},"request":{"method":"POST","url":"Observation"}}`,
		}, func(x txResult) {
			res := x.entry(0)["resource"].(map[string]any)
			if res["total"] != json.Number("1") || !strings.Contains(link(res, "self"), strings.Split(x.ref(1), "/")[1]) {
				x.t.Errorf("the search found %v: %v", res["total"], link(res, "self"))
			}
		}},
		{"a fullUrl in a conditional reference is replaced", []string{
			`{"fullUrl":"` + u1 + `","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}`,
			`{"resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:c","code":"bp"}]},"subject":{"reference":"` + u1 + `"}},"request":{"method":"POST","url":"Observation"}}`,
			`{"resource":{"resourceType":"DiagnosticReport","status":"final","code":{"text":"r"},"result":[{"reference":"Observation?subject=` + u1 + `&code=urn:c|bp"}]},"request":{"method":"POST","url":"DiagnosticReport"}}`,
		}, func(x txResult) {
			if _, d := x.read(x.ref(2)); d["result"].([]any)[0].(map[string]any)["reference"] != x.ref(1) {
				x.t.Errorf("result %v, want %s", d["result"], x.ref(1))
			}
		}},
		{"conditional reference inside a contained resource and an extension", []string{
			`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
			  "contained":[{"resourceType":"Patient","id":"c1","managingOrganization":{"reference":"Organization?identifier=urn:org|O1"}}],
			  "extension":[{"url":"http://example.org/fhir/StructureDefinition/org","valueReference":{"reference":"Organization?identifier=urn:org|O1"}}],
			  "subject":{"reference":"#c1"}},"request":{"method":"POST","url":"Observation"}}`,
		}, func(x txResult) {
			raw, o := x.read(x.ref(0))
			if strings.Contains(raw, "Organization?") || refOf(o, "subject") != "#c1" {
				x.t.Errorf("conditional references left: %s", raw)
			}
			if refOf(o["contained"].([]any)[0].(map[string]any), "managingOrganization") != "Organization/o1" {
				x.t.Errorf("contained: %v", o["contained"])
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := newServer(t)
			loadFixtures(t, ts, txFixtures)
			r := ts.do(http.MethodPost, "/", txBundle(c.entries...)).want(t, http.StatusOK)
			if r.JSON["type"] != "transaction-response" {
				t.Fatalf("type %v", r.JSON["type"])
			}
			c.check(txResult{t: t, ts: ts, r: r})
		})
	}
}

// TestTransactionOutcomeIndependentOfEntryOrder: "The outcome of processing
// the transaction SHALL NOT depend on the order of the resources in the
// transaction" (FHIR R4 http.html#trules). Every permutation of one
// bundle leaves the same data behind.
func TestTransactionOutcomeIndependentOfEntryOrder(t *testing.T) {
	entries := []string{
		`{"request":{"method":"DELETE","url":"Organization/o3"}}`,
		`{"fullUrl":"urn:uuid:5c1d0e8a-0000-4000-8000-000000000001","resource":{"resourceType":"Patient","id":"pp","identifier":[{"system":"urn:t","value":"P"}],"managingOrganization":{"reference":"Organization?identifier=urn:org|DUP"}},"request":{"method":"PUT","url":"Patient/pp"}}`,
		`{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:5c1d0e8a-0000-4000-8000-000000000001"},"performer":[{"reference":"Patient?identifier=urn:t|P"}]},"request":{"method":"POST","url":"Observation"}}`,
		`{"request":{"method":"GET","url":"Observation?subject.identifier=urn:t|P"}}`,
	}
	var want string
	for _, perm := range [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {2, 3, 0, 1}, {1, 3, 2, 0}} {
		ts := newServer(t)
		loadFixtures(t, ts, txFixtures)
		var es []string
		for _, i := range perm {
			es = append(es, entries[i])
		}
		r := ts.do(http.MethodPost, "/", txBundle(es...)).want(t, http.StatusOK)
		x := txResult{t: t, ts: ts, r: r}
		var search map[string]any
		var obsRef string
		for k, i := range perm {
			switch i {
			case 2:
				obsRef = x.ref(k)
			case 3:
				search = x.entry(k)["resource"].(map[string]any)
			}
		}
		_, obs := x.read(obsRef)
		pat := refOf(obs, "subject")
		_, p := x.read(pat)
		got := strings.Join([]string{
			refOf(p, "managingOrganization"),
			obs["performer"].([]any)[0].(map[string]any)["reference"].(string),
			string(mustJSON(search["total"])),
		}, " ")
		if obs["performer"].([]any)[0].(map[string]any)["reference"] != pat {
			t.Errorf("order %v: the conditional reference found %v, not the created %s", perm, obs["performer"], pat)
		}
		if want == "" {
			want = got
			if want != "Organization/o2 Patient/pp 1" {
				t.Fatalf("order %v: %s", perm, want)
			}
		} else if got != want {
			t.Errorf("order %v: %s, want %s", perm, got, want)
		}
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

// TestConditionalReferencesOnlyInTransactions: a conditional reference
// ("Patient?identifier=x") is resolved by the transaction rules (FHIR R4
// http.html#trules); outside a transaction (a create, an update, a batch
// entry) nothing resolves it, and stored as it is it would refer to
// nothing: the write is refused with 400 and nothing is written. In a
// transaction the same resource is written with the reference resolved.
func TestConditionalReferencesOnlyInTransactions(t *testing.T) {
	obs := func(id, ref string) string {
		idPart := ""
		if id != "" {
			idPart = `"id":"` + id + `",`
		}
		return `{"resourceType":"Observation",` + idPart + `"status":"final","code":{"text":"x"},"subject":{"reference":"` + ref + `"}}`
	}
	cases := []struct {
		name, method, path string
		body               string
	}{
		{"create", http.MethodPost, "/Observation", obs("", "Patient?identifier=urn:t|A")},
		{"update", http.MethodPut, "/Observation/obsA", obs("obsA", "Patient?identifier=urn:t|A")},
		{"update of a new id", http.MethodPut, "/Observation/new1", obs("new1", "Patient?_id=a")},
		{"in a contained resource", http.MethodPost, "/Observation",
			`{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Patient","id":"c","managingOrganization":{"reference":"Organization?identifier=urn:org|O1"}}],"subject":{"reference":"#c"}}`},
		{"in an extension", http.MethodPost, "/Observation",
			`{"resourceType":"Observation","extension":[{"url":"http://example.org/x","valueReference":{"reference":"Patient?identifier=urn:t|A"}}],"status":"final","code":{"text":"x"}}`},
		{"batch POST", http.MethodPost, "/", `{"resourceType":"Bundle","type":"batch","entry":[{"resource":` + obs("", "Patient?identifier=urn:t|A") + `,"request":{"method":"POST","url":"Observation"}}]}`},
		{"batch PUT", http.MethodPost, "/", `{"resourceType":"Bundle","type":"batch","entry":[{"resource":` + obs("obsA", "Patient?identifier=urn:t|A") + `,"request":{"method":"PUT","url":"Observation/obsA"}}]}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts := newServer(t)
			loadFixtures(t, ts, txFixtures)
			before := versionCount(t, ts)
			var text string
			if c.path == "/" {
				r := ts.do(c.method, c.path, c.body).want(t, http.StatusOK)
				entry := r.JSON["entry"].([]any)[0].(map[string]any)["response"].(map[string]any)
				if entry["status"] != "400 Bad Request" {
					t.Errorf("the batch entry was answered %v, want 400", entry["status"])
				}
				raw, _ := json.Marshal(entry["outcome"])
				text = string(raw)
			} else {
				text = ts.do(c.method, c.path, c.body).want(t, http.StatusBadRequest).outcome(t)
			}
			if !strings.Contains(text, "only in a transaction") {
				t.Errorf("outcome does not say conditional references are resolved only in a transaction: %s", text)
			}
			if after := versionCount(t, ts); after != before {
				t.Errorf("%d versions written", after-before)
			}
		})
	}
	t.Run("the same in a transaction is resolved", func(t *testing.T) {
		ts := newServer(t)
		loadFixtures(t, ts, txFixtures)
		r := ts.do(http.MethodPost, "/", txBundle(`{"resource":`+obs("", "Patient?identifier=urn:t|A")+`,"request":{"method":"POST","url":"Observation"}}`)).want(t, http.StatusOK)
		x := txResult{t, ts, r}
		_, m := x.read(x.ref(0))
		if got := refOf(m, "subject"); got != "Patient/a" {
			t.Errorf("subject %q, want Patient/a", got)
		}
	})
}
