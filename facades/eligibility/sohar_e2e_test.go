package eligibility_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/sohar"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
)

// soharEnv runs the server with payer 60054 routed to a Sohar simulator.
type soharConfig = sohar.Config

func soharEnv(t *testing.T, tune func(*eligibility.Config, *sohar.Config)) (*env, *sohartest.Sim) {
	t.Helper()
	sim, err := sohartest.New(sohartest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.AddClient("client-1", "secret-1")
	scfg := sohar.Config{BaseURL: sim.URL, ClientID: "client-1", ClientSecret: "secret-1", WebhookSecret: sim.WebhookSecret(),
		Timeout: eligibility.Duration(5 * time.Second)}
	cfg := eligibility.Config{
		Routes:       []eligibility.Route{{PayerID: "60054", Vendor: "sohar", Name: "Aetna"}},
		Vendors:      map[string]json.RawMessage{"sohar": json.RawMessage(`{}`)},
		PollInterval: eligibility.Duration(50 * time.Millisecond), MaxPollInterval: eligibility.Duration(200 * time.Millisecond),
		RetryBackoff: eligibility.Duration(10 * time.Millisecond), MaxAttempts: 3,
		SubmitWait: eligibility.Duration(15 * time.Second),
	}
	if tune != nil {
		tune(&cfg, &scfg)
	}
	e := newEnv(t, cfg, func(e *env) []eligibility.Connector {
		c, err := sohar.New(scfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return []eligibility.Connector{c}
	})
	sim.SetWebhook(e.URL + "/api/webhooks/sohar")
	return e, sim
}

func TestSoharEligibleThroughSubmit(t *testing.T) {
	e, sim := soharEnv(t, nil)
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults()))
	if r.Status != http.StatusOK {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	resp := r.JSON
	validR4(t, resp)
	if resp["resourceType"] != "CoverageEligibilityResponse" || resp["outcome"] != "complete" || inforce(resp) != true {
		t.Fatalf("want a complete, in-force response, got %s", r.Body)
	}
	reqRef := resp["request"].(map[string]any)["reference"].(string)
	reqID := strings.TrimPrefix(reqRef, "CoverageEligibilityRequest/")
	if e.read("CoverageEligibilityRequest", reqID) == nil {
		t.Fatalf("the response links to %s, which does not exist", reqRef)
	}
	// What Sohar received, in its own format.
	vs := sim.Verifications()
	if len(vs) != 1 {
		t.Fatalf("Sohar got %d verifications, want 1", len(vs))
	}
	in := vs[0].Input
	if in.Patient.DateOfBirth != "09/20/1980" || in.Patient.MemberID != "M100" || in.PayerID != "60054" ||
		in.PlaceOfServiceCode != "10" || in.SpecialtyCode != "PSY" || in.Patient.State != "CA" || in.ID != reqID {
		t.Fatalf("Sohar got %+v", in)
	}
	// Benefits: in and out of network, copay, coinsurance, deductible and
	// out-of-pocket with what remains (used = total - remaining).
	items := resp["insurance"].([]any)[0].(map[string]any)["item"].([]any)
	if len(items) != 2 {
		t.Fatalf("want 2 benefit items, got %d: %s", len(items), r.Body)
	}
	in0 := items[0].(map[string]any)
	if net := in0["network"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"]; net != "in" {
		t.Fatalf("first item network %v", net)
	}
	got := map[string]string{}
	for _, b := range in0["benefit"].([]any) {
		bm := b.(map[string]any)
		code := bm["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"].(string)
		s := ""
		if m, ok := bm["allowedMoney"].(map[string]any); ok {
			s += "allowed " + jsonNum(m["value"])
		}
		if m, ok := bm["usedMoney"].(map[string]any); ok {
			s += " used " + jsonNum(m["value"])
		}
		if v, ok := bm["allowedUnsignedInt"]; ok {
			s += "pct " + jsonNum(v)
		}
		got[code] = s
	}
	want := map[string]string{"copay": "allowed 30", "copay-percent": "pct 10", "deductible": "allowed 1000 used 152.44", "out-of-pocket": "allowed 10000 used 4896.79"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("benefit %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	task := e.taskFor(reqID)
	if task == nil || task["status"] != "completed" {
		t.Fatalf("task: %v", task)
	}
	out := task["output"].([]any)[0].(map[string]any)["valueReference"].(map[string]any)["reference"]
	if out != "CoverageEligibilityResponse/"+idOf(resp) {
		t.Fatalf("task output %v, response %s", out, idOf(resp))
	}
	validR4(t, task)
}

func jsonNum(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Every Sohar status maps as the status table says.
func TestSoharStatusesMapToFHIR(t *testing.T) {
	e, sim := soharEnv(t, nil)
	cases := []struct {
		member, status, reason string
		outcome, task, errCode string
		inforce                any
		text                   string
	}{
		{"E1", "complete.eligible", "", "complete", "completed", "", true, ""},
		{"E2", "complete.ineligible", "INACTIVE", "complete", "completed", "", false, "INACTIVE"},
		{"E3", "complete.ineligible", "NON_COVERED", "complete", "completed", "", false, "NON_COVERED"},
		{"E4", "error.member.id", "", "error", "failed", "member-id", nil, "Coverage.subscriberId"},
		{"E5", "error.member.name", "", "error", "failed", "member-name", nil, "Patient.name"},
		{"E6", "error.member.dob", "", "error", "failed", "member-dob", nil, "Patient.birthDate"},
		{"E7", "error.payer", "", "error", "failed", "payer-unavailable", nil, "try again later"},
		{"E8", "error.payer.npi", "", "error", "failed", "provider-npi", nil, "CoverageEligibilityRequest.provider"},
	}
	for _, c := range cases {
		t.Run(c.status+c.reason, func(t *testing.T) {
			sim.Script(c.member, sohartest.Script{Status: c.status, Reason: c.reason})
			o := defaults()
			o.member = c.member
			r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(o))
			if r.Status != http.StatusOK {
				t.Fatalf("$submit: %d %s", r.Status, r.Body)
			}
			resp := r.JSON
			validR4(t, resp)
			if resp["outcome"] != c.outcome || inforce(resp) != c.inforce || errorCode(resp) != c.errCode {
				t.Fatalf("outcome %v inforce %v error %q; want %s %v %q\n%s", resp["outcome"], inforce(resp), errorCode(resp), c.outcome, c.inforce, c.errCode, r.Body)
			}
			if c.text != "" && !strings.Contains(errorText(resp)+" "+str(resp["disposition"]), c.text) {
				t.Fatalf("want %q in the error text or disposition: %s", c.text, r.Body)
			}
			reqID := strings.TrimPrefix(resp["request"].(map[string]any)["reference"].(string), "CoverageEligibilityRequest/")
			if task := e.taskFor(reqID); task["status"] != c.task {
				t.Fatalf("task status %v, want %s", task["status"], c.task)
			}
		})
	}
}

func str(v any) string { s, _ := v.(string); return s }

// A pending verification is answered by the webhook: with polling slowed
// to an hour, only the webhook can make the response appear. A second
// delivery of the same webhook is acknowledged and changes nothing.
func TestSoharPendingAnsweredByWebhookOnce(t *testing.T) {
	e, sim := soharEnv(t, func(c *eligibility.Config, _ *sohar.Config) {
		c.PollInterval, c.MaxPollInterval = eligibility.Duration(time.Hour), eligibility.Duration(time.Hour)
	})
	o := defaults()
	o.member = "P1"
	sim.Script("P1", sohartest.Script{Status: "complete.ineligible", Reason: "NON_COVERED", Pending: true})
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o))
	if r.Status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	reqID := idOf(r.JSON)
	// The first poll (soon after creation) sees pending; the Task says so.
	e.eventually("the task to show Sohar's pending status", func() bool {
		task := e.taskFor(reqID)
		bs, _ := task["businessStatus"].(map[string]any)
		return task["status"] == "in-progress" && strings.Contains(str(bs["text"]), "pending")
	})
	if e.responseFor(reqID) != nil {
		t.Fatal("a response exists before Sohar answered")
	}
	gets := sim.Calls("GET /v2/verifications/{id}")
	vid := sim.Verifications()[0].VerificationID
	if !sim.Resolve(vid) {
		t.Fatal("resolve failed")
	}
	e.eventually("the response after the webhook", func() bool { return e.responseFor(reqID) != nil })
	resp := e.responseFor(reqID)
	if resp["outcome"] != "complete" || inforce(resp) != false || !strings.Contains(str(resp["disposition"]), "NON_COVERED") {
		t.Fatalf("response: %v", resp)
	}
	if task := e.taskFor(reqID); task["status"] != "completed" {
		t.Fatalf("task %v", task["status"])
	}
	afterGets := sim.Calls("GET /v2/verifications/{id}")
	if afterGets != gets+1 {
		t.Fatalf("Sohar was polled %d times after the webhook, want 1", afterGets-gets)
	}
	// Redeliver the updated event: acknowledged as a duplicate.
	ds := sim.Deliveries()
	last := ds[len(ds)-1]
	if st := sim.Redeliver(last); st != http.StatusOK {
		t.Fatalf("redelivery answered %d", st)
	}
	if n := sim.Calls("GET /v2/verifications/{id}"); n != afterGets {
		t.Fatalf("a duplicate delivery made %d more polls", n-afterGets)
	}
	taskVersion := e.taskFor(reqID)["meta"].(map[string]any)["versionId"]
	if st := sim.Redeliver(last); st != http.StatusOK {
		t.Fatalf("redelivery answered %d", st)
	}
	if v := e.taskFor(reqID)["meta"].(map[string]any)["versionId"]; v != taskVersion {
		t.Fatalf("a duplicate delivery changed the Task (version %v -> %v)", taskVersion, v)
	}
}

// Unauthenticated webhooks get 401 and change nothing.
func TestSoharWebhookAuthentication(t *testing.T) {
	e, sim := soharEnv(t, func(c *eligibility.Config, _ *sohar.Config) {
		c.PollInterval, c.MaxPollInterval = eligibility.Duration(time.Hour), eligibility.Duration(time.Hour)
	})
	o := defaults()
	o.member = "P2"
	sim.Script("P2", sohartest.Script{Pending: true})
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o))
	reqID := idOf(r.JSON)
	e.eventually("the first poll", func() bool { return sim.Calls("GET /v2/verifications/{id}") == 1 })
	vid := sim.Verifications()[0].VerificationID
	body := []byte(`{"event":"verification.updated","verificationId":"` + vid + `","status":"complete.eligible"}`)
	_, otherKey := sohartest.NewWebhookSecret()
	now := time.Now()
	cases := map[string]http.Header{
		"no signature":    {},
		"wrong secret":    sohartest.SignHeaders(otherKey, "msg_x", now, body),
		"stale timestamp": sohartest.SignHeaders(mustKey(t, sim.WebhookSecret()), "msg_y", now.Add(-time.Hour), body),
	}
	for name, h := range cases {
		req, _ := http.NewRequest("POST", e.URL+"/api/webhooks/sohar", strings.NewReader(string(body)))
		for k, v := range h {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", name, resp.StatusCode)
		}
	}
	// A body tampered with after signing fails too.
	h := sohartest.SignHeaders(mustKey(t, sim.WebhookSecret()), "msg_z", now, body)
	tampered := strings.Replace(string(body), "complete.eligible", "complete.ineligible", 1)
	req, _ := http.NewRequest("POST", e.URL+"/api/webhooks/sohar", strings.NewReader(tampered))
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("tampered body: status %d, want 401", resp.StatusCode)
	}
	if n := sim.Calls("GET /v2/verifications/{id}"); n != 1 {
		t.Fatalf("refused webhooks made %d polls", n-1)
	}
	if e.responseFor(reqID) != nil || e.taskFor(reqID)["status"] != "in-progress" {
		t.Fatal("a refused webhook changed the check")
	}
	// Unknown vendor: 404.
	if r := e.do("POST", "/api/webhooks/nobody", `{}`); r.Status != http.StatusNotFound {
		t.Fatalf("unknown vendor: %d", r.Status)
	}
}

func mustKey(t *testing.T, secret string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A token that stops working is replaced (one new token, the call
// repeated); the check succeeds.
func TestSoharExpiredTokenIsRenewed(t *testing.T) {
	e, sim := soharEnv(t, nil)
	sim.ExpireTokensAfter(1)
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults()))
	if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	if n := sim.Calls("POST /oauth/token"); n < 2 {
		t.Fatalf("token requested %d times; the expired one was not renewed", n)
	}
}

// Revoked credentials: the token endpoint refuses them; $submit answers an
// OperationOutcome saying so and the Task fails.
func TestSoharRevokedCredentials(t *testing.T) {
	e, sim := soharEnv(t, nil)
	sim.RevokeClient("client-1")
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults()))
	if r.Status != http.StatusServiceUnavailable || r.JSON["resourceType"] != "OperationOutcome" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	if !strings.Contains(string(r.Body), "credentials") {
		t.Fatalf("the outcome does not say the credentials were refused: %s", r.Body)
	}
	if n := sim.Calls("POST /v2/verifications"); n != 0 {
		t.Fatalf("verifications created without a token: %d", n)
	}
	resp := e.do("GET", r.Header.Get("Content-Location"), nil).JSON
	if errorCode(resp) != "vendor-credentials" {
		t.Fatalf("response error %q", errorCode(resp))
	}
}

// Answers refusing the call before Sohar acted (503, 429) are retried a
// bounded number of times, then the payer could not be reached; a vendor
// slower than the timeout likewise. (Answers that leave open whether
// Create Verification was carried out, 500/502/504, are never simply
// retried: see TestVendorCreatesAreNeverRepeatedBlindly.)
func TestSoharUnreachable(t *testing.T) {
	t.Run("503", func(t *testing.T) {
		e, sim := soharEnv(t, nil)
		sim.FailNext(503, 429, 503, 503)
		r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults()))
		if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "could not be reached") {
			t.Fatalf("$submit: %d %s", r.Status, r.Body)
		}
		if n := sim.Calls("POST /v2/verifications"); n != 3 {
			t.Fatalf("%d attempts, want MaxAttempts = 3", n)
		}
		reqID := strings.TrimPrefix(e.do("GET", r.Header.Get("Content-Location"), nil).JSON["request"].(map[string]any)["reference"].(string), "CoverageEligibilityRequest/")
		if task := e.taskFor(reqID); task["status"] != "failed" || !strings.Contains(str(task["statusReason"].(map[string]any)["text"]), "could not be reached") {
			t.Fatalf("task %v", task)
		}
	})
	t.Run("recovers", func(t *testing.T) {
		e, sim := soharEnv(t, nil)
		sim.FailNext(503, 429)
		r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults()))
		if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
			t.Fatalf("$submit: %d %s", r.Status, r.Body)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		e, sim := soharEnv(t, func(_ *eligibility.Config, s *sohar.Config) { s.Timeout = eligibility.Duration(100 * time.Millisecond) })
		sim.Delay(time.Second)
		r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(defaults()))
		if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "did not answer") {
			t.Fatalf("$submit: %d %s", r.Status, r.Body)
		}
	})
}

// Missing demographics are refused with 422 naming each field, before
// Sohar is called; nothing is stored.
func TestSoharMissingFieldsRefusedBeforeVendorCall(t *testing.T) {
	e, sim := soharEnv(t, nil)
	o := defaults()
	o.dob, o.state, o.specialty = "", "", "XYZ"
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o))
	if r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	body := string(r.Body)
	for _, want := range []string{"Patient.birthDate", "Patient.address.state", "XYZ"} {
		if !strings.Contains(body, want) {
			t.Errorf("the outcome does not name %s: %s", want, body)
		}
	}
	if n := sim.Calls("POST /oauth/token") + sim.Calls("POST /v2/verifications"); n != 0 {
		t.Fatalf("Sohar was called %d times", n)
	}
	if r := e.do("GET", "/fhir/Task", nil); r.JSON["total"] != nil && jsonNum(r.JSON["total"]) != "0" {
		t.Fatalf("a Task was created: %s", r.Body)
	}
	if r := e.do("GET", "/fhir/CoverageEligibilityRequest", nil); len(asList(r.JSON["entry"])) != 0 {
		t.Fatalf("the refused request was stored: %s", r.Body)
	}
	// $submit refuses the same way.
	if r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(o)); r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("$submit: %d", r.Status)
	}
}

func asList(v any) []any { l, _ := v.([]any); return l }

func TestUnknownPayerRefused(t *testing.T) {
	e, sim := soharEnv(t, nil)
	o := defaults()
	o.payer = "99999"
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o))
	if r.Status != http.StatusUnprocessableEntity || !strings.Contains(string(r.Body), "no eligibility vendor is configured for payer 99999") {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	if sim.Calls("POST /oauth/token") != 0 {
		t.Fatal("a vendor was called for an unknown payer")
	}
}

// Jobs are in the database: a check waiting for Sohar when the server
// stops is finished after a restart.
func TestSoharCheckSurvivesRestart(t *testing.T) {
	e, sim := soharEnv(t, func(c *eligibility.Config, _ *sohar.Config) {
		c.PollInterval, c.MaxPollInterval = eligibility.Duration(time.Hour), eligibility.Duration(time.Hour)
	})
	o := defaults()
	o.member = "R1"
	sim.Script("R1", sohartest.Script{Status: "error.member.name", Pending: true})
	reqID := idOf(e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o)).JSON)
	e.eventually("the verification to be created", func() bool { return len(sim.Verifications()) == 1 })
	e.eventually("the first poll", func() bool { return sim.Calls("GET /v2/verifications/{id}") >= 1 })
	e.restart()
	sim.Resolve(sim.Verifications()[0].VerificationID)
	e.eventually("the response after the restart", func() bool { return e.responseFor(reqID) != nil })
	if resp := e.responseFor(reqID); errorCode(resp) != "member-name" {
		t.Fatalf("response %v", resp)
	}
	if n := sim.Calls("POST /v2/verifications"); n != 1 {
		t.Fatalf("the restart created %d verifications", n)
	}
}

// Prefer: respond-async answers 202 with the Task at once; polling the
// Task shows the check through.
func TestSubmitRespondAsync(t *testing.T) {
	e, sim := soharEnv(t, nil)
	o := defaults()
	o.member = "A1"
	sim.Script("A1", sohartest.Script{Pending: true})
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(o), "Prefer", "respond-async")
	if r.Status != http.StatusAccepted || r.JSON["resourceType"] != "Task" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	taskURL := r.Header.Get("Content-Location")
	e.eventually("the verification", func() bool { return len(sim.Verifications()) == 1 })
	sim.Resolve(sim.Verifications()[0].VerificationID)
	e.eventually("the task to complete", func() bool { return e.do("GET", taskURL, nil).JSON["status"] == "completed" })
}
