package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// The access rules (package fhir/authz), each a table over real HTTP with
// tokens from a real OpenID provider, for every kind of principal: a
// member with read-only and with read-write scopes, a system client with
// one type, the back office, an admin. The scopes are SMART App Launch 2's
// (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
// c create; r read, vread, instance history; u update; d delete; s search,
// type and system history; v1 read = rs, write = cud, * = cruds.

// principals mints one token per principal kind for s.
func principals(t *testing.T, s *recordsServer, idp *oidctest.Provider) map[string]string {
	return map[string]string{
		"member-ro":  s.token(t, idp, "A", "openid", "launch/patient", "patient/*.read"),
		"member-rw":  s.token(t, idp, "A", "launch/patient", "patient/*.*"),
		"member-v2":  s.token(t, idp, "A", "patient/*.cruds"),
		"client-obs": s.token(t, idp, "", "system/Observation.rs"),
		"backoffice": testBackoffice,
		"admin":      testAdmin,
		"none":       "",
	}
}

func newIdP(t testing.TB) *oidctest.Provider {
	idp := oidctest.New(t)
	idp.AddClient("partner", "partner-secret")
	return idp
}

// matchIDs lists "Type/id" of a searchset's match entries, in order.
func matchIDs(a *answer) []string {
	var b struct {
		Entry []struct {
			Resource struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
			} `json:"resource"`
			Search struct {
				Mode string `json:"mode"`
			} `json:"search"`
		} `json:"entry"`
	}
	_ = json.Unmarshal(a.body, &b)
	out := []string{}
	for _, e := range b.Entry {
		if e.Search.Mode == "match" || e.Search.Mode == "" {
			out = append(out, e.Resource.ResourceType+"/"+e.Resource.ID)
		}
	}
	return out
}

type accessRow struct {
	name            string // the rule or the example the row proves
	who             string
	method, path    string
	body            string
	headers         []string
	status          int
	ids             []string // for a searchset: the match entries, in order
	notIn, contains string   // the body must not (must) contain these
}

func runRows(t *testing.T, s *recordsServer, tokens map[string]string, rows []accessRow) {
	t.Helper()
	for _, r := range rows {
		a := s.send(t, r.method, r.path, tokens[r.who], r.body, r.headers...)
		if a.status != r.status {
			t.Errorf("%s [%s %s %s]: %d, want %d: %.400s", r.name, r.who, r.method, r.path, a.status, r.status, a.body)
			continue
		}
		if a.status >= 400 && strings.HasPrefix(r.path, "/fhir") && a.json()["resourceType"] != "OperationOutcome" {
			t.Errorf("%s: the refusal is not an OperationOutcome: %.300s", r.name, a.body)
		}
		if r.ids != nil {
			if got := matchIDs(a); !slices.Equal(got, r.ids) {
				t.Errorf("%s [%s %s]: matches %v, want %v", r.name, r.who, r.path, got, r.ids)
			}
		}
		if r.notIn != "" && strings.Contains(string(a.body), r.notIn) {
			t.Errorf("%s [%s %s]: the answer holds %q: %.400s", r.name, r.who, r.path, r.notIn, a.body)
		}
		if r.contains != "" && !strings.Contains(string(a.body), r.contains) {
			t.Errorf("%s [%s %s]: the answer lacks %q: %.400s", r.name, r.who, r.path, r.contains, a.body)
		}
	}
}

// TestReadRulesPerPrincipal: what each principal reads, for every kind of
// type the rules treat on its own (authz package comment, "A member's
// compartment").
func TestReadRulesPerPrincipal(t *testing.T) {
	t.Parallel()
	idp := newIdP(t)
	s := startRecords(t, idp, &bOriginal)
	tok := principals(t, s, idp)
	var rows []accessRow
	// A member, read-only or read-write, v1 or v2: A's data and reference
	// data, never B's, by any type.
	for _, who := range []string{"member-ro", "member-rw", "member-v2"} {
		for _, id := range aIDs {
			rows = append(rows, accessRow{name: "A's own data and reference data", who: who, method: "GET", path: "/fhir/" + id, status: 200})
		}
		for _, id := range bIDs {
			rows = append(rows, accessRow{name: "B's data is not found", who: who, method: "GET", path: "/fhir/" + id, status: 404, notIn: "Brown"})
		}
		rows = append(rows,
			accessRow{name: "Binary by securityContext", who: who, method: "GET", path: "/fhir/Binary", status: 200, ids: []string{"Binary/a-bin"}},
			accessRow{name: "document Bundle by its Composition's subject", who: who, method: "GET", path: "/fhir/Bundle", status: 200, ids: []string{"Bundle/a-doc"}},
			accessRow{name: "Device by patient; a Device of nobody is reference data", who: who, method: "GET", path: "/fhir/Device", status: 200, ids: []string{"Device/a-dev", "Device/free-dev"}},
			accessRow{name: "Subscription by criteria, channel.header never returned", who: who, method: "GET", path: "/fhir/Subscription", status: 200,
				ids: []string{"Subscription/a-sub"}, notIn: "secret"},
			accessRow{name: "MessageHeader by focus (the rule for the rest)", who: who, method: "GET", path: "/fhir/MessageHeader", status: 200, ids: []string{"MessageHeader/a-msg"}},
			accessRow{name: "Provenance of A's data", who: who, method: "GET", path: "/fhir/Provenance", status: 200, ids: []string{"Provenance/a-prov"}},
			accessRow{name: "the shared Group is A's too", who: who, method: "GET", path: "/fhir/Group", status: 200, ids: []string{"Group/shared"}},
			accessRow{name: "Patient search finds A only", who: who, method: "GET", path: "/fhir/Patient", status: 200, ids: []string{"Patient/A"}},
			accessRow{name: "Patient?_id=B finds nothing", who: who, method: "GET", path: "/fhir/Patient?_id=B", status: 200, ids: []string{}},
			// The chained-search oracle, by birthdate, family and
			// identifier: the chain target must itself be visible.
			accessRow{name: "chain as an oracle: birthdate", who: who, method: "GET", path: "/fhir/Coverage?subscriber:Patient.birthdate=1961-03-14", status: 200, ids: []string{}},
			accessRow{name: "chain as an oracle: family", who: who, method: "GET", path: "/fhir/Coverage?subscriber.family=Brown", status: 200, ids: []string{}},
			accessRow{name: "chain as an oracle: identifier", who: who, method: "GET", path: "/fhir/Coverage?subscriber:Patient.identifier=urn:mrn|B-1", status: 200, ids: []string{}},
			accessRow{name: "a chain into A's own data works", who: who, method: "GET", path: "/fhir/Coverage?beneficiary:Patient.birthdate=1980-01-01", status: 200, ids: []string{"Coverage/a-cov"}},
			accessRow{name: "A's Coverage names B: A's own data", who: who, method: "GET", path: "/fhir/Coverage?subscriber=Patient/B", status: 200, ids: []string{"Coverage/a-cov"}},
			accessRow{name: "a chain through the shared Group", who: who, method: "GET", path: "/fhir/Group?member:Patient.gender=male", status: 200, ids: []string{}},
			accessRow{name: "includes never bring B", who: who, method: "GET", path: "/fhir/Group?_include=Group:member&_revinclude=Observation:subject", status: 200,
				ids: []string{"Group/shared"}, notIn: "Brown"},
			accessRow{name: "_include through A's Coverage", who: who, method: "GET", path: "/fhir/Coverage?_include=Coverage:subscriber", status: 200, notIn: "Brown"},
			accessRow{name: "_has is refused, not evaluated", who: who, method: "GET", path: "/fhir/Patient?_has:Observation:subject:code=8867-4", status: 400},
			accessRow{name: "type history is not for members", who: who, method: "GET", path: "/fhir/Observation/_history", status: 403},
			accessRow{name: "system history is not for members", who: who, method: "GET", path: "/fhir/_history", status: 403},
			accessRow{name: "type-level $everything is not for members", who: who, method: "GET", path: "/fhir/Patient/$everything", status: 403},
			accessRow{name: "B's $everything is not found", who: who, method: "GET", path: "/fhir/Patient/B/$everything", status: 404},
			accessRow{name: "A's $everything holds nothing of B", who: who, method: "GET", path: "/fhir/Patient/A/$everything?_count=1000", status: 200,
				notIn: "Brown", contains: "a-obs2"},
			accessRow{name: "history of B's deleted Observation is not found", who: who, method: "GET", path: "/fhir/Observation/b-del/_history", status: 404},
			accessRow{name: "$member-match looks up anyone: not for members", who: who, method: "POST", path: "/fhir/Patient/$member-match", body: `{"resourceType":"Parameters"}`, status: 403},
		)
	}
	rows = append(rows,
		// A system client with one type: every Observation, nothing else,
		// and no other type through a chain or an include.
		accessRow{name: "client with one type reads it all", who: "client-obs", method: "GET", path: "/fhir/Observation/b-obs", status: 200},
		accessRow{name: "client with one type: search", who: "client-obs", method: "GET", path: "/fhir/Observation?_sort=_id", status: 200,
			ids: []string{"Observation/a-obs", "Observation/a-obs2", "Observation/b-obs"}},
		accessRow{name: "client with one type: other types refused", who: "client-obs", method: "GET", path: "/fhir/Patient/B", status: 403},
		accessRow{name: "client with one type: a chain into a type it may not read matches nothing", who: "client-obs", method: "GET",
			path: "/fhir/Observation?subject:Patient.birthdate=1961-03-14", status: 200, ids: []string{}},
		accessRow{name: "client with one type: includes of other types are left out", who: "client-obs", method: "GET",
			path: "/fhir/Observation?_include=Observation:subject&_include=Observation:performer", status: 200, notIn: `"Patient"`},
		accessRow{name: "client with one type: no writes", who: "client-obs", method: "DELETE", path: "/fhir/Observation/b-obs", status: 403},
		accessRow{name: "client with one type: type history is s", who: "client-obs", method: "GET", path: "/fhir/Observation/_history", status: 200},
		accessRow{name: "client with one type: system history needs every type", who: "client-obs", method: "GET", path: "/fhir/_history", status: 403},
		accessRow{name: "client with one type: $everything needs Patient", who: "client-obs", method: "GET", path: "/fhir/Patient/B/$everything", status: 403},
		// The back office has /api roles and no FHIR access.
		accessRow{name: "back office: no FHIR", who: "backoffice", method: "GET", path: "/fhir/Patient/A", status: 401},
		accessRow{name: "back office: batch jobs", who: "backoffice", method: "GET", path: "/api/oidc_servers/none/batch_job", status: 404},
		accessRow{name: "back office: not the definitions", who: "backoffice", method: "POST", path: "/api/oidc_servers", body: `{}`, status: 403},
		accessRow{name: "a member token is no /api role", who: "member-rw", method: "GET", path: "/api/oidc_servers/none/batch_job", status: 401},
		// An admin sees everything.
		accessRow{name: "admin reads B", who: "admin", method: "GET", path: "/fhir/Patient/B", status: 200},
		accessRow{name: "admin reads B's deleted Observation as deleted", who: "admin", method: "GET", path: "/fhir/Observation/b-del", status: 410},
		accessRow{name: "admin: system history", who: "admin", method: "GET", path: "/fhir/_history", status: 200},
		accessRow{name: "no token", who: "none", method: "GET", path: "/fhir/Patient/A", status: 401},
	)
	runRows(t, s, tok, rows)
}

// TestWritesStayInTheMembersRecord: a member's write must leave the
// resource, before and after, wholly in their own compartment (authz
// package comment, "Writes by a member"); the examples are rows.
func TestWritesStayInTheMembersRecord(t *testing.T) {
	t.Parallel()
	idp := newIdP(t)
	s := startRecords(t, idp, &bOriginal)
	tok := principals(t, s, idp)
	obs := func(extra string) string {
		return `{"resourceType":"Observation","status":"final","code":{"text":"x"}` + extra + `}`
	}
	rows := []accessRow{
		{name: "subject B, performer A", who: "member-rw", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/B"},"performer":[{"reference":"Patient/A"}]`), status: 403},
		{name: "subject A, performer B", who: "member-rw", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/A"},"performer":[{"reference":"Patient/B"}]`), status: 403},
		{name: "a reference to B's Observation", who: "member-rw", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/A"},"derivedFrom":[{"reference":"Observation/b-obs"}]`), status: 403},
		{name: "an absolute reference to B", who: "member-rw", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/A"},"performer":[{"reference":"` + s.fhir + `/Patient/B"}]`), status: 403},
		{name: "B in a contained resource", who: "member-rw", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/A"},"contained":[{"resourceType":"Group","id":"g","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/B"}}]}],"focus":[{"reference":"#g"}]`), status: 403},
		{name: "the shared Group is readable, not writable", who: "member-rw", method: "PUT", path: "/fhir/Group/shared",
			body: `{"resourceType":"Group","id":"shared","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/A"}}]}`, status: 403},
		{name: "the Composition about two is not writable", who: "member-rw", method: "PUT", path: "/fhir/Composition/shared-comp",
			body: `{"resourceType":"Composition","id":"shared-comp","status":"final","type":{"text":"x"},"subject":{"reference":"Patient/A"},"date":"2024-03-01","author":[{"reference":"Practitioner/dr1"}],"title":"t"}`, status: 403},
		{name: "nor deletable", who: "member-rw", method: "DELETE", path: "/fhir/Group/shared", status: 403},
		{name: "a Provenance targeting B's ExplanationOfBenefit", who: "member-rw", method: "POST", path: "/fhir/Provenance",
			body: `{"resourceType":"Provenance","target":[{"reference":"ExplanationOfBenefit/b-eob"}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Patient/A"}}]}`, status: 403},
		// A DELETE of B in the same transaction deletes nothing (B is not
		// A's to see) and does not make a reference to B one to the
		// transaction's own writes.
		{name: "a transaction deleting B, then naming B as performer", who: "member-rw", method: "POST", path: "/fhir",
			body: `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/B"}},` +
				`{"request":{"method":"POST","url":"Observation"},"resource":` + obs(`,"subject":{"reference":"Patient/A"},"performer":[{"reference":"Patient/B"}]`) + `}]}`, status: 403},
		{name: "a transaction deleting B's Observation, then deriving from it", who: "member-rw", method: "POST", path: "/fhir",
			body: `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Observation/b-obs"}},` +
				`{"request":{"method":"POST","url":"Observation"},"resource":` + obs(`,"subject":{"reference":"Patient/A"},"derivedFrom":[{"reference":"Observation/b-obs"}]`) + `}]}`, status: 403},
		// Nor through what A shares with B: a resource read through its
		// references would be B's too.
		{name: "a Provenance targeting the Group A shares with B", who: "member-rw", method: "POST", path: "/fhir/Provenance",
			body: `{"resourceType":"Provenance","target":[{"reference":"Group/shared"}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Patient/A"}}]}`, status: 403},
		{name: "a Binary whose securityContext is the shared Group", who: "member-v2", method: "POST", path: "/fhir/Binary",
			body: `{"resourceType":"Binary","contentType":"text/plain","securityContext":{"reference":"Group/shared"},"data":"QQ=="}`, status: 403},
		{name: "a MessageHeader about A's Coverage, which names B as subscriber", who: "member-rw", method: "POST", path: "/fhir/MessageHeader",
			body: `{"resourceType":"MessageHeader","eventCoding":{"system":"urn:events","code":"x"},"source":{"endpoint":"urn:a"},"focus":[{"reference":"Coverage/a-cov"}]}`, status: 403},
		{name: "a Binary for B", who: "member-rw", method: "POST", path: "/fhir/Binary",
			body: `{"resourceType":"Binary","contentType":"text/plain","securityContext":{"reference":"Patient/B"}}`, status: 403},
		{name: "a Device for B", who: "member-rw", method: "POST", path: "/fhir/Device",
			body: `{"resourceType":"Device","patient":{"reference":"Patient/B"}}`, status: 403},
		{name: "a Subscription about B", who: "member-rw", method: "POST", path: "/fhir/Subscription",
			body: `{"resourceType":"Subscription","status":"off","reason":"x","criteria":"Observation?patient=Patient/B","channel":{"type":"rest-hook","endpoint":"http://127.0.0.1:9/h"}}`, status: 403},
		{name: "reference data is not the member's to write", who: "member-rw", method: "PUT", path: "/fhir/Practitioner/dr1",
			body: `{"resourceType":"Practitioner","id":"dr1"}`, status: 403},
		{name: "read-only scopes write nothing", who: "member-ro", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/A"}`), status: 403},
		// Allowed: the member's own record, references to reference data.
		{name: "A's own Observation", who: "member-rw", method: "POST", path: "/fhir/Observation",
			body: obs(`,"subject":{"reference":"Patient/A"},"performer":[{"reference":"Practitioner/dr1"}],"derivedFrom":[{"reference":"Observation/a-obs"}]`), status: 201},
		{name: "A's own Provenance", who: "member-rw", method: "POST", path: "/fhir/Provenance",
			body: `{"resourceType":"Provenance","target":[{"reference":"ExplanationOfBenefit/a-eob"}],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Patient/A"}}]}`, status: 201},
		{name: "A's own Binary", who: "member-v2", method: "POST", path: "/fhir/Binary",
			body: `{"resourceType":"Binary","contentType":"text/plain","securityContext":{"reference":"Patient/A"}}`, status: 201},
		{name: "A updates A's Observation", who: "member-rw", method: "PUT", path: "/fhir/Observation/a-obs2",
			body: `{"resourceType":"Observation","id":"a-obs2","status":"amended","code":{"text":"weight"},"subject":{"reference":"Patient/A"}}`, status: 200},
		// Nothing refused was written.
		{name: "the Group is as it was", who: "admin", method: "GET", path: "/fhir/Group/shared", status: 200, contains: "Patient/B"},
		{name: "no Observation names B but B's", who: "admin", method: "GET", path: "/fhir/Observation?subject=Patient/B,performer=Patient/B", status: 200},
		{name: "no Provenance targets B's EOB", who: "admin", method: "GET", path: "/fhir/Provenance?target=ExplanationOfBenefit/b-eob", status: 200, ids: []string{}},
	}
	runRows(t, s, tok, rows)
	if got := matchIDs(s.send(t, "GET", "/fhir/Observation?performer=Patient/B", testAdmin, "")); len(got) != 0 {
		t.Errorf("a refused write was stored: %v", got)
	}
}

// TestHistoryAfterResurrection: a deleted resource keeps its owner, so a
// member cannot take over B's deleted Observation or Patient by updating
// its id (the example); and history and vread check each version
// of a resource that changed hands.
func TestHistoryAfterResurrection(t *testing.T) {
	t.Parallel()
	idp := newIdP(t)
	s := startRecords(t, idp, &bOriginal)
	tok := principals(t, s, idp)
	rows := []accessRow{
		{name: "PUT on B's deleted Observation", who: "member-rw", method: "PUT", path: "/fhir/Observation/b-del",
			body: `{"resourceType":"Observation","id":"b-del","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}`, status: 404},
		{name: "PUT on B's deleted Patient", who: "member-rw", method: "PUT", path: "/fhir/Patient/B-old",
			body: `{"resourceType":"Patient","id":"B-old","name":[{"family":"Able"}]}`, status: 404},
		{name: "the same in a transaction", who: "member-rw", method: "POST", path: "/fhir",
			body: `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"PUT","url":"Observation/b-del"},"resource":{"resourceType":"Observation","id":"b-del","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}}]}`, status: 404},
		{name: "its versions stay B's", who: "member-rw", method: "GET", path: "/fhir/Observation/b-del/_history/1", status: 404},
		{name: "its history stays B's", who: "member-rw", method: "GET", path: "/fhir/Patient/B-old/_history", status: 404},
		{name: "the admin sees it deleted, unchanged", who: "admin", method: "GET", path: "/fhir/Observation/b-del/_history", status: 200, notIn: "Patient/A"},
	}
	runRows(t, s, tok, rows)

	// An admin moves an Observation from B to A: version 1 is B's,
	// version 2 A's. A reads version 2, not version 1, in vread and in
	// history; the total counts what A may see.
	moved := func(subject, family string) string {
		return `{"resourceType":"Observation","id":"moved","status":"final","code":{"text":"` + family + `"},"subject":{"reference":"Patient/` + subject + `"}}`
	}
	for _, d := range []string{moved("B", "Brown"), moved("A", "Able")} {
		if a := s.send(t, "PUT", "/fhir/Observation/moved", testAdmin, d); a.status >= 300 {
			t.Fatalf("admin: %d %s", a.status, a.body)
		}
	}
	runRows(t, s, tok, []accessRow{
		{name: "the current version is A's", who: "member-ro", method: "GET", path: "/fhir/Observation/moved", status: 200},
		{name: "version 2 is A's", who: "member-ro", method: "GET", path: "/fhir/Observation/moved/_history/2", status: 200},
		{name: "version 1 is B's: not found", who: "member-ro", method: "GET", path: "/fhir/Observation/moved/_history/1", status: 404, notIn: "Brown"},
		{name: "history shows A's version only", who: "member-ro", method: "GET", path: "/fhir/Observation/moved/_history", status: 200, notIn: "Brown", contains: `"total":1`},
		{name: "the admin sees both", who: "admin", method: "GET", path: "/fhir/Observation/moved/_history", status: 200, contains: `"total":2`},
	})
	// And back to B, then deleted: A's version stays A's, the deletion
	// and B's versions do not show.
	if a := s.send(t, "PUT", "/fhir/Observation/moved", testAdmin, moved("B", "Brown")); a.status != 200 {
		t.Fatal(a.status)
	}
	runRows(t, s, tok, []accessRow{
		{name: "now B's: not found", who: "member-ro", method: "GET", path: "/fhir/Observation/moved", status: 404},
		{name: "A's own past version", who: "member-ro", method: "GET", path: "/fhir/Observation/moved/_history/2", status: 200},
		{name: "no history for what is B's now", who: "member-ro", method: "GET", path: "/fhir/Observation/moved/_history", status: 404},
	})
}

// TestNotFoundMeansNotFound: for every interaction, a resource that exists
// but is B's answers exactly as one that does not exist (authz package
// comment, "Not found means not found"): the same status and the same
// body, ids aside.
func TestNotFoundMeansNotFound(t *testing.T) {
	t.Parallel()
	idp := newIdP(t)
	s := startRecords(t, idp, &bOriginal)
	tok := principals(t, s, idp)
	body := func(id string) string {
		return `{"resourceType":"Observation","id":"` + id + `","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}`
	}
	type call struct {
		name, method, path, body string
		headers                  []string
	}
	calls := func(id string) []call {
		return []call{
			{"read", "GET", "/fhir/Observation/" + id, "", nil},
			{"vread", "GET", "/fhir/Observation/" + id + "/_history/1", "", nil},
			{"vread of a deletion", "GET", "/fhir/Observation/" + id + "/_history/2", "", nil},
			{"history", "GET", "/fhir/Observation/" + id + "/_history", "", nil},
			{"delete", "DELETE", "/fhir/Observation/" + id, "", nil},
			{"delete with If-Match", "DELETE", "/fhir/Observation/" + id, "", []string{`If-Match: W/"1"`}},
			{"update", "PUT", "/fhir/Observation/" + id, body(id), nil},
			{"update with If-Match", "PUT", "/fhir/Observation/" + id, body(id), []string{`If-Match: W/"1"`}},
			{"conditional update", "PUT", "/fhir/Observation?_id=" + id, body(id), nil},
			{"conditional delete", "DELETE", "/fhir/Observation?_id=" + id, "", nil},
			{"conditional create", "POST", "/fhir/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}`,
				[]string{"If-None-Exist: _id=" + id}},
			{"transaction entry", "POST", "/fhir", `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Observation/` + id + `"}}]}`, nil},
			{"batch entry", "POST", "/fhir", `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/` + id + `"}},{"request":{"method":"DELETE","url":"Observation/` + id + `"}}]}`, nil},
			{"$everything", "GET", "/fhir/Patient/" + strings.ToUpper(id[:1]) + "/$everything", "", nil},
		}
	}
	uuid := regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	norm := func(a *answer, id string) string {
		b := strings.ReplaceAll(string(a.body), id, "ID")
		b = uuid.ReplaceAllString(b, "UUID")
		b = regexp.MustCompile(`"lastUpdated":"[^"]*"|"timestamp":"[^"]*"`).ReplaceAllString(b, "")
		return fmt.Sprintf("%d %s %s", a.status, a.header.Get("ETag"), b)
	}
	// b-obs exists and is B's, b-del is B's and deleted, nothing is
	// unknown. Patient/B against Patient/Z for $everything.
	for _, who := range []string{"member-rw", "member-v2"} {
		none := calls("zz-none")
		for _, theirs := range []string{"b-obs", "b-del"} {
			for i, c := range calls(theirs) {
				n := none[i]
				if c.name == "$everything" {
					c.path, n.path = "/fhir/Patient/B/$everything", "/fhir/Patient/Z/$everything"
				}
				got := norm(s.send(t, c.method, c.path, tok[who], c.body, c.headers...), theirs)
				want := norm(s.send(t, n.method, n.path, tok[who], n.body, n.headers...), "zz-none")
				if c.name == "$everything" {
					got, want = strings.ReplaceAll(got, "Patient/B", "Patient/X"), strings.ReplaceAll(want, "Patient/Z", "Patient/X")
				}
				if got != want {
					t.Errorf("%s, %s: B's %s answers\n  %s\nand a resource that does not exist\n  %s", who, c.name, theirs, got, want)
				}
			}
		}
	}
	// B's data is untouched.
	for _, id := range []string{"Observation/b-obs", "Observation/b-del/_history/1"} {
		if a := s.send(t, "GET", "/fhir/"+id, testAdmin, ""); a.status != 200 || !strings.Contains(string(a.body), "Patient/B") {
			t.Errorf("%s after the member's attempts: %d %s", id, a.status, a.body)
		}
	}
}

// TestBundleEntriesAuthorizedAsREST: each entry of a batch or transaction,
// and each conditional or ifNoneExist evaluation in one, needs the same
// SMART letters as the same call over REST ("Batches and Transactions":
// validated based on the actual requests within them).
func TestBundleEntriesAuthorizedAsREST(t *testing.T) {
	t.Parallel()
	idp := newIdP(t)
	s := startRecords(t, idp, &bOriginal)
	scopes := map[string][]string{
		"c": {"patient/Observation.c"}, "r": {"patient/Observation.r"}, "u": {"patient/Observation.u"},
		"d": {"patient/Observation.d"}, "s": {"patient/Observation.s"}, "write": {"patient/Observation.write"},
		"read": {"patient/Observation.read"}, "cs": {"patient/Observation.cs"}, "all": {"patient/Observation.*"},
	}
	own := `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/A"}}`
	put := `{"resourceType":"Observation","id":"a-obs","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/A"}}`
	entries := map[string]string{ // the interaction: a Bundle entry, and the same call over REST
		"create":             `{"request":{"method":"POST","url":"Observation"},"resource":` + own + `}`,
		"read":               `{"request":{"method":"GET","url":"Observation/a-obs"}}`,
		"vread":              `{"request":{"method":"GET","url":"Observation/a-obs/_history/1"}}`,
		"search":             `{"request":{"method":"GET","url":"Observation?code=8867-4"}}`,
		"update":             `{"request":{"method":"PUT","url":"Observation/a-obs"},"resource":` + put + `}`,
		"delete":             `{"request":{"method":"DELETE","url":"Observation/a-obs2"}}`,
		"conditional create": `{"request":{"method":"POST","url":"Observation","ifNoneExist":"code=8867-4"},"resource":` + own + `}`,
		"conditional update": `{"request":{"method":"PUT","url":"Observation?code=8867-4"},"resource":` + strings.Replace(put, `"id":"a-obs",`, "", 1) + `}`,
		"conditional delete": `{"request":{"method":"DELETE","url":"Observation?code=nothing-matches"}}`,
	}
	rest := map[string][3]string{ // method, path, body
		"create": {"POST", "/fhir/Observation", own}, "read": {"GET", "/fhir/Observation/a-obs", ""},
		"vread": {"GET", "/fhir/Observation/a-obs/_history/1", ""}, "search": {"GET", "/fhir/Observation?code=8867-4", ""},
		"update": {"PUT", "/fhir/Observation/a-obs", put}, "delete": {"DELETE", "/fhir/Observation/a-obs2", ""},
		"conditional create": {"POST", "/fhir/Observation", own}, "conditional update": {"PUT", "/fhir/Observation?code=8867-4", strings.Replace(put, `"id":"a-obs",`, "", 1)},
		"conditional delete": {"DELETE", "/fhir/Observation?code=nothing-matches", ""},
	}
	allowed := map[string]map[string]bool{ // scope -> interactions it allows
		"c": {"create": true}, "r": {"read": true, "vread": true}, "u": {"update": true}, "d": {"delete": true},
		"s": {"search": true}, "write": {"create": true, "update": true, "delete": true},
		"read": {"read": true, "vread": true, "search": true},
		"cs":   {"create": true, "search": true, "conditional create": true},
		"all":  {"create": true, "read": true, "vread": true, "search": true, "update": true, "delete": true, "conditional create": true, "conditional update": true, "conditional delete": true},
	}
	for name, sc := range scopes {
		tok := s.token(t, idp, "A", sc...)
		for what, entry := range entries {
			want := allowed[name][what]
			for _, typ := range []string{"batch", "transaction"} {
				a := s.send(t, "POST", "/fhir", tok, `{"resourceType":"Bundle","type":"`+typ+`","entry":[`+entry+`]}`, "Prefer: return=representation")
				ok := a.status == 200
				if typ == "batch" && ok {
					var b struct {
						Entry []struct {
							Response struct{ Status string } `json:"response"`
						} `json:"entry"`
					}
					_ = json.Unmarshal(a.body, &b)
					ok = len(b.Entry) == 1 && (strings.HasPrefix(b.Entry[0].Response.Status, "2"))
				}
				if ok != want {
					t.Errorf("%s (%v) in a %s: allowed %v, want %v: %.300s", what, sc, typ, ok, want, a.body)
				}
			}
			r := rest[what]
			var hdr []string
			if what == "conditional create" {
				hdr = []string{"If-None-Exist: code=8867-4"}
			}
			if a := s.send(t, r[0], r[1], tok, r[2], hdr...); (a.status < 300) != want {
				t.Errorf("%s (%v) over REST: %d, want allowed %v: %.300s", what, sc, a.status, want, a.body)
			}
		}
	}
	// With .write only, ifNoneExist with return=representation does not
	// read the stored resource (the example).
	tok := s.token(t, idp, "A", "patient/Observation.write")
	a := s.send(t, "POST", "/fhir", tok, `{"resourceType":"Bundle","type":"transaction","entry":[`+entries["conditional create"]+`]}`, "Prefer: return=representation")
	if a.status != 403 || strings.Contains(string(a.body), "8867-4") {
		t.Errorf(".write with ifNoneExist: %d %s", a.status, a.body)
	}
}

// TestPagesCheckedWhenServed: a kept search page or $everything page
// re-checks each resource when it is served (resources change hands
// between pages), and a cursor works only with the rights it was made
// with.
func TestPagesCheckedWhenServed(t *testing.T) {
	t.Parallel()
	idp := newIdP(t)
	s := startRecords(t, idp, &bOriginal)
	tok := principals(t, s, idp)
	narrower := s.token(t, idp, "A", "patient/Observation.rs", "patient/Patient.rs")
	next := func(a *answer) string {
		var b struct {
			Link []struct{ Relation, URL string } `json:"link"`
		}
		_ = json.Unmarshal(a.body, &b)
		for _, l := range b.Link {
			if l.Relation == "next" {
				return l.URL
			}
		}
		t.Fatalf("no next link: %s", a.body)
		return ""
	}
	first := s.send(t, "GET", "/fhir/Observation?_count=1&_sort=_id", tok["member-ro"], "")
	if ids := matchIDs(first); !slices.Equal(ids, []string{"Observation/a-obs"}) {
		t.Fatalf("first page %v", ids)
	}
	ev := s.send(t, "GET", "/fhir/Patient/A/$everything?_count=1", tok["member-ro"], "")
	if ev.status != 200 {
		t.Fatalf("$everything: %d", ev.status)
	}
	// a-obs2 changes hands (to B) before the next pages are served.
	if a := s.send(t, "PUT", "/fhir/Observation/a-obs2", testAdmin,
		`{"resourceType":"Observation","id":"a-obs2","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/B"}}`); a.status != 200 {
		t.Fatal(a.status)
	}
	second := s.send(t, "GET", next(first), tok["member-ro"], "")
	if second.status != 200 || strings.Contains(string(second.body), "a-obs2") {
		t.Errorf("the next page serves what changed hands: %d %s", second.status, second.body)
	}
	// Every page of $everything, walked to the end, leaves it out too.
	for page, url := 0, next(ev); url != ""; page++ {
		a := s.send(t, "GET", url, tok["member-ro"], "")
		if a.status != 200 || strings.Contains(string(a.body), "a-obs2") {
			t.Fatalf("$everything page %d: %d %s", page, a.status, a.body)
		}
		url = ""
		var b struct {
			Link []struct{ Relation, URL string } `json:"link"`
		}
		_ = json.Unmarshal(a.body, &b)
		for _, l := range b.Link {
			if l.Relation == "next" {
				url = l.URL
			}
		}
	}
	// The cursors work only with the same rights.
	for _, who := range []string{"member-rw", "client-obs", "admin"} {
		if a := s.send(t, "GET", next(first), tok[who], ""); a.status != 403 {
			t.Errorf("search cursor used by %s: %d", who, a.status)
		}
		if a := s.send(t, "GET", next(ev), tok[who], ""); a.status != 403 && a.status != 410 {
			t.Errorf("$everything cursor used by %s: %d", who, a.status)
		}
	}
	if a := s.send(t, "GET", next(first), narrower, ""); a.status != 403 {
		t.Errorf("search cursor with narrower scopes: %d", a.status)
	}
}
