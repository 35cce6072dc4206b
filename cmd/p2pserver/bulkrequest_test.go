package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestBulkJobRequestValidation: POST /api/oidc_servers/{id}/bulk_job
// refuses a request it cannot carry out, with {"error": ...} naming each
// bad field, and starts nothing. The member rows follow what PDex STU 2.1
// $bulk-member-match takes per member (pdex-parameters-multi-member-match-
// bundle-in: MemberPatient, CoverageToMatch, CoverageToLink, Consent, each
// a valid FHIR R4 resource of its type; the Consent and the coverage are
// the member's own).
func TestBulkJobRequestValidation(t *testing.T) {
	t.Parallel()
	_, target, pid := bulkPair(t, nil, nil)
	ms := []*bulkMemberFixture{{n: 0, family: "Valid", given: "Ann", gender: "female", birth: "1980-01-01", coverage: "OLD-0000"},
		{n: 1, family: "Valid", given: "Bob", gender: "male", birth: "1981-01-01", coverage: "OLD-0001"}}
	createMembers(t, target, ms)
	var noSystem map[string]any
	if st := target.call("POST", "/api/oidc_servers", testAdmin, map[string]any{"name": "Member Flow Only", "issuer": "http://127.0.0.1:1",
		"clientId": "member-app", "fhirEndpoint": "http://127.0.0.1:1/fhir"}, &noSystem); st != 201 {
		t.Fatalf("definition: %d %v", st, noSystem)
	}
	member := func(change func(m map[string]any)) map[string]any {
		m := memberRequest(ms[0], ms[0].coverage, newPayerNPI)
		if change != nil {
			change(m)
		}
		return m
	}
	body := func(members ...map[string]any) map[string]any {
		list := []any{}
		for _, m := range members {
			list = append(list, m)
		}
		return map[string]any{"members": list}
	}
	group := func(id string, members []string, tag bool) {
		g := map[string]any{"resourceType": "Group", "id": id, "type": "person", "actual": true}
		var list []any
		for _, m := range members {
			list = append(list, map[string]any{"entity": map[string]any{"reference": "Patient/" + m}})
		}
		if list != nil {
			g["member"] = list
		}
		if tag {
			g["meta"] = map[string]any{"tag": []any{map[string]any{"system": "urn:p2pserver:owner", "code": "another-payer"}}}
		}
		if st := target.call("PUT", "/fhir/Group/"+id, testAdmin, g, nil); st != 201 && st != 200 {
			t.Fatalf("Group/%s: %d", id, st)
		}
	}
	// m0000's coverage at the old payer and consent are on file, so that
	// only the owner of Group "theirs" is wrong.
	cov := memberRequest(ms[0], ms[0].coverage, newPayerNPI)["coverageToMatch"].(map[string]any)
	cov["id"] = "m0000-old"
	if st := target.call("PUT", "/fhir/Coverage/m0000-old", testAdmin, cov, nil); st != 201 {
		t.Fatalf("Coverage: %d", st)
	}
	consent := hrexConsent("m0000", newPayerNPI)
	consent["id"] = "m0000-consent"
	if st := target.call("PUT", "/fhir/Consent/m0000-consent", testAdmin, consent, nil); st != 201 {
		t.Fatalf("Consent: %d", st)
	}
	group("empty", nil, false)
	group("theirs", []string{"m0000"}, true)
	path := fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid)

	rows := []struct {
		name   string
		path   string
		ctype  string
		body   any
		status int
		field  string // named in the error
	}{
		{"an unknown definition", "/api/oidc_servers/99999/bulk_job", "", body(member(nil)), 404, ""},
		{"a definition without system access", fmt.Sprintf("/api/oidc_servers/%v/bulk_job", noSystem["pid"]), "", body(member(nil)), 409, "systemClientId"},
		{"an empty body object", path, "", map[string]any{}, 400, "members"},
		{"no members", path, "", map[string]any{"members": []any{}}, 400, "members"},
		{"members not a list", path, "", map[string]any{"members": "m0000"}, 400, "members"},
		{"an unknown field", path, "", map[string]any{"members": []any{member(nil)}, "memberz": 1}, 400, "memberz"},
		{"a duplicate patientId", path, "", body(member(nil), member(nil)), 400, "members[1].patientId"},
		{"a Patient that does not exist", path, "", body(member(func(m map[string]any) { m["patientId"] = "nobody" })), 400, "members[0].patientId"},
		{"a patientId that is not an id", path, "", body(member(func(m map[string]any) { m["patientId"] = "../m0000" })), 400, "members[0].patientId"},
		{"coverageToMatch of another type", path, "", body(member(func(m map[string]any) { m["coverageToMatch"] = map[string]any{"resourceType": "Patient"} })), 400, "members[0].coverageToMatch"},
		{"coverageToMatch not valid FHIR R4", path, "", body(member(func(m map[string]any) { m["coverageToMatch"].(map[string]any)["status"] = 12 })), 400, "members[0].coverageToMatch"},
		{"coverageToMatch of another member", path, "", body(member(func(m map[string]any) {
			m["coverageToMatch"].(map[string]any)["beneficiary"] = map[string]any{"reference": "Patient/m0001"}
		})), 400, "members[0].coverageToMatch"},
		{"coverageToLink not valid FHIR R4", path, "", body(member(func(m map[string]any) {
			m["coverageToLink"] = map[string]any{"resourceType": "Coverage", "status": "active", "payor": "us"}
		})), 400, "members[0].coverageToLink"},
		{"no consent", path, "", body(member(func(m map[string]any) { delete(m, "consent") })), 400, "members[0].consent"},
		{"a consent not valid FHIR R4", path, "", body(member(func(m map[string]any) { m["consent"].(map[string]any)["provision"] = "yes" })), 400, "members[0].consent"},
		{"the consent of another member", path, "", body(member(func(m map[string]any) { m["consent"] = hrexConsent("m0001", newPayerNPI) })), 400, "members[0].consent"},
		{"a Task that does not exist", path, "", body(member(func(m map[string]any) { m["taskId"] = "no-such-task" })), 400, "members[0].taskId"},
		{"members and a groupId", path, "", map[string]any{"members": []any{member(nil)}, "groupId": "empty"}, 400, "groupId"},
		{"a Group that does not exist", path, "", map[string]any{"groupId": "no-such-group"}, 400, "groupId"},
		{"an empty Group", path, "", map[string]any{"groupId": "empty"}, 400, "groupId"},
		// PDex STU 2.1 §pdex-161: a $bulk-member-match Group belongs to
		// the payer that asked for it.
		{"a Group of another payer", path, "", map[string]any{"groupId": "theirs"}, 400, "belongs to the client"},
		{"since a date, not an instant", path, "", map[string]any{"members": []any{member(nil)}, "since": "2024-01-31"}, 400, "since"},
		{"since in the future", path, "", map[string]any{"members": []any{member(nil)}, "since": "2999-01-01T00:00:00Z"}, 400, "since"},
		{"since not a time", path, "", map[string]any{"members": []any{member(nil)}, "since": "last week"}, 400, "since"},
		{"another content type", path, "text/plain", body(member(nil)), 415, ""},
		{"a body over the limit", path, "", map[string]any{"members": []any{member(func(m map[string]any) {
			m["consent"].(map[string]any)["text"] = map[string]any{"status": "generated", "div": strings.Repeat("x", 2<<20)}
		})}}, 413, ""},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			h := map[string]string{"Authorization": "Bearer " + testBackoffice}
			if row.ctype != "" {
				h["Content-Type"] = row.ctype
			}
			var out map[string]any
			st := target.callHeaders("POST", row.path, h, row.body, &out)
			if st != row.status || out["error"] == nil || !strings.Contains(fmt.Sprint(out["error"]), row.field) {
				t.Errorf("%d %v; want %d naming %q", st, out, row.status, row.field)
			}
		})
	}
	var jobs map[string]any
	if st := target.call("GET", path, testBackoffice, nil, &jobs); st != 200 || len(jobs["bulkJobs"].([]any)) != 0 {
		t.Errorf("a refused request started a job: %d %v", st, jobs)
	}
}
