package eligibility_test

import (
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/connectors"
	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	"github.com/p2pserver/p2pserver/internal/apidoc"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestAPIRoutesDocumented(t *testing.T) {
	e, _ := tfEnv(t)
	apidoc.CheckRoutes(t, e.api)
}

// The status table of every vendor, as the README shows it. A change to a
// mapping changes this file: run go test ./facades/eligibility -update and
// copy it into the README.
func TestStatusTableGolden(t *testing.T) {
	cfg, err := eligibility.ParseConfig([]byte(`{"vendors": {
	  "sohar": {"clientId": "c", "clientSecret": "s"},
	  "verifytreatment": {"baseUrl": "http://127.0.0.1:1", "clientId": "c", "clientSecret": "s"},
	  "tuuthfairy": {"endpoint": "http://127.0.0.1:1/graphql", "apiKey": "k"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	conns, err := connectors.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := eligibility.StatusTable(conns...)
	if err != nil {
		t.Fatal(err)
	}
	got := eligibility.Markdown(rows)
	path := filepath.Join("testdata", "status-table.golden.md")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if got != string(want) {
		t.Fatalf("the status table changed; run go test -update and update the README:\n%s", got)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil || !strings.Contains(string(readme), got) {
		t.Errorf("the project README does not hold the current status table (%v)", err)
	}
	// Every status the vendors document is in it.
	for _, s := range []string{"complete.eligible", "complete.ineligible", "error.member.id", "error.member.name", "error.member.dob",
		"error.payer", "error.payer.npi", "connection:auth_2fa_code", "connection:auth_failed", "connection:auth_in_progress",
		"connection:connected", "connection:disconnected", "error:patient_not_found"} {
		if !strings.Contains(got, "`"+s+"`") {
			t.Errorf("status %s is not mapped", s)
		}
	}
}

// The connection admin API refuses to take credentials it cannot encrypt.
func TestConnectionsNeedASecretKey(t *testing.T) {
	e, sim := tfEnv(t)
	e.stop()
	e.noCipher = true
	e.start()
	r := e.admin("POST", "/api/eligibility/connections", map[string]any{"websiteId": "metdental.com", "provider": map[string]any{"npi": tfNPI},
		"credentials": map[string]any{"username": "u", "password": "p"}})
	if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "secret key") {
		t.Fatalf("connect without a key: %d %s", r.Status, r.Body)
	}
	if sim.Calls("connectDatasource") != 0 {
		t.Fatal("credentials were sent although they cannot be stored")
	}
	// Without a datasource vendor the routes answer 404.
	s, _ := soharEnv(t, nil)
	if r := s.admin("GET", "/api/eligibility/connections", nil); r.Status != http.StatusNotFound {
		t.Fatalf("no datasource vendor: %d %s", r.Status, r.Body)
	}
}

// A request whose Patient, Coverage, insurer and provider are resources on
// the server (relative references), with the provider named by a logical
// NPI reference.
func TestRequestWithStoredResources(t *testing.T) {
	e, sim := soharEnv(t, func(c *eligibility.Config, _ *soharConfig) {
		c.Routes[0].PlaceOfService, c.Routes[0].Specialty = "02", "PCH"
	})
	create := func(res map[string]any) string {
		r := e.do("POST", "/fhir/"+res["resourceType"].(string), res)
		if r.Status != http.StatusCreated {
			t.Fatalf("create %s: %d %s", res["resourceType"], r.Status, r.Body)
		}
		return res["resourceType"].(string) + "/" + idOf(r.JSON)
	}
	pat := create(map[string]any{"resourceType": "Patient", "name": []any{map[string]any{"family": "Stored", "given": []any{"Sam"}}},
		"birthDate": "1990-01-31", "address": []any{map[string]any{"state": "ny"}}})
	org := create(map[string]any{"resourceType": "Organization", "identifier": []any{map[string]any{"value": "60054"}}, "name": "Aetna"})
	cov := create(map[string]any{"resourceType": "Coverage", "status": "active", "beneficiary": map[string]any{"reference": pat},
		"payor":      []any{map[string]any{"reference": org}},
		"identifier": []any{map[string]any{"type": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}}}, "value": "MB-77"}}})
	req := map[string]any{"resourceType": "CoverageEligibilityRequest", "status": "active", "purpose": []any{"validation"},
		"patient": map[string]any{"reference": pat}, "created": "2026-11-23", "insurer": map[string]any{"reference": org},
		"provider":  map[string]any{"identifier": map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}},
		"insurance": []any{map[string]any{"coverage": map[string]any{"reference": cov}}}}
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", req)
	if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	validR4(t, r.JSON)
	in := sim.Verifications()[0].Input
	// Place of service and specialty come from the route's defaults here.
	if in.Patient.FirstName != "Sam" || in.Patient.State != "NY" || in.Patient.MemberID != "MB-77" || in.Patient.DateOfBirth != "01/31/1990" ||
		in.PlaceOfServiceCode != "02" || in.SpecialtyCode != "PCH" {
		t.Fatalf("Sohar got %+v", in)
	}
	if r.JSON["patient"].(map[string]any)["reference"] != pat || r.JSON["contained"] != nil {
		t.Fatalf("response patient %v", r.JSON["patient"])
	}
	// A reference to a resource that does not exist is named.
	req["patient"] = map[string]any{"reference": "Patient/nope"}
	if r := e.do("POST", "/fhir/CoverageEligibilityRequest", req); r.Status != http.StatusUnprocessableEntity || !strings.Contains(string(r.Body), "Patient/nope") {
		t.Fatalf("dangling reference: %d %s", r.Status, r.Body)
	}
}

// A client may cancel a check by cancelling its Task: the vendor is no
// longer asked and no response is written.
func TestCancelCheckThroughTask(t *testing.T) {
	e, sim := soharEnv(t, func(c *eligibility.Config, _ *soharConfig) {
		c.PollInterval, c.MaxPollInterval = eligibility.Duration(time.Hour), eligibility.Duration(time.Hour)
	})
	o := defaults()
	o.member = "C1"
	sim.Script("C1", sohartest.Script{Pending: true})
	reqID := idOf(e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o)).JSON)
	e.eventually("the task to be in progress", func() bool {
		task := e.taskFor(reqID)
		return task != nil && task["status"] == "in-progress" && sim.Calls("GET /v2/verifications/{id}") == 1
	})
	task := e.taskFor(reqID)
	task["status"] = "cancelled"
	if r := e.do("PUT", "/fhir/Task/"+idOf(task), task); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %s", r.Status, r.Body)
	}
	sim.Resolve(sim.Verifications()[0].VerificationID) // its webhook finds no check
	if r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults())); r.Status != http.StatusOK {
		t.Fatalf("a later check: %d", r.Status)
	}
	if e.responseFor(reqID) != nil || sim.Calls("GET /v2/verifications/{id}") != 2 {
		t.Fatalf("the cancelled check went on (polls %d)", sim.Calls("GET /v2/verifications/{id}"))
	}
	if st := e.read("Task", idOf(task))["status"]; st != "cancelled" {
		t.Fatalf("task %v", st)
	}
}

func TestConfigRefusesMistakes(t *testing.T) {
	cases := map[string]string{
		"unknown field":       `{"routes": [], "pollIntervall": "1s"}`,
		"payer twice":         `{"routes": [{"payerId": "1", "vendor": "sohar"}, {"payerId": "1", "vendor": "sohar"}], "vendors": {"sohar": {}}}`,
		"vendor without keys": `{"routes": [{"payerId": "1", "vendor": "sohar"}]}`,
		"no payer id":         `{"routes": [{"vendor": "sohar"}], "vendors": {"sohar": {}}}`,
		"unknown field name":  `{"routes": [{"payerId": "1", "vendor": "sohar", "requiredFields": ["shoeSize"]}], "vendors": {"sohar": {}}}`,
		"bad duration":        `{"submitWait": "soon"}`,
	}
	for name, raw := range cases {
		if _, err := eligibility.ParseConfig([]byte(raw)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	var c eligibility.Config
	if err := json.Unmarshal([]byte(`{"submitWait": "2s"}`), &c); err != nil || time.Duration(c.SubmitWait) != 2*time.Second {
		t.Fatalf("duration: %v %v", c.SubmitWait, err)
	}
}

// Required fields a route adds beyond the vendor's.
func TestRouteRequiredFields(t *testing.T) {
	e, _ := soharEnv(t, func(c *eligibility.Config, _ *soharConfig) {
		c.Routes[0].RequiredFields = []eligibility.Field{eligibility.FieldGroupNumber}
	})
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(defaults()))
	if r.Status != http.StatusUnprocessableEntity || !strings.Contains(string(r.Body), "groupNumber") || !strings.Contains(string(r.Body), "Aetna (60054)") {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
}

// A CoverageEligibilityRequest copied from another payer (a P2P batch job
// brings the member's history, meta.source naming the source payer) is
// stored as the record it is: no vendor is asked, no Task is created, and
// a request that would not be routable here is not refused.
func TestMirroredRequestIsARecord(t *testing.T) {
	e, sim := soharEnv(t, nil)
	req := map[string]any{"resourceType": "CoverageEligibilityRequest", "status": "active", "purpose": []any{"validation"},
		"meta":    map[string]any{"source": "https://old-payer.example/fhir/CoverageEligibilityRequest/77"},
		"patient": map[string]any{"reference": "Patient/elsewhere"}, "created": "2025-02-01",
		"insurer": map[string]any{"display": "A payer nobody routes"}}
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", req)
	if r.Status != http.StatusCreated {
		t.Fatalf("copy of another payer's request: %d %s", r.Status, r.Body)
	}
	id := idOf(r.JSON)
	if s := e.do("GET", "/fhir/Task?focus=CoverageEligibilityRequest/"+id, nil); s.Status != http.StatusOK || s.JSON["total"] != float64(0) {
		t.Fatalf("a Task was made for a copied request: %d %s", s.Status, s.Body)
	}
	if n := len(sim.Verifications()); n != 0 {
		t.Fatalf("the vendor was asked %d times about a copied request", n)
	}
	// The same request without meta.source is a question, and this one
	// cannot be routed: refused, as before.
	delete(req, "meta")
	if r := e.do("POST", "/fhir/CoverageEligibilityRequest", req); r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("unroutable request of this payer: %d %s", r.Status, r.Body)
	}
}
