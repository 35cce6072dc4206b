package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
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

// TestBulkJobRoutesAccessAndPaging: the bulk job routes answer the admin
// and back-office tokens only (401 without a known token, whatever else
// it is), a job only under its own definition, and the members in pages
// bounded as their next links say.
func TestBulkJobRoutesAccessAndPaging(t *testing.T) {
	t.Parallel()
	_, target, pid := bulkPair(t, nil, nil)
	var ms []*bulkMemberFixture
	var list []any
	for i := range 5 {
		m := &bulkMemberFixture{n: i, family: fmt.Sprintf("Paged%c", 'a'+i), given: "Pat", gender: "female", birth: "1990-01-01", coverage: fmt.Sprintf("OLD-%04d", i)}
		ms = append(ms, m)
		list = append(list, memberRequest(m, m.coverage, newPayerNPI))
	}
	createMembers(t, target, ms)
	path := startBulk(t, target, pid, map[string]any{"members": list})
	st := waitBulk(t, target, path, time.Minute)
	if st["batchStatus"] != "COMPLETED" || st["members"].(map[string]any)["notMatched"] != 5.0 || st["failureReason"] != nil || st["endTime"] == nil {
		t.Fatalf("job (the old payer knows none of them): %v", st)
	}
	var other map[string]any
	if code := target.call("POST", "/api/oidc_servers", testAdmin, map[string]any{"name": "Another", "issuer": "http://127.0.0.1:1",
		"clientId": "member-app", "fhirEndpoint": "http://127.0.0.1:1/fhir"}, &other); code != 201 {
		t.Fatalf("definition: %d", code)
	}
	elsewhere := strings.Replace(path, fmt.Sprintf("/oidc_servers/%d/", pid), fmt.Sprintf("/oidc_servers/%v/", other["pid"]), 1)
	base := fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid)

	for _, row := range []struct {
		name, method, path, token string
		status                    int
	}{
		{"no token lists", "GET", base, "", 401},
		{"an unknown token reads", "GET", path, "not-a-token", 401},
		{"a member-style token reads the members", "GET", path + "/members", "eyJhbGciOiJSUzI1NiJ9.e30.sig", 401},
		{"no token stops", "POST", path + "/stop", "", 401},
		{"no token starts", "POST", base, "", 401},
		{"another definition's path", "GET", elsewhere, testBackoffice, 404},
		{"another definition's members", "GET", elsewhere + "/members", testBackoffice, 404},
		{"a job id that is not a number", "GET", base + "/abc", testBackoffice, 404},
		{"job 0", "GET", base + "/0/members", testBackoffice, 404},
		{"count 0", "GET", path + "/members?count=0", testBackoffice, 400},
		{"count 101", "GET", path + "/members?count=101", testBackoffice, 400},
		{"count not a number", "GET", path + "/members?count=ten", testBackoffice, 400},
		{"from negative", "GET", path + "/members?from=-1", testBackoffice, 400},
		{"from not a number", "GET", path + "/members?from=x", testBackoffice, 400},
		{"list count 101", "GET", base + "?count=101", testBackoffice, 400},
		{"the admin reads", "GET", path, testAdmin, 200},
	} {
		t.Run(row.name, func(t *testing.T) {
			var body any
			if row.method == "POST" {
				body = map[string]any{"members": list}
			}
			var out map[string]any
			if code := target.call(row.method, row.path, row.token, body, &out); code != row.status || (code >= 400 && out["error"] == nil) {
				t.Errorf("%d %v, want %d", code, out, row.status)
			}
		})
	}

	// Pages of 2: 2, 2, 1, in request order; from past the end is empty.
	var seen []string
	next := path + "/members?count=2"
	for pages := 0; next != ""; pages++ {
		if pages > 3 {
			t.Fatalf("more than 3 pages: %v", seen)
		}
		var page map[string]any
		if code := target.call("GET", next, testBackoffice, nil, &page); code != 200 {
			t.Fatalf("%s: %d", next, code)
		}
		for _, m := range page["members"].([]any) {
			m := m.(map[string]any)
			if m["outcome"] != "notMatched" || m["resourcesWritten"] != 0.0 {
				t.Errorf("member %v", m)
			}
			seen = append(seen, m["patientId"].(string))
		}
		next, _ = page["next"].(string)
	}
	if strings.Join(seen, ",") != "m0000,m0001,m0002,m0003,m0004" {
		t.Errorf("members paged: %v", seen)
	}
	var tail map[string]any
	if code := target.call("GET", path+"/members?from=5", testBackoffice, nil, &tail); code != 200 || len(tail["members"].([]any)) != 0 || tail["next"] != nil {
		t.Errorf("past the end: %d %v", code, tail)
	}
	if code := target.call("GET", path+"/members?from=4000000000", testBackoffice, nil, &tail); code != 200 || len(tail["members"].([]any)) != 0 {
		t.Errorf("far past the end: %d %v", code, tail)
	}
}
