package eligibility_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/verifytreatment"
	"github.com/p2pserver/p2pserver/facades/verifytreatment/verifytreatmenttest"
)

// vtEnv routes payer 87726 to vtx_aetna and payer 62308 to vtx_cigna
// (which also requires gender and subscriber relation).
func vtEnv(t *testing.T, tune func(*verifytreatment.Config)) (*env, *verifytreatmenttest.Sim) {
	t.Helper()
	sim, err := verifytreatmenttest.New(verifytreatmenttest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.AddClient("vt-client", "vt-secret")
	vcfg := verifytreatment.Config{BaseURL: sim.URL, ClientID: "vt-client", ClientSecret: "vt-secret", Timeout: eligibility.Duration(5 * time.Second)}
	if tune != nil {
		tune(&vcfg)
	}
	cfg := eligibility.Config{
		Routes: []eligibility.Route{
			{PayerID: "87726", Vendor: "verifytreatment", VendorPayerID: "vtx_aetna", Name: "Aetna"},
			{PayerID: "62308", Vendor: "verifytreatment", VendorPayerID: "vtx_cigna", Name: "Cigna"},
		},
		Vendors:      map[string]json.RawMessage{"verifytreatment": json.RawMessage(`{}`)},
		PollInterval: eligibility.Duration(20 * time.Millisecond), MaxPollInterval: eligibility.Duration(100 * time.Millisecond),
		RetryBackoff: eligibility.Duration(10 * time.Millisecond), MaxAttempts: 3, SubmitWait: eligibility.Duration(15 * time.Second),
	}
	e := newEnv(t, cfg, func(e *env) []eligibility.Connector {
		c, err := verifytreatment.New(vcfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return []eligibility.Connector{c}
	})
	<-e.svc.Prepared()
	return e, sim
}

func vtRequest(payer, member string) map[string]any {
	o := defaults()
	o.payer, o.member = payer, member
	return eligibilityRequest(o)
}

func TestVerifyTreatmentActiveCoverage(t *testing.T) {
	e, sim := vtEnv(t, nil)
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", vtRequest("87726", "VT1"))
	if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" || inforce(r.JSON) != true {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	validR4(t, r.JSON)
	vobs := sim.VOBs()
	if len(vobs) != 1 {
		t.Fatalf("%d VOBs", len(vobs))
	}
	f := vobs[0].Fields
	want := map[string]string{"first_name": "Jane", "last_name": "Doe", "member_id": "VT1", "payer_id": "vtx_aetna", "date_of_birth": "1980-09-20",
		"gender": "F", "subscriber_relation": "SR01", "facility": "ACCOUNT_DEFAULT", "place_of_service": "10"}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("VOB %s = %q, want %q", k, f[k], v)
		}
	}
	items := r.JSON["insurance"].([]any)[0].(map[string]any)["item"].([]any)
	if len(items) != 2 {
		t.Fatalf("want in- and out-of-network items: %s", r.Body)
	}
	if n := sim.Calls("GET /vobs/{id}"); n < 2 {
		t.Fatalf("the VOB was read %d times; it is pending on the first read", n)
	}
}

// A payer's required fields (from VerifyTreatment's payer configuration)
// are checked inside the write: 422 naming them, and no VerifyTreatment
// call at all.
func TestVerifyTreatmentRequiredFieldsRefusedBeforeVendorCall(t *testing.T) {
	e, sim := vtEnv(t, nil)
	before := sim.Calls("GET /payers/{id}/configuration") + sim.Calls("POST /oauth/token")
	o := defaults()
	o.payer, o.member, o.gender, o.relationship = "62308", "VT2", "", ""
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o))
	if r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	for _, want := range []string{"Patient.gender", "Coverage.relationship", "gender", "subscriber_relation"} {
		if !strings.Contains(string(r.Body), want) {
			t.Errorf("422 does not name %s: %s", want, r.Body)
		}
	}
	if n := sim.Calls("POST /vobs"); n != 0 {
		t.Fatalf("%d VOBs sent", n)
	}
	if after := sim.Calls("GET /payers/{id}/configuration") + sim.Calls("POST /oauth/token"); after != before {
		t.Fatalf("the refused request made %d VerifyTreatment calls", after-before)
	}
	// With the fields, the same payer is checked.
	o.gender, o.relationship = "female", "child"
	r = e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(o))
	if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	if rel := sim.VOBs()[0].Fields["subscriber_relation"]; rel != "SR03" {
		t.Fatalf("subscriber_relation %q, want SR03 (child)", rel)
	}
}

// A payer whose configuration changes after the request is accepted: the
// worker re-reads it before sending, and fails the check naming the field
// rather than sending an incomplete VOB.
func TestVerifyTreatmentConfigurationChangedAfterAcceptance(t *testing.T) {
	e, sim := vtEnv(t, func(c *verifytreatment.Config) { c.ConfigTTL = eligibility.Duration(time.Nanosecond) })
	sim.AddPayer(verifytreatmenttest.Payer{ID: "vtx_aetna", Name: "Aetna", RequiredFields: []string{"first_name", "last_name", "date_of_birth", "member_id", "group_number"}})
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", vtRequest("87726", "VT3"))
	if r.Status != http.StatusOK || errorCode(r.JSON) != "missing-fields" || !strings.Contains(errorText(r.JSON), "groupNumber") {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	if n := sim.Calls("POST /vobs"); n != 0 {
		t.Fatalf("%d VOBs sent", n)
	}
}

// TestVerifyTreatmentReverification: a second check of a member at the
// same payer verifies the member's VOB again, with the operation
// VerifyTreatment documents for it: Re-Verify VOB (its "_id") when nothing
// changed, Update VOB with "action": "verify" when the data did; another
// member gets a VOB of their own.
func TestVerifyTreatmentReverification(t *testing.T) {
	cases := []struct {
		name                               string
		second                             func(map[string]any) map[string]any
		vobs, reverified, puts, reverifies int
	}{
		{"the same data: Re-Verify VOB", func(r map[string]any) map[string]any { return r }, 1, 1, 0, 1},
		{"a new date of birth: Update VOB with action verify", func(map[string]any) map[string]any {
			o := defaults()
			o.payer, o.member, o.dob = "87726", "VT4", "1980-09-21"
			return eligibilityRequest(o)
		}, 1, 1, 1, 0},
		{"another member: a VOB of their own", func(map[string]any) map[string]any { return vtRequest("87726", "VT5") }, 2, 0, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, sim := vtEnv(t, nil)
			sim.Script("VT4", verifytreatmenttest.Script{PendingPolls: 2})
			first := vtRequest("87726", "VT4")
			for i, req := range []map[string]any{first, c.second(first)} {
				r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", req)
				if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
					t.Fatalf("check %d: %d %s", i+1, r.Status, r.Body)
				}
			}
			vobs := sim.VOBs()
			if len(vobs) != c.vobs || vobs[0].Reverified != c.reverified || sim.Calls("PUT /vobs/{id}") != c.puts || sim.Calls("POST /vobs/verify") != c.reverifies {
				t.Fatalf("VOBs %d, the first re-verified %d times, %d Update VOB, %d Re-Verify VOB; want %d, %d, %d, %d",
					len(vobs), vobs[0].Reverified, sim.Calls("PUT /vobs/{id}"), sim.Calls("POST /vobs/verify"), c.vobs, c.reverified, c.puts, c.reverifies)
			}
		})
	}
}

func TestVerifyTreatmentStatusesMapToFHIR(t *testing.T) {
	e, sim := vtEnv(t, nil)
	cases := []struct {
		member  string
		script  verifytreatmenttest.Script
		outcome string
		inforce any
		errCode string
	}{
		{"S1", verifytreatmenttest.Script{Coverage: "inactive"}, "complete", false, ""},
		{"S2", verifytreatmenttest.Script{Coverage: "unavailable"}, "error", nil, "payer-unavailable"},
		{"S3", verifytreatmenttest.Script{Error: "patient_not_found"}, "error", nil, "member-not-found"},
		{"S4", verifytreatmenttest.Script{Error: "invalid_dob"}, "error", nil, "member-dob"},
		{"S5", verifytreatmenttest.Script{Error: "invalid_member_id"}, "error", nil, "member-id"},
		{"S6", verifytreatmenttest.Script{Error: "provider_not_on_file"}, "error", nil, "provider-npi"},
	}
	for _, c := range cases {
		sim.Script(c.member, c.script)
		r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", vtRequest("87726", c.member))
		if r.Status != http.StatusOK || r.JSON["outcome"] != c.outcome || inforce(r.JSON) != c.inforce || errorCode(r.JSON) != c.errCode {
			t.Errorf("%s %+v: %d %s", c.member, c.script, r.Status, r.Body)
		}
	}
}

// An access token that stops working is replaced with the refresh token.
func TestVerifyTreatmentRefreshesExpiredToken(t *testing.T) {
	e, sim := vtEnv(t, nil)
	sim.ExpireTokensAfter(1)
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", vtRequest("87726", "VT5"))
	if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	if sim.TokenGrants("refresh_token") == 0 {
		t.Fatal("no refresh_token grant was made")
	}
}

// Authorization code login, then the refresh token in use; once
// VerifyTreatment revokes it, checks fail with an error saying so.
func TestVerifyTreatmentAuthorizationCodeAndRevokedRefresh(t *testing.T) {
	e, sim := vtEnv(t, nil)
	u, err := sim.Authorize("vt-client", "http://127.0.0.1:1/callback", "state-1", "")
	if err != nil || u.Query().Get("state") != "state-1" || u.Query().Get("code") == "" {
		t.Fatalf("authorize: %v %v", u, err)
	}
	rt, err := verifytreatment.Exchange(context.Background(), nil, sim.URL, "vt-client", "vt-secret", u.Query().Get("code"), "http://127.0.0.1:1/callback")
	if err != nil {
		t.Fatal(err)
	}
	// A code is good once.
	if _, err := verifytreatment.Exchange(context.Background(), nil, sim.URL, "vt-client", "vt-secret", u.Query().Get("code"), "http://127.0.0.1:1/callback"); err == nil {
		t.Fatal("a used code was exchanged again")
	}
	e.stop()
	e.conns = func(*env) []eligibility.Connector {
		c, err := verifytreatment.New(verifytreatment.Config{BaseURL: sim.URL, ClientID: "vt-client", ClientSecret: "vt-secret",
			Grant: "refresh_token", RefreshToken: rt}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return []eligibility.Connector{c}
	}
	e.start()
	<-e.svc.Prepared()
	cc := sim.TokenGrants("client_credentials")
	if r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", vtRequest("87726", "VT6")); r.Status != http.StatusOK {
		t.Fatalf("$submit with the refresh token: %d %s", r.Status, r.Body)
	}
	if sim.TokenGrants("client_credentials") != cc {
		t.Fatal("a client credentials grant was made in refresh_token mode")
	}
	sim.ExpireTokensAfter(1)
	sim.RevokeRefreshTokens()
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", vtRequest("87726", "VT7"))
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "revoked the refresh token") {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	// A denied login gives access_denied on the redirect.
	sim.DenyAuthorization(true)
	u, err = sim.Authorize("vt-client", "http://127.0.0.1/cb", "st", "")
	if err != nil || u.Query().Get("error") != "access_denied" || u.Query().Get("state") != "st" {
		t.Fatalf("denied login: %v %v", u, err)
	}
}

func TestVerifyTreatmentSendsNoWebhooks(t *testing.T) {
	e, _ := vtEnv(t, nil)
	if r := e.do("POST", "/api/webhooks/verifytreatment", `{"_id":"x"}`); r.Status != http.StatusNotFound {
		t.Fatalf("webhook: %d %s", r.Status, r.Body)
	}
}
