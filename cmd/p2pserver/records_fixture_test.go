package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// Two members' records on one server, for the access tests
// (access_test.go) and the non-interference proof
// (noninterference_test.go). Member A (Patient/A) is the one whose tokens
// ask; member B (Patient/B) is the other. Every id is fixed, so that two
// servers loaded with the same fixtures agree on them.
//
// A's record holds one resource of each kind the access rules treat
// differently: compartment types, a Binary by securityContext, a document
// Bundle by its Composition's subject, Devices with and without a patient,
// a Subscription confined to A, a Provenance of A's Observation, a
// MessageHeader about A. Some of A's data names B (A's Coverage has B as
// its subscriber, a Group and a Composition are about both): that is A's
// data too, and stays identical wherever B's data differs.
//
// B's record mirrors A's, plus what B's history holds: an Observation and
// a Patient that an admin deleted (their ids are known to A through the
// shared Group and Composition).

// bValues are the values B's data carries; a variant of the data set
// changes every one of them.
type bValues struct {
	Family, Given, Birth, MRN, SSN, Phone, Gender, Code, Value, Status string
}

var (
	bOriginal = bValues{Family: "Brown", Given: "Bert", Birth: "1961-03-14", MRN: "B-1", SSN: "123-45-6789", Phone: "555-0101",
		Gender: "male", Code: "8867-4", Value: "99", Status: "active"}
	bChanged = bValues{Family: "Castle", Given: "Carl", Birth: "1975-07-07", MRN: "B-2", SSN: "987-65-4321", Phone: "555-0202",
		Gender: "other", Code: "29463-7", Value: "61", Status: "cancelled"}
)

// The ids of B's data, known to A (through the Group, the Composition, A's
// Coverage) or guessed.
var bIDs = []string{
	"Patient/B", "Patient/B-old", "Observation/b-obs", "Observation/b-del", "Coverage/b-cov",
	"Binary/b-bin", "Bundle/b-doc", "Device/b-dev", "Subscription/b-sub", "Provenance/b-prov",
	"Group/b-group", "MessageHeader/b-msg", "ExplanationOfBenefit/b-eob", "Condition/b-cond",
}

// The ids of A's data.
var aIDs = []string{
	"Patient/A", "Observation/a-obs", "Observation/a-obs2", "Coverage/a-cov", "Condition/a-cond",
	"Binary/a-bin", "Bundle/a-doc", "Device/a-dev", "Device/free-dev", "Subscription/a-sub", "Provenance/a-prov",
	"Group/shared", "Composition/shared-comp", "MessageHeader/a-msg", "ExplanationOfBenefit/a-eob",
	"Practitioner/dr1", "Organization/org1", "Location/loc1",
}

// aFixtures are A's data and the reference data, the same on every server.
func aFixtures() []string {
	return []string{
		`{"resourceType":"Organization","id":"org1","name":"Payer One","identifier":[{"system":"urn:payer","value":"P1"}]}`,
		`{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Dolittle","given":["John"]}],"identifier":[{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567890"}]}`,
		`{"resourceType":"Location","id":"loc1","name":"Main Clinic","status":"active"}`,
		`{"resourceType":"Patient","id":"A","name":[{"family":"Able","given":["Anna"]}],"gender":"female","birthDate":"1980-01-01",
		  "identifier":[{"system":"urn:mrn","value":"A-1"}],"telecom":[{"system":"phone","value":"555-0100"}],
		  "generalPractitioner":[{"reference":"Practitioner/dr1"}],"managingOrganization":{"reference":"Organization/org1"}}`,
		`{"resourceType":"Observation","id":"a-obs","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
		  "subject":{"reference":"Patient/A"},"performer":[{"reference":"Practitioner/dr1"}],"effectiveDateTime":"2024-01-01",
		  "valueQuantity":{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}`,
		`{"resourceType":"Observation","id":"a-obs2","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},
		  "subject":{"reference":"Patient/A"},"effectiveDateTime":"2024-02-01",
		  "valueQuantity":{"value":80,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}`,
		`{"resourceType":"Coverage","id":"a-cov","status":"active","beneficiary":{"reference":"Patient/A"},"subscriber":{"reference":"Patient/B"},
		  "payor":[{"reference":"Organization/org1"}],"subscriberId":"S-100"}`,
		`{"resourceType":"Condition","id":"a-cond","subject":{"reference":"Patient/A"},"code":{"text":"asthma"},"recordedDate":"2023-05-05"}`,
		`{"resourceType":"ExplanationOfBenefit","id":"a-eob","status":"active","type":{"text":"pharmacy"},"use":"claim",
		  "patient":{"reference":"Patient/A"},"created":"2024-01-05","insurer":{"reference":"Organization/org1"},
		  "provider":{"reference":"Practitioner/dr1"},"outcome":"complete",
		  "insurance":[{"focal":true,"coverage":{"reference":"Coverage/a-cov"}}]}`,
		`{"resourceType":"Binary","id":"a-bin","contentType":"text/plain","securityContext":{"reference":"Patient/A"},"data":"QSdzIG5vdGU="}`,
		`{"resourceType":"Bundle","id":"a-doc","type":"document","identifier":{"system":"urn:doc","value":"a-doc"},"timestamp":"2024-01-01T00:00:00Z",
		  "entry":[{"fullUrl":"urn:uuid:0c6d5b2a-1111-4c1e-9b1a-000000000001","resource":{"resourceType":"Composition","status":"final",
		  "type":{"text":"summary"},"subject":{"reference":"Patient/A"},"date":"2024-01-01","author":[{"reference":"Practitioner/dr1"}],"title":"A's summary"}}]}`,
		`{"resourceType":"Device","id":"a-dev","patient":{"reference":"Patient/A"},"deviceName":[{"name":"A's pump","type":"user-friendly-name"}]}`,
		`{"resourceType":"Device","id":"free-dev","deviceName":[{"name":"clinic scale","type":"user-friendly-name"}]}`,
		`{"resourceType":"Subscription","id":"a-sub","status":"off","reason":"A's results","criteria":"Observation?patient=Patient/A",
		  "channel":{"type":"rest-hook","endpoint":"http://127.0.0.1:9/hook","header":["Authorization: Bearer a-secret-of-the-partner"]}}`,
		`{"resourceType":"Provenance","id":"a-prov","target":[{"reference":"Observation/a-obs"}],"recorded":"2024-01-01T00:00:00Z",
		  "agent":[{"who":{"reference":"Practitioner/dr1"}}]}`,
		`{"resourceType":"Group","id":"shared","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/A"}},{"entity":{"reference":"Patient/B"}}]}`,
		`{"resourceType":"Composition","id":"shared-comp","status":"final","type":{"text":"family note"},"subject":{"reference":"Patient/A"},
		  "date":"2024-03-01","author":[{"reference":"Practitioner/dr1"}],"title":"About A and B",
		  "section":[{"title":"others","entry":[{"reference":"Patient/B"},{"reference":"Observation/b-del"}]}]}`,
		`{"resourceType":"MessageHeader","id":"a-msg","eventCoding":{"system":"urn:events","code":"notify"},"source":{"endpoint":"urn:source"},
		  "focus":[{"reference":"Patient/A"}]}`,
	}
}

// bFixtures are B's data with the values v.
func bFixtures(v bValues) []string {
	out := []string{
		fmt.Sprintf(`{"resourceType":"Patient","id":"B","name":[{"family":%q,"given":[%q]}],"gender":%q,"birthDate":%q,
		  "identifier":[{"system":"urn:mrn","value":%q},{"system":"http://hl7.org/fhir/sid/us-ssn","value":%q}],
		  "telecom":[{"system":"phone","value":%q}],"generalPractitioner":[{"reference":"Practitioner/dr1"}]}`,
			v.Family, v.Given, v.Gender, v.Birth, v.MRN, v.SSN, v.Phone),
		fmt.Sprintf(`{"resourceType":"Observation","id":"b-obs","status":"final","code":{"coding":[{"system":"http://loinc.org","code":%q}]},
		  "subject":{"reference":"Patient/B"},"performer":[{"reference":"Practitioner/dr1"}],"effectiveDateTime":%q,
		  "valueQuantity":{"value":%s,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}`, v.Code, v.Birth, v.Value),
		fmt.Sprintf(`{"resourceType":"Coverage","id":"b-cov","status":%q,"beneficiary":{"reference":"Patient/B"},"subscriber":{"reference":"Patient/B"},
		  "payor":[{"reference":"Organization/org1"}],"subscriberId":%q}`, v.Status, v.MRN),
		fmt.Sprintf(`{"resourceType":"Condition","id":"b-cond","subject":{"reference":"Patient/B"},"code":{"text":%q},"recordedDate":%q}`, v.Family, v.Birth),
		fmt.Sprintf(`{"resourceType":"ExplanationOfBenefit","id":"b-eob","status":%q,"type":{"text":"pharmacy"},"use":"claim",
		  "patient":{"reference":"Patient/B"},"created":%q,"insurer":{"reference":"Organization/org1"},
		  "provider":{"reference":"Practitioner/dr1"},"outcome":"complete",
		  "insurance":[{"focal":true,"coverage":{"reference":"Coverage/b-cov"}}]}`, v.Status, v.Birth),
		fmt.Sprintf(`{"resourceType":"Binary","id":"b-bin","contentType":"text/plain","securityContext":{"reference":"Patient/B"},"data":%q}`,
			b64(v.SSN)),
		fmt.Sprintf(`{"resourceType":"Bundle","id":"b-doc","type":"document","identifier":{"system":"urn:doc","value":"b-doc"},"timestamp":"2024-01-01T00:00:00Z",
		  "entry":[{"fullUrl":"urn:uuid:0c6d5b2a-1111-4c1e-9b1a-000000000002","resource":{"resourceType":"Composition","status":"final",
		  "type":{"text":"summary"},"subject":{"reference":"Patient/B"},"date":%q,"author":[{"reference":"Practitioner/dr1"}],"title":%q}}]}`, v.Birth, v.Family),
		fmt.Sprintf(`{"resourceType":"Device","id":"b-dev","patient":{"reference":"Patient/B"},"deviceName":[{"name":%q,"type":"user-friendly-name"}]}`, v.Family),
		fmt.Sprintf(`{"resourceType":"Subscription","id":"b-sub","status":"off","reason":%q,"criteria":"Observation?patient=Patient/B&code=%s",
		  "channel":{"type":"rest-hook","endpoint":"http://127.0.0.1:9/hook","header":["Authorization: Bearer b-secret"]}}`, v.Family, v.Code),
		`{"resourceType":"Provenance","id":"b-prov","target":[{"reference":"Observation/b-obs"}],"recorded":"2024-01-01T00:00:00Z",
		  "agent":[{"who":{"reference":"Practitioner/dr1"}}]}`,
		`{"resourceType":"Group","id":"b-group","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/B"}}]}`,
		fmt.Sprintf(`{"resourceType":"MessageHeader","id":"b-msg","eventCoding":{"system":"urn:events","code":%q},"source":{"endpoint":"urn:source"},
		  "focus":[{"reference":"Patient/B"}]}`, v.Code),
	}
	return out
}

// bDeleted are B's resources an admin deleted: written, then deleted.
func bDeleted(v bValues) []string {
	return []string{
		fmt.Sprintf(`{"resourceType":"Observation","id":"b-del","status":"final","code":{"coding":[{"system":"http://loinc.org","code":%q}]},
		  "subject":{"reference":"Patient/B"},"valueQuantity":{"value":%s,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}`, v.Code, v.Value),
		fmt.Sprintf(`{"resourceType":"Patient","id":"B-old","name":[{"family":%q}],"birthDate":%q,
		  "identifier":[{"system":"http://hl7.org/fhir/sid/us-ssn","value":%q}],"telecom":[{"system":"phone","value":%q}]}`, v.Family, v.Birth, v.SSN, v.Phone),
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// recordsServer is one whole p2pserver loaded with A's data and, unless
// b is nil, B's.
type recordsServer struct {
	*payer
	fhir string // the FHIR base URL
}

// startRecords starts a server trusting idp and loads the fixtures: A's,
// then B's with the values b (none when nil), then B's deleted resources.
func startRecords(tb testing.TB, idp *oidctest.Provider, b *bValues) *recordsServer {
	tb.Helper()
	p := startPayer(tb, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-trusted-issuers", idp.Issuer(), "-secret-key", testSecretKey)
	s := &recordsServer{payer: p, fhir: p.URL + "/fhir"}
	put := func(doc string) {
		var m map[string]any
		if err := json.Unmarshal([]byte(doc), &m); err != nil {
			tb.Fatalf("fixture: %v: %s", err, doc)
		}
		path := fmt.Sprintf("/fhir/%s/%s", m["resourceType"], m["id"])
		if st := p.call("PUT", path, testAdmin, doc, nil); st != 200 && st != 201 {
			var oo any
			p.call("PUT", path, testAdmin, doc, &oo)
			tb.Fatalf("load %s: %d %v", path, st, oo)
		}
	}
	for _, d := range aFixtures() {
		put(d)
	}
	if b != nil {
		for _, d := range bFixtures(*b) {
			put(d)
		}
		for _, d := range bDeleted(*b) {
			put(d)
			var m map[string]any
			_ = json.Unmarshal([]byte(d), &m)
			if st := p.call("DELETE", fmt.Sprintf("/fhir/%s/%s", m["resourceType"], m["id"]), testAdmin, nil, nil); st != 200 {
				tb.Fatalf("delete %s: %d", m["id"], st)
			}
		}
	}
	return s
}

// token mints an access token for this server's FHIR base: for member A
// when patient is "A", for a client acting for itself when patient is "".
func (s *recordsServer) token(tb testing.TB, idp *oidctest.Provider, patient string, scopes ...string) string {
	tb.Helper()
	aud := []string{s.fhir}
	if patient == "" {
		tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "partner", Scopes: scopes, Audience: aud})
		if err != nil {
			tb.Fatal(err)
		}
		return tok.AccessToken
	}
	tok, err := idp.MintFor(aud, oidctest.Grant{ClientID: "partner", Patient: patient, Subject: "member-" + patient, Scopes: scopes})
	if err != nil {
		tb.Fatal(err)
	}
	return tok.AccessToken
}

// answer is one HTTP exchange with a server.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// json decodes the body (nil when it is not JSON).
func (a *answer) json() map[string]any {
	var m map[string]any
	_ = json.Unmarshal(a.body, &m)
	return m
}

// send makes one request below the server's root (path starts with /)
// with the bearer token and extra headers ("Name: value").
func (s *recordsServer) send(tb testing.TB, method, path, token, body string, headers ...string) *answer {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	url := path
	if strings.HasPrefix(path, "/") {
		url = s.URL + path
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if body != "" {
		ct := "application/fhir+json"
		if strings.HasSuffix(path, "/_search") {
			ct = "application/x-www-form-urlencoded"
		}
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return &answer{status: resp.StatusCode, header: resp.Header, body: raw}
}
