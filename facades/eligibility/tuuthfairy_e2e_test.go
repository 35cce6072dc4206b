package eligibility_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	graphql "github.com/graph-gophers/graphql-go"
	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy/tuuthfairytest"
	"github.com/p2pserver/p2pserver/fhir/store"
)

const tfNPI = "1234567893"

// tfEnv routes CDCA1 (deltadentalins.com, which asks for 2FA) and 65978
// (metdental.com) through provider datasources, and 62308 to
// clearinghouse data.
func tfEnv(t *testing.T) (*env, *tuuthfairytest.Sim) {
	t.Helper()
	return tfEnvWith(t, nil)
}

// tfEnvWith is tfEnv with the configurations changed by tune.
func tfEnvWith(t *testing.T, tune func(*eligibility.Config, *tuuthfairy.Config)) (*env, *tuuthfairytest.Sim) {
	t.Helper()
	sim, err := tuuthfairytest.New(tuuthfairytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.AddAPIKey("tf-key")
	cfg := eligibility.Config{
		Routes: []eligibility.Route{
			{PayerID: "CDCA1", Vendor: "tuuthfairy", WebsiteID: "deltadentalins.com", Name: "Delta Dental of California"},
			{PayerID: "65978", Vendor: "tuuthfairy", WebsiteID: "metdental.com", Name: "MetLife"},
			{PayerID: "62308", Vendor: "tuuthfairy", Name: "Cigna Dental", ServiceType: "35"},
			{PayerID: "DNOA1", Vendor: "tuuthfairy", WebsiteID: "dnoaconnect.com"},
		},
		Vendors:      map[string]json.RawMessage{"tuuthfairy": json.RawMessage(`{}`)},
		PollInterval: eligibility.Duration(20 * time.Millisecond), MaxPollInterval: eligibility.Duration(100 * time.Millisecond),
		RetryBackoff: eligibility.Duration(10 * time.Millisecond), MaxAttempts: 3, SubmitWait: eligibility.Duration(15 * time.Second),
	}
	tcfg := tuuthfairy.Config{Endpoint: sim.URL + "/graphql", APIKey: "tf-key", WebhookPublicKey: sim.PublicKeyPEM(),
		Timeout: eligibility.Duration(5 * time.Second)}
	if tune != nil {
		tune(&cfg, &tcfg)
	}
	e := newEnv(t, cfg, func(e *env) []eligibility.Connector {
		c, err := tuuthfairy.New(tcfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		return []eligibility.Connector{c}
	})
	sim.SetWebhook(e.URL + "/api/webhooks/tuuthfairy")
	return e, sim
}

func dental(payer, member string) map[string]any {
	o := defaults()
	o.payer, o.member, o.npi, o.specialty, o.serviceType, o.pos = payer, member, tfNPI, "", "35", "11"
	return eligibilityRequest(o)
}

func (e *env) admin(method, path string, body any) *result {
	return e.do(method, path, body, "Authorization", "Bearer "+adminToken)
}

// connect creates a datasource connection through the admin API.
func (e *env) connect(website, npi, password string) map[string]any {
	e.t.Helper()
	r := e.admin("POST", "/api/eligibility/connections", map[string]any{"websiteId": website, "provider": map[string]any{"npi": npi},
		"credentials": map[string]any{"username": "office", "password": password}})
	if r.Status != http.StatusCreated {
		e.t.Fatalf("connect: %d %s", r.Status, r.Body)
	}
	return r.JSON
}

func TestTuuthfairyConnectionsAdminAPI(t *testing.T) {
	e, sim := tfEnv(t)
	body := map[string]any{"websiteId": "metdental.com", "provider": map[string]any{"npi": tfNPI},
		"credentials": map[string]any{"username": "office", "password": "s3cret-portal-pw"}}
	if r := e.do("POST", "/api/eligibility/connections", body); r.Status != http.StatusUnauthorized {
		t.Fatalf("without a token: %d", r.Status)
	}
	if r := e.do("GET", "/api/eligibility/connections", nil, "Authorization", "Bearer not-the-admin-token-123"); r.Status != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", r.Status)
	}
	c := e.connect("metdental.com", tfNPI, "s3cret-portal-pw")
	if c["hasCredentials"] != true || c["status"] != "auth_in_progress" {
		t.Fatalf("connect answered %v", c)
	}
	id := c["id"].(string)
	// Credentials are never returned, and encrypted at rest.
	for _, r := range []*result{e.admin("GET", "/api/eligibility/connections", nil), e.admin("GET", "/api/eligibility/connections/"+id, nil)} {
		if r.Status != http.StatusOK || bytes.Contains(r.Body, []byte("s3cret")) || bytes.Contains(r.Body, []byte("office")) {
			t.Fatalf("%d %s", r.Status, r.Body)
		}
	}
	if err := e.st.View(t.Context(), func(tx *store.Tx) error {
		raw := tx.KV("eligibility_connections").Get([]byte(id))
		if raw == nil || bytes.Contains(raw, []byte("s3cret-portal-pw")) || bytes.Contains(raw, []byte("office")) {
			t.Fatalf("stored record: %s", raw)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Status: the portal login went through.
	if r := e.admin("GET", "/api/eligibility/connections/"+id, nil); r.JSON["status"] != "connected" {
		t.Fatalf("status %s", r.Body)
	}
	// Add a provider.
	r := e.admin("POST", "/api/eligibility/connections/"+id+"/providers", map[string]any{"npi": "1999999984"})
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "1999999984") || !strings.Contains(string(r.Body), tfNPI) {
		t.Fatalf("add provider: %d %s", r.Status, r.Body)
	}
	list := e.admin("GET", "/api/eligibility/connections", nil)
	conns := list.JSON["connections"].([]any)
	if len(conns) != 1 || list.JSON["stale"] != false || len(conns[0].(map[string]any)["npis"].([]any)) != 2 {
		t.Fatalf("list: %s", list.Body)
	}
	// Bad input.
	if r := e.admin("POST", "/api/eligibility/connections", map[string]any{"websiteId": "", "provider": map[string]any{"npi": "12"}}); r.Status != http.StatusBadRequest ||
		!strings.Contains(string(r.Body), "provider.npi") || !strings.Contains(string(r.Body), "credentials.password") {
		t.Fatalf("bad connect: %d %s", r.Status, r.Body)
	}
	// Wrong types and unknown fields are named with the missing values, in one answer.
	r = e.admin("POST", "/api/eligibility/connections", map[string]any{"websiteId": 7, "provider": map[string]any{"npi": 1234567893},
		"credentials": map[string]any{"username": "u"}, "colour": "red"})
	var bad struct {
		Error struct{ Fields map[string]string } `json:"error"`
	}
	_ = json.Unmarshal(r.Body, &bad)
	for f, want := range map[string]string{"websiteId": "must be a string", "provider.npi": "must be a string",
		"credentials.password": "required", "colour": "unknown field"} {
		if r.Status != http.StatusBadRequest || bad.Error.Fields[f] != want {
			t.Errorf("field %s: %q, want %q (%d %s)", f, bad.Error.Fields[f], want, r.Status, r.Body)
		}
	}
	if r := e.admin("POST", "/api/eligibility/connections/"+id+"/providers", map[string]any{"npi": 1999999984, "x": 1}); r.Status != http.StatusBadRequest ||
		!strings.Contains(string(r.Body), `"npi"`) || !strings.Contains(string(r.Body), `"x"`) {
		t.Errorf("bad add provider: %d %s", r.Status, r.Body)
	}
	if r := e.admin("POST", "/api/eligibility/connections", map[string]any{"websiteId": "nowhere.example", "provider": map[string]any{"npi": tfNPI},
		"credentials": map[string]any{"username": "u", "password": "p"}}); r.Status != http.StatusUnprocessableEntity || !strings.Contains(string(r.Body), "websiteId") {
		t.Fatalf("unknown website: %d %s", r.Status, r.Body)
	}
	if r := e.admin("GET", "/api/eligibility/connections/conn_nope", nil); r.Status != http.StatusNotFound {
		t.Fatalf("unknown connection: %d %s", r.Status, r.Body)
	}
	if r := e.admin("POST", "/api/eligibility/connections/conn_nope/providers", map[string]any{"npi": tfNPI}); r.Status != http.StatusNotFound {
		t.Fatalf("add to unknown connection: %d %s", r.Status, r.Body)
	}
	if sim.Calls("connectDatasource") != 2 {
		t.Fatalf("connectDatasource called %d times", sim.Calls("connectDatasource"))
	}
}

// A check whose provider's datasource needs a 2FA code: the Task goes
// on-hold with an input asking for it, $confirm-2fa relays it
// (confirmDatasource2FaCode), and the check completes.
func TestTuuthfairy2FAThroughConfirmOperation(t *testing.T) {
	e, sim := tfEnv(t)
	conn := e.connect("deltadentalins.com", tfNPI, "pw")
	connID := conn["id"].(string)
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", dental("CDCA1", "D1"))
	if r.Status != http.StatusAccepted || r.JSON["status"] != "on-hold" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	task := r.JSON
	validR4(t, task)
	in := task["input"].([]any)[0].(map[string]any)
	if in["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"] != "2fa-code" || in["valueString"] != nil || in["_valueString"] == nil ||
		!strings.Contains(in["type"].(map[string]any)["text"].(string), connID) {
		t.Fatalf("the on-hold Task does not ask for the code: %s", r.Body)
	}
	taskID := idOf(task)
	params := func(code string) map[string]any {
		return map[string]any{"resourceType": "Parameters", "parameter": []any{map[string]any{"name": "code", "valueString": code}}}
	}
	// A wrong code: 422, still on hold.
	if r := e.do("POST", "/fhir/Task/"+taskID+"/$confirm-2fa", params("000000")); r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("wrong code: %d %s", r.Status, r.Body)
	}
	if st := e.read("Task", taskID)["status"]; st != "on-hold" {
		t.Fatalf("after a wrong code the Task is %v", st)
	}
	if r := e.do("POST", "/fhir/Task/"+taskID+"/$confirm-2fa", map[string]any{"resourceType": "Parameters"}); r.Status != http.StatusBadRequest {
		t.Fatalf("no code: %d %s", r.Status, r.Body)
	}
	r = e.do("POST", "/fhir/Task/"+taskID+"/$confirm-2fa", params("123456"))
	if r.Status != http.StatusOK || r.JSON["status"] != "in-progress" {
		t.Fatalf("right code: %d %s", r.Status, r.Body)
	}
	if got := sim.ConfirmedCodes(connID); len(got) != 2 || got[1] != "123456" {
		t.Fatalf("codes relayed: %v", got)
	}
	e.eventually("the check to complete", func() bool { return e.read("Task", taskID)["status"] == "completed" })
	reqID := strings.TrimPrefix(task["focus"].(map[string]any)["reference"].(string), "CoverageEligibilityRequest/")
	resp := e.responseFor(reqID)
	validR4(t, resp)
	if resp["outcome"] != "complete" || inforce(resp) != true {
		t.Fatalf("response %v", resp)
	}
	// The dental maximum with what remains: allowed 1500, used 300.
	found := false
	for _, it := range resp["insurance"].([]any)[0].(map[string]any)["item"].([]any) {
		for _, b := range asList(it.(map[string]any)["benefit"]) {
			bm := b.(map[string]any)
			code := bm["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"]
			if code == "benefit" && jsonNum(bm["allowedMoney"].(map[string]any)["value"]) == "1500" && jsonNum(bm["usedMoney"].(map[string]any)["value"]) == "300" {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("the maximum (1500, 300 used) is not in the response: %s", mustJSON(resp))
	}
	// Not waiting any more: 409.
	if r := e.do("POST", "/fhir/Task/"+taskID+"/$confirm-2fa", params("123456")); r.Status != http.StatusConflict {
		t.Fatalf("confirm on a finished check: %d %s", r.Status, r.Body)
	}
	// The connection record followed.
	if r := e.admin("GET", "/api/eligibility/connections/"+connID, nil); r.JSON["status"] != "connected" {
		t.Fatalf("connection %s", r.Body)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// The code can also be given by updating the Task's input; the code never
// lands in the stored Task.
func TestTuuthfairy2FAThroughTaskUpdate(t *testing.T) {
	e, sim := tfEnv(t)
	e.connect("deltadentalins.com", tfNPI, "pw")
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", dental("CDCA1", "D2"))
	if r.Status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	reqID := idOf(r.JSON)
	e.eventually("the Task to go on hold", func() bool { return e.taskFor(reqID)["status"] == "on-hold" })
	task := e.taskFor(reqID)
	// The client may not set the status itself.
	bad := clone(task)
	bad["status"] = "completed"
	if r := e.do("PUT", "/fhir/Task/"+idOf(task), bad); r.Status != http.StatusUnprocessableEntity {
		t.Fatalf("client completing the Task: %d %s", r.Status, r.Body)
	}
	relay := func(code string) *result {
		task := e.taskFor(reqID)
		in := task["input"].([]any)[0].(map[string]any)
		delete(in, "_valueString")
		in["valueString"] = code
		return e.do("PUT", "/fhir/Task/"+idOf(task), task)
	}
	// A wrong code: the Task goes back on hold and says so.
	if r := relay("999999"); r.Status != http.StatusOK || r.JSON["status"] != "in-progress" {
		t.Fatalf("update: %d %s", r.Status, r.Body)
	}
	e.eventually("the Task to be on hold again", func() bool {
		tk := e.taskFor(reqID)
		sr, _ := tk["statusReason"].(map[string]any)
		return tk["status"] == "on-hold" && strings.Contains(str(sr["text"]), "not accepted")
	})
	r = relay("123456")
	if r.Status != http.StatusOK || r.JSON["status"] != "in-progress" {
		t.Fatalf("update: %d %s", r.Status, r.Body)
	}
	e.eventually("the check to complete", func() bool { return e.taskFor(reqID)["status"] == "completed" })
	hist := e.do("GET", "/fhir/Task/"+idOf(task)+"/_history?_count=100", nil)
	if bytes.Contains(hist.Body, []byte("123456")) || bytes.Contains(hist.Body, []byte("999999")) {
		t.Fatalf("the code is stored in the Task's history")
	}
	if got := sim.ConfirmedCodes(sim2(e, sim)); len(got) != 2 || got[1] != "123456" {
		t.Fatalf("codes relayed: %v", got)
	}
}

// sim2 finds the one connection's id.
func sim2(e *env, _ *tuuthfairytest.Sim) string {
	list := e.admin("GET", "/api/eligibility/connections", nil)
	return list.JSON["connections"].([]any)[0].(map[string]any)["id"].(string)
}

func clone(m map[string]any) map[string]any {
	var out map[string]any
	_ = json.Unmarshal([]byte(mustJSON(m)), &out)
	return out
}

// A connection that asks for 2FA again while a check waits on it; the code
// comes through the admin API instead; webhooks wake the check.
func TestTuuthfairy2FAThroughAdminAPIAndWebhooks(t *testing.T) {
	e, sim := tfEnv(t)
	c := e.connect("deltadentalins.com", tfNPI, "pw")
	id := c["id"].(string)
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", dental("CDCA1", "D3"))
	reqID := idOf(r.JSON)
	e.eventually("the Task to go on hold", func() bool { return e.taskFor(reqID)["status"] == "on-hold" })
	if r := e.admin("POST", "/api/eligibility/connections/"+id+"/confirm-2fa", map[string]any{"code": "123456"}); r.Status != http.StatusOK {
		t.Fatalf("admin confirm: %d %s", r.Status, r.Body)
	}
	e.eventually("the check to complete", func() bool { return e.taskFor(reqID)["status"] == "completed" })
	if resp := e.responseFor(reqID); resp["outcome"] != "complete" {
		t.Fatalf("response %v", resp)
	}
	// Later the portal asks again: a new check is held.
	sim.Require2FA(id)
	r = e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", dental("CDCA1", "D4"))
	if r.Status != http.StatusAccepted || r.JSON["status"] != "on-hold" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
}

func TestTuuthfairyWebhookAuthenticationAndDuplicates(t *testing.T) {
	e, sim := tfEnv(t)
	body := []byte(`{"id":"evt_1","event":"eligibility_ok","data":{"eligibilityId":"elig_x","status":"ok"}}`)
	send := func(b []byte, sig string) *result {
		h := []string{}
		if sig != "" {
			h = append(h, "x-tuuthfairy-signature", sig)
		}
		return e.do("POST", "/api/webhooks/tuuthfairy", b, h...)
	}
	if r := send(body, ""); r.Status != http.StatusUnauthorized {
		t.Fatalf("unsigned: %d", r.Status)
	}
	other, err := tuuthfairytest.New(tuuthfairytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if r := send(body, other.Sign(body)); r.Status != http.StatusUnauthorized {
		t.Fatalf("signed by another key: %d", r.Status)
	}
	if r := send(bytes.Replace(body, []byte("ok"), []byte("no"), 1), sim.Sign(body)); r.Status != http.StatusUnauthorized {
		t.Fatalf("tampered: %d", r.Status)
	}
	if r := send(body, sim.Sign(body)); r.Status != http.StatusOK || r.JSON["duplicates"] != float64(0) {
		t.Fatalf("signed: %d %s", r.Status, r.Body)
	}
	if r := send(body, sim.Sign(body)); r.Status != http.StatusOK || r.JSON["duplicates"] != float64(1) {
		t.Fatalf("again: %d %s", r.Status, r.Body)
	}
}

func TestTuuthfairyStatusesMapToFHIR(t *testing.T) {
	e, sim := tfEnv(t)
	cases := []struct {
		member  string
		script  tuuthfairytest.Script
		outcome string
		inforce any
		errCode string
	}{
		{"T1", tuuthfairytest.Script{}, "complete", true, ""},
		{"T2", tuuthfairytest.Script{Inactive: true}, "complete", false, ""},
		{"T3", tuuthfairytest.Script{Failure: "patient_not_found"}, "error", nil, "member-not-found"},
		{"T4", tuuthfairytest.Script{Failure: "invalid_dob"}, "error", nil, "member-dob"},
		{"T5", tuuthfairytest.Script{Failure: "invalid_npi"}, "error", nil, "provider-npi"},
		{"T6", tuuthfairytest.Script{Failure: "payer_unavailable", PendingPolls: 3}, "error", nil, "payer-unavailable"},
	}
	for _, c := range cases {
		sim.Script(c.member, c.script)
		r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", dental("62308", c.member))
		if r.Status != http.StatusOK || r.JSON["outcome"] != c.outcome || inforce(r.JSON) != c.inforce || errorCode(r.JSON) != c.errCode {
			t.Errorf("%s: %d %s", c.member, r.Status, r.Body)
		}
	}
}

// A datasource whose login failed, or that is disconnected, fails the
// check with what an administrator must do.
func TestTuuthfairyDatasourceProblems(t *testing.T) {
	e, sim := tfEnv(t)
	sim.RejectPassword("wrong-pw")
	e.connect("metdental.com", tfNPI, "wrong-pw")
	r := e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", dental("65978", "F1"))
	if r.Status != http.StatusOK || errorCode(r.JSON) != "datasource-credentials" {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
	if sim.Calls("requestEligibility") != 0 {
		t.Fatal("eligibility was requested through a failed datasource")
	}
	// A second provider on a connected datasource that then disconnects.
	c := e.connect("dnoaconnect.com", "1999999984", "pw")
	e.admin("GET", "/api/eligibility/connections/"+c["id"].(string), nil)
	sim.Disconnect(c["id"].(string))
	o := defaults()
	o.payer, o.member, o.npi = "DNOA1", "F2", "1999999984"
	r = e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", eligibilityRequest(o))
	if r.Status != http.StatusOK || errorCode(r.JSON) != "datasource-disconnected" || !strings.Contains(errorText(r.JSON), "reconnect") {
		t.Fatalf("$submit: %d %s", r.Status, r.Body)
	}
}

// Every GraphQL document the connector sends is valid against the
// simulator's schema, the way generated clients are checked at build time.
func TestTuuthfairyOperationsMatchSchema(t *testing.T) {
	schema, err := graphql.ParseSchema(tuuthfairytest.Schema, nil)
	if err != nil {
		t.Fatal(err)
	}
	npi := map[string]any{"npi": tfNPI}
	vars := map[string]map[string]any{
		"GetConnection":            {"id": "c1"},
		"GetEligibility":           {"id": "e1"},
		"ConfirmDatasource2FaCode": {"id": "c1", "confirmCode": "123456"},
		"AddProviderToConnection":  {"connectionId": "c1", "provider": npi},
		"ConnectDatasource": {"input": map[string]any{"websiteId": "metdental.com", "provider": npi,
			"credentials": map[string]any{"username": "u", "password": "p"}}},
		"RequestEligibility": {"input": map[string]any{"patient": map[string]any{"firstName": "A", "lastName": "B", "memberId": "M", "dob": "01/02/1990"},
			"provider": npi, "payerId": "62308"}},
	}
	for name, doc := range tuuthfairy.Operations {
		if errs := schema.ValidateWithVariables(doc, vars[name]); len(errs) > 0 {
			t.Errorf("%s: %v", name, errs)
		}
		if !strings.Contains(doc, name) {
			t.Errorf("%s: the document does not name its operation", name)
		}
	}
}
