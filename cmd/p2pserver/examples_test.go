package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/examples"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestExampleRequestBodies sends every file of examples/ (the bodies the
// README's curl commands use) to a real p2pserver, as the README sends
// it, and checks the answer the README promises. A file no row sends
// fails the test, so an example cannot be added and left untried.
//
// The walkthrough's fixed addresses (source 127.0.0.1:8081, OpenID
// provider 127.0.0.1:8090) are replaced by the test servers' addresses,
// and batch-job.json's placeholders by real tokens and ids, as the README
// does with sed.
func TestExampleRequestBodies(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	sim, err := sohartest.New(sohartest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.AddClient("sim-client", "sim-secret")
	eligibility := filepath.Join(t.TempDir(), "eligibility.json")
	cfg := fmt.Sprintf(`{"routes":[{"payerId":"60054","vendor":"sohar","name":"Aetna"}],
		"vendors":{"sohar":{"baseUrl":%q,"clientId":"sim-client","clientSecret":"sim-secret","webhookSecret":%q}}}`, sim.URL, sim.WebhookSecret())
	if err := os.WriteFile(eligibility, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	source := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer(), "-organization-id", "PAYRA")
	target := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey,
		"-eligibility-config", eligibility)
	// The old payer holds Angelic Mueller's Synthea record, as in the
	// README's walkthrough.
	raw, err := os.ReadFile(td.Glob(t, "synthea/Angelic_Mueller_*.json")[0])
	if err != nil {
		t.Fatal(err)
	}
	if st := source.call("POST", "/fhir", testAdmin, raw, nil); st != 200 {
		t.Fatalf("load the source: %d", st)
	}
	var found map[string]any
	source.call("GET", "/fhir/Patient?family=Mueller&given=Angelic", testAdmin, nil, &found)
	sourcePatient := fmt.Sprint(found["entry"].([]any)[0].(map[string]any)["resource"].(map[string]any)["id"])

	walkthrough := strings.NewReplacer("http://127.0.0.1:8081", source.URL, "http://127.0.0.1:8090", idp.Issuer())
	var taskID string
	var pid any
	rows := []struct {
		file   string
		server *payer
		method string
		path   string
		token  string
		// fill replaces placeholders, when the file has any.
		fill  func([]byte) []byte
		want  int
		check func(t *testing.T, answer map[string]any)
	}{
		{file: "patient.json", server: target, method: "PUT", path: "/fhir/Patient/member-1", want: 201,
			check: func(t *testing.T, a map[string]any) {
				if a["id"] != "member-1" || a["birthDate"] != "1978-04-03" {
					t.Errorf("created %v", a)
				}
				// The README's update with If-Match and its conditional create.
				body, _ := examples.Read("patient.json")
				if st := target.callHeaders("PUT", "/fhir/Patient/member-1", map[string]string{"If-Match": `W/"1"`}, body, nil); st != 200 {
					t.Errorf("update with If-Match W/\"1\": %d", st)
				}
				if st := target.callHeaders("PUT", "/fhir/Patient/member-1", map[string]string{"If-Match": `W/"1"`}, body, nil); st != 412 {
					t.Errorf("stale If-Match: %d, want 412", st)
				}
				if st := target.callHeaders("POST", "/fhir/Patient", map[string]string{"If-None-Exist": "identifier=urn:payer-b:member-id|M-1001"}, body, nil); st != 200 {
					t.Errorf("conditional create of an existing member: %d, want 200", st)
				}
			}},
		{file: "transaction-bundle.json", server: target, method: "POST", path: "/fhir", want: 200,
			check: func(t *testing.T, a map[string]any) {
				if a["type"] != "transaction-response" || len(a["entry"].([]any)) != 3 {
					t.Fatalf("answer %v", a)
				}
				var obs map[string]any
				target.call("GET", "/fhir/Observation?subject.family=muller&code=http://loinc.org|8867-4", "", nil, &obs)
				if obs["entry"] == nil {
					t.Error("the Observation is not found through its Patient: the urn:uuid reference was not rewritten")
				}
			}},
		{file: "add-payer-task.json", server: target, method: "POST", path: "/fhir/Task", want: 201,
			check: func(t *testing.T, a map[string]any) {
				taskID, _ = a["id"].(string)
				if a["status"] != "requested" || a["authoredOn"] == nil || taskID == "" {
					t.Errorf("Task %v", a)
				}
			}},
		{file: "oidc-server.json", server: target, method: "POST", path: "/api/oidc_servers", token: testAdmin, want: 201,
			fill: func(b []byte) []byte { return []byte(walkthrough.Replace(string(b))) },
			check: func(t *testing.T, a map[string]any) {
				pid = a["pid"]
				if a["hasClientSecret"] != true || strings.Contains(fmt.Sprint(a), "payer-b-secret") || a["organizationId"] != "PAYRA" {
					t.Errorf("definition %v", a)
				}
			}},
		{file: "member-match.json", server: source, method: "POST", path: "/fhir/Patient/$member-match", token: testAdmin, want: 200,
			check: func(t *testing.T, a map[string]any) {
				if !strings.Contains(fmt.Sprint(a["parameter"]), "MemberIdentifier") {
					t.Errorf("no MemberIdentifier in %v", a)
				}
			}},
		{file: "eligibility-request.json", server: target, method: "POST", path: "/fhir/CoverageEligibilityRequest/$submit", want: 200,
			check: func(t *testing.T, a map[string]any) {
				if a["resourceType"] != "CoverageEligibilityResponse" || a["outcome"] != "complete" {
					t.Errorf("answer %v", a)
				}
			}},
		{file: "batch-job.json", method: "POST", want: 202, server: target, token: testBackoffice,
			fill: func(b []byte) []byte {
				tok, err := idp.MintFor([]string{source.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: sourcePatient})
				if err != nil {
					t.Fatal(err)
				}
				return []byte(strings.NewReplacer("REFRESH_TOKEN", tok.RefreshToken, "ACCESS_TOKEN", tok.AccessToken,
					"SOURCE_PATIENT_ID", sourcePatient, "TASK_ID", taskID).Replace(string(b)))
			},
			check: func(t *testing.T, a map[string]any) {
				path := fmt.Sprintf("/api/oidc_servers/%v/batch_job/%v", pid, a["batchJobId"])
				deadline := time.Now().Add(60 * time.Second)
				for a["batchStatus"] != "COMPLETED" && a["batchStatus"] != "FAILED" && time.Now().Before(deadline) {
					time.Sleep(50 * time.Millisecond)
					target.call("GET", path, testBackoffice, nil, &a)
				}
				if a["batchStatus"] != "COMPLETED" || a["taskId"] != taskID {
					t.Fatalf("job %v: %v", a["batchStatus"], a)
				}
				var eob map[string]any
				target.call("GET", "/fhir/ExplanationOfBenefit?_summary=count", "", nil, &eob)
				if eob["total"] == float64(0) {
					t.Error("no ExplanationOfBenefit was brought over")
				}
			}},
	}
	sent := map[string]bool{}
	for _, row := range rows {
		t.Run(row.file, func(t *testing.T) {
			sent[row.file] = true
			body, err := examples.Read(row.file)
			if err != nil {
				t.Fatal(err)
			}
			var check map[string]any
			if err := json.Unmarshal(body, &check); err != nil {
				t.Fatalf("%s is not JSON: %v", row.file, err)
			}
			if row.fill != nil {
				body = row.fill(body)
			}
			path := row.path
			if path == "" {
				path = fmt.Sprintf("/api/oidc_servers/%v/batch_job", pid)
			}
			var answer map[string]any
			if st := row.server.call(row.method, path, row.token, body, &answer); st != row.want {
				t.Fatalf("%s %s with %s: %d, want %d: %v", row.method, path, row.file, st, row.want, answer)
			}
			row.check(t, answer)
		})
	}
	for _, name := range examples.Names() {
		if !sent[name] {
			t.Errorf("examples/%s is not sent by any row", name)
		}
	}
	// The README's searches over what the examples made.
	var tasks map[string]any
	target.call("GET", "/fhir/Task?code=p2p-request-add-provider-id&requester="+url.QueryEscape("Patient/member-1"), "", nil, &tasks)
	if tasks["entry"] == nil {
		t.Error("the add-payer Task is not found by code and requester")
	}
}
