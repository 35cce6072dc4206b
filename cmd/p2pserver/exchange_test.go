package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	td "github.com/p2pserver/p2pserver/internal/testdata"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/notify/smtptest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

const (
	testAdmin      = "admin-token-0123456789abcdef"
	testBackoffice = "backoffice-token-0123456789ab"
	testSecretKey  = "0000000000000000000000000000000000000000000000000000000000000002"
	p2pCodes       = "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes"
)

// payer is one whole p2pserver, wired by newApp exactly as the binary is,
// on a loopback port.
type payer struct {
	t    testing.TB
	app  *app
	hs   *httptest.Server
	URL  string
	once sync.Once
}

// stop shuts the payer down (as at the test's end); once.
func (p *payer) stop() {
	p.once.Do(func() {
		p.hs.Close()
		p.app.Close()
	})
}

// startPayer runs a p2pserver with the given flags (plus -db and
// -base-url) and stops it when the test ends.
func startPayer(t testing.TB, args ...string) *payer {
	t.Helper()
	return startPayerWrapped(t, nil, args...)
}

// startPayerWrapped is startPayer with the server's handler wrapped by
// wrap (nil: as it is), for a test to slow or watch the requests.
func startPayerWrapped(t testing.TB, wrap func(http.Handler) http.Handler, args ...string) *payer {
	t.Helper()
	hs := httptest.NewUnstartedServer(nil)
	base := "http://" + hs.Listener.Addr().String()
	args = append([]string{"-db", storetest.DSN(t), "-export-dir", filepath.Join(t.TempDir(), "exports"), "-base-url", base}, args...)
	cfg, err := parseConfig(args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := newApp(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(t.Context()); err != nil {
		a.Close()
		t.Fatal(err)
	}
	hs.Config.Handler = a.Handler()
	if wrap != nil {
		hs.Config.Handler = wrap(hs.Config.Handler)
	}
	hs.Start()
	p := &payer{t: t, app: a, hs: hs, URL: base}
	t.Cleanup(p.stop)
	return p
}

// call sends a JSON request and decodes the JSON answer into out.
func (p *payer) call(method, path, token string, body any, out any) int {
	p.t.Helper()
	var h map[string]string
	if token != "" {
		h = map[string]string{"Authorization": "Bearer " + token}
	}
	return p.callHeaders(method, path, h, body, out)
}

// callHeaders is call with request headers of the caller's choosing.
func (p *payer) callHeaders(method, path string, headers map[string]string, body any, out any) int {
	p.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, p.URL+path, rd)
	if rd != nil {
		ct := "application/json"
		if strings.HasPrefix(path, "/fhir") {
			ct = "application/fhir+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			p.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

func addPayerTask(member, email string) map[string]any {
	input := func(code, v string) map[string]any {
		return map[string]any{"type": map[string]any{"coding": []any{map[string]any{"system": p2pCodes, "code": code}}}, "valueString": v}
	}
	return map[string]any{
		"resourceType": "Task",
		"identifier":   []any{map[string]any{"system": p2pCodes, "value": member + "-PAYRB-2026-11-23T09:00:00Z"}},
		"status":       "requested", "intent": "original-order", "priority": "routine",
		"code":      map[string]any{"coding": []any{map[string]any{"system": p2pCodes, "code": "p2p-request-add-provider-id"}}, "text": "Add Payer"},
		"requester": map[string]any{"reference": "Patient/" + member, "type": "Patient"},
		"owner":     map[string]any{"reference": "Organization/PAYRB"},
		"input": []any{input("requester-first-name", "Angelic"), input("requester-last-name", "Mueller"),
			input("new-payer-name", "Source Payer A"), input("requester-email", email), input("requester-phone", "5555550100")},
	}
}

// TestPayerToPayerExchange is the product's main flow between two real
// p2pservers, wired as the binary wires them: a member asks their new payer
// to bring their data over (an add-payer Task, emailed to the admins and
// the member through a real SMTP server); an admin registers the old payer
// (an OIDC server definition); the back office starts a batch job with the
// member's token from a real OpenID provider; the old payer serves the
// member's $everything only to that token; the job stores it with
// Provenance, matches the member, and completes the Task, which emails the
// member again.
func TestPayerToPayerExchange(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	mail := smtptest.New(t, smtptest.Options{})

	source := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer(), "-organization-name", "Source Payer A", "-organization-id", "PAYRA")
	target := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey,
		"-smtp-url", mail.URL(), "-mail-from", "Payer B <p2p@payer-b.example>", "-notify-admins", "admins@payer-b.example",
		"-mdm-identifier-system", "urn:payer-a:member-id", "-trusted-issuers", idp.Issuer())

	// The old payer holds the member's history (a Synthea bundle).
	files, _ := filepath.Glob(filepath.Join(td.Dir, "synthea", "Angelic_Mueller*.json"))
	if len(files) != 1 {
		t.Fatalf("synthea bundle: %v", files)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var loaded map[string]any
	if st := source.call("POST", "/fhir", testAdmin, raw, &loaded); st != 200 {
		t.Fatalf("load the source: %d", st)
	}
	srcPatient := ""
	for _, e := range loaded["entry"].([]any) {
		loc := e.(map[string]any)["response"].(map[string]any)["location"].(string)
		if rest, ok := strings.CutPrefix(strings.TrimPrefix(loc, source.URL+"/fhir/"), "Patient/"); ok {
			srcPatient, _, _ = strings.Cut(rest, "/")
		}
	}
	// Another member of the old payer, whose data must not travel.
	var other map[string]any
	source.call("POST", "/fhir/Patient", testAdmin, `{"resourceType":"Patient","name":[{"family":"Other"}]}`, &other)
	source.call("POST", "/fhir/Observation", testAdmin, `{"resourceType":"Observation","status":"final","code":{"text":"secret"},"subject":{"reference":"Patient/`+other["id"].(string)+`"}}`, nil)

	// The member exists at the new payer and asks for their data.
	if st := target.call("PUT", "/fhir/Patient/member-1", testAdmin, `{"resourceType":"Patient","id":"member-1","name":[{"family":"Mueller","given":["Angelic"]}],"birthDate":"1990-01-01"}`, nil); st != 201 {
		t.Fatalf("member: %d", st)
	}
	var task map[string]any
	if st := target.call("POST", "/fhir/Task", testAdmin, addPayerTask("member-1", "angelic@example.org"), &task); st != 201 {
		t.Fatalf("add-payer Task: %d %v", st, task)
	}
	taskID := task["id"].(string)
	// A Task missing the member's email is refused, naming the input.
	bad := addPayerTask("member-1", "not-an-address")
	var oo map[string]any
	if st := target.call("POST", "/fhir/Task", testAdmin, bad, &oo); st != 422 || !strings.Contains(fmt.Sprint(oo), "requester-email") {
		t.Fatalf("bad add-payer Task: %d %v", st, oo)
	}
	msgs := mail.Wait(2, 20*time.Second)
	to := map[string]string{}
	for _, m := range msgs {
		to[strings.Join(m.To, ",")] = m.Text
	}
	if !strings.Contains(to["admins@payer-b.example"], "Source Payer A") || !strings.Contains(to["angelic@example.org"], "Source Payer A") {
		t.Fatalf("request emails: %v", to)
	}

	// An admin registers the old payer; the member portal lists it.
	def := map[string]any{"name": "Source Payer A", "issuer": idp.Issuer(), "clientId": "payer-b", "clientSecret": "payer-b-secret",
		"fhirEndpoint": source.URL + "/fhir", "tokenEndpoint": idp.TokenEndpoint(), "authWellKnown": idp.WellKnownURL(),
		"scopes": "openid offline_access patient/*.read", "responseType": "code", "organizationId": "PAYRA"}
	var created map[string]any
	if st := target.call("POST", "/api/oidc_servers", testBackoffice, def, nil); st != 403 {
		t.Fatalf("back office registering a payer: %d", st)
	}
	if st := target.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
		t.Fatalf("register the source: %d %v", st, created)
	}
	pid := int64(created["pid"].(float64))
	var list map[string]any
	if st := target.call("GET", "/api/oidc_servers", "", nil, &list); st != 200 || strings.Contains(fmt.Sprint(list), "payer-b-secret") {
		t.Fatalf("list: %d %v", st, list)
	}

	// The member's token at the old payer opens their compartment only.
	tok, err := idp.MintFor([]string{source.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: srcPatient})
	if err != nil {
		t.Fatal(err)
	}
	if st := source.call("GET", "/fhir/Patient/"+other["id"].(string), tok.AccessToken, nil, nil); st != 404 {
		t.Fatalf("member token reading another member: %d", st)
	}

	// The back office starts the job; the new payer polls it.
	job := map[string]any{
		"sourcePayer": map[string]any{"oidcToken": tok.AccessToken, "oidcRefreshToken": tok.RefreshToken,
			"fhirBundleRequest": "Patient/" + srcPatient + "/$everything?_count=50", "patientId": srcPatient},
		"targetPayer": map[string]any{"patientId": "member-1", "organizationId": "PAYRB"},
		"taskId":      taskID,
	}
	var status map[string]any
	path := fmt.Sprintf("/api/oidc_servers/%d/batch_job", pid)
	if st := target.call("POST", path, "", job, nil); st != 401 {
		t.Fatalf("job without a token: %d", st)
	}
	if st := target.call("POST", path, testBackoffice, job, &status); st != 202 {
		t.Fatalf("start job: %d %v", st, status)
	}
	jobPath := fmt.Sprintf("%s/%v", path, status["batchJobId"])
	deadline := time.Now().Add(60 * time.Second)
	for status["batchStatus"] != "COMPLETED" && status["batchStatus"] != "FAILED" {
		if time.Now().After(deadline) {
			t.Fatalf("job still %v", status["batchStatus"])
		}
		time.Sleep(50 * time.Millisecond)
		target.call("GET", jobPath, testBackoffice, nil, &status)
	}
	if status["batchStatus"] != "COMPLETED" {
		t.Fatalf("job: %v", status)
	}

	// The data is here, with where it came from, and nothing of the
	// other member.
	var eobs, provs, secret map[string]any
	target.call("GET", "/fhir/ExplanationOfBenefit?_count=1&_total=accurate", testAdmin, nil, &eobs)
	if eobs["total"].(float64) == 0 {
		t.Fatal("no ExplanationOfBenefit was brought over")
	}
	eob := eobs["entry"].([]any)[0].(map[string]any)["resource"].(map[string]any)
	if src := eob["meta"].(map[string]any)["source"].(string); !strings.HasPrefix(src, source.URL+"/fhir/ExplanationOfBenefit/") {
		t.Errorf("meta.source %q", src)
	}
	target.call("GET", "/fhir/Provenance?target="+url.QueryEscape("ExplanationOfBenefit/"+eob["id"].(string)), testAdmin, nil, &provs)
	// Two Provenance trace the EOB: the one the old payer supplied with it
	// (its transmitter record) and the one this payer wrote for the page.
	var ours, theirs int
	for _, e := range provs["entry"].([]any) {
		p := e.(map[string]any)["resource"].(map[string]any)
		src, _ := p["meta"].(map[string]any)["source"].(string)
		switch {
		case strings.HasPrefix(p["id"].(string), "batch-") && src == "":
			ours++
		case strings.HasPrefix(src, "urn:uuid:"):
			theirs++
		}
	}
	if ours != 1 || theirs != 1 {
		b, _ := json.MarshalIndent(provs, "", " ")
		t.Errorf("Provenance of the EOB: %d ours, %d from the source: %s", ours, theirs, b)
	}
	// The search that would find it does find it at the source.
	var there map[string]any
	if st := source.call("GET", "/fhir/Observation?code:text=secret", testAdmin, nil, &there); st != 200 || len(there["entry"].([]any)) != 1 {
		t.Fatalf("the other member's Observation at the source: %d %v", st, there["total"])
	}
	if st := target.call("GET", "/fhir/Observation?code:text=secret", testAdmin, nil, &secret); st != 200 || secret["entry"] != nil {
		t.Errorf("another member's data travelled: %v", secret["entry"])
	}
	// MDM: the member carries their identifier at the old payer.
	var found map[string]any
	if st := target.call("GET", "/fhir/Patient?identifier="+url.QueryEscape("urn:payer-a:member-id|"), testAdmin, nil, &found); st != 200 {
		t.Fatalf("search by the source identifier system: %d", st)
	}
	if ids := fmt.Sprint(found["entry"]); !strings.Contains(ids, "member-1") {
		t.Errorf("member not found by the source identifier: %v", found["total"])
	}

	// The data brought over is the member's record (problem 5 of issue
	// 14): batch ingestion linked the ingested copy of their source
	// Patient with them (Patient.link, seealso both ways), so
	// $everything follows the link by default, searches follow it with
	// HAPI FHIR's :mdm modifier, and the member's own token at this payer
	// sees it as theirs.
	memberData := func(token string) map[string]int {
		t.Helper()
		byType := map[string]int{}
		next := "/fhir/Patient/member-1/$everything?_count=200"
		for next != "" {
			var page map[string]any
			if st := target.call("GET", next, token, nil, &page); st != 200 {
				t.Fatalf("$everything: %d %v", st, page)
			}
			next = ""
			for _, l := range page["link"].([]any) {
				if l := l.(map[string]any); l["relation"] == "next" {
					next = strings.TrimPrefix(l["url"].(string), target.URL)
				}
			}
			entries, _ := page["entry"].([]any)
			for _, e := range entries {
				e := e.(map[string]any)
				if e["search"].(map[string]any)["mode"] != "match" {
					continue
				}
				res := e["resource"].(map[string]any)
				src, _ := res["meta"].(map[string]any)["source"].(string)
				if strings.HasPrefix(src, source.URL+"/fhir/") || strings.HasPrefix(res["id"].(string), "batch-") {
					byType[res["resourceType"].(string)]++
				}
			}
		}
		return byType
	}
	total := func(path, token string) int {
		t.Helper()
		var b map[string]any
		if st := target.call("GET", path, token, nil, &b); st != 200 {
			t.Fatalf("%s: %d %v", path, st, b)
		}
		return int(b["total"].(float64))
	}
	allEOBs := total("/fhir/ExplanationOfBenefit?_summary=count", testAdmin)
	allObs := total("/fhir/Observation?_summary=count", testAdmin)
	got := memberData(testAdmin)
	if got["ExplanationOfBenefit"] != allEOBs || got["Observation"] != allObs || got["Condition"] == 0 || got["Provenance"] == 0 {
		t.Errorf("Patient/member-1/$everything holds %v of the ingested data; %d EOBs and %d Observations were brought over", got, allEOBs, allObs)
	}
	if n := total("/fhir/Observation?subject:mdm=Patient/member-1&_summary=count", testAdmin); n != allObs || n == 0 {
		t.Errorf("Observation?subject:mdm=Patient/member-1: %d of %d", n, allObs)
	}
	if n := total("/fhir/ExplanationOfBenefit?patient:mdm=member-1&_summary=count", testAdmin); n != allEOBs {
		t.Errorf("ExplanationOfBenefit?patient:mdm=member-1: %d of %d", n, allEOBs)
	}
	// The member's token here, and another member's.
	if st := target.call("PUT", "/fhir/Patient/member-2", testAdmin, `{"resourceType":"Patient","id":"member-2","name":[{"family":"Else"}]}`, nil); st != 201 {
		t.Fatalf("member-2: %d", st)
	}
	memberTok := func(member string) string {
		tok, err := idp.MintFor([]string{target.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: member,
			Scopes: []string{"openid", "patient/*.read", "patient/Patient.write"}})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	m1, m2 := memberTok("member-1"), memberTok("member-2")
	if got := memberData(m1); got["ExplanationOfBenefit"] != allEOBs || got["Observation"] != allObs {
		t.Errorf("the member's token sees %v of their record", got)
	}
	if n := total("/fhir/Observation?_summary=count", m1); n != allObs {
		t.Errorf("Observation search with the member's token: %d of %d", n, allObs)
	}
	if n := total("/fhir/Observation?subject:mdm=Patient/member-1&_summary=count", m2); n != 0 {
		t.Errorf("another member's token finds %d of member-1's Observations", n)
	}
	if st := target.call("GET", "/fhir/ExplanationOfBenefit/"+eob["id"].(string), m2, nil, nil); st != 404 {
		t.Errorf("another member's token reads member-1's EOB: %d", st)
	}
	if st := target.call("GET", "/fhir/ExplanationOfBenefit/"+eob["id"].(string), m1, nil, nil); st != 200 {
		t.Errorf("the member's token reads their ingested EOB: %d", st)
	}
	// member-2 cannot make member-1's record theirs by linking to it.
	var m2doc map[string]any
	target.call("GET", "/fhir/Patient/member-2", m2, nil, &m2doc)
	m2doc["link"] = []any{map[string]any{"other": map[string]any{"reference": "Patient/member-1"}, "type": "seealso"}}
	if st := target.call("PUT", "/fhir/Patient/member-2", m2, m2doc, nil); st != 403 {
		t.Errorf("a member linking their Patient to another member's: %d", st)
	}
	if n := total("/fhir/Observation?_summary=count", m2); n != 0 {
		t.Errorf("member-2 sees %d Observations", n)
	}

	// The Task is completed and the member is told, in words.
	target.call("GET", "/fhir/Task/"+taskID, testAdmin, nil, &task)
	if task["status"] != "completed" {
		t.Fatalf("Task %v: %v", task["status"], task["businessStatus"])
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		done := false
		for _, m := range mail.Messages() {
			if strings.Join(m.To, ",") == "angelic@example.org" && strings.Contains(m.Text, "have been copied") {
				done = true
			}
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			for _, m := range mail.Messages() {
				t.Logf("to %v: %s\n%s", m.To, m.Subject, m.Text)
			}
			t.Fatalf("the member was not told the transfer completed; mails: %d", len(mail.Messages()))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The definition is in use by nothing now and can be deleted; the
	// eligibility facade, not configured here, refuses clearly.
	var ce map[string]any
	if st := target.call("POST", "/fhir/CoverageEligibilityRequest", testAdmin, `{"resourceType":"CoverageEligibilityRequest","status":"active","purpose":["validation"],"patient":{"reference":"Patient/member-1"},"created":"2026-11-23","insurer":{"display":"Nobody"}}`, &ce); st != 422 {
		t.Errorf("eligibility without configuration: %d %v", st, ce)
	}
	if st := target.call("DELETE", fmt.Sprintf("/api/oidc_servers/%d", pid), testAdmin, nil, nil); st != 204 {
		t.Errorf("delete the definition: %d", st)
	}
}

// TestHealthieFacadeWired runs the binary's wiring with the Healthie
// facade on, against the Healthie simulator, behind trusted-issuer tokens:
// staff tokens read practice data live and in sync mode from /fhir, member
// tokens are refused, unsigned webhooks change nothing, and every /api route
// the server mounts is in the OpenAPI document.
func TestHealthieFacadeWired(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("portal", "portal-secret")
	sim := healthietest.New(healthietest.Options{})
	sim.Seed(5)
	hs := sim.Start()
	t.Cleanup(func() { hs.Close(); sim.Close() })
	p := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer(),
		"-healthie-url", hs.URL+"/graphql", "-healthie-api-key", sim.APIKey(), "-healthie-webhook-secret", "whsec-test-0123456789",
		"-healthie-sync")

	var bundle map[string]any
	if st := p.call("GET", "/facades/healthie/fhir/Patient?_count=2", testAdmin, nil, &bundle); st != 200 || len(bundle["entry"].([]any)) != 2 {
		t.Fatalf("facade search: %d %v", st, bundle)
	}
	if !strings.Contains(fmt.Sprint(bundle["link"]), "next") {
		t.Errorf("no next link over 5 patients: %v", bundle["link"])
	}
	if st := p.call("GET", "/facades/healthie/fhir/Patient", "", nil, nil); st != 401 {
		t.Errorf("facade without a token: %d", st)
	}
	member, err := idp.MintFor([]string{p.URL + "/fhir"}, oidctest.Grant{ClientID: "portal", Patient: "member-1"})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.call("GET", "/facades/healthie/fhir/Patient", member.AccessToken, nil, nil); st != 403 {
		t.Errorf("facade with a member token: %d", st)
	}
	// Sync mode: the practice's patients are in the local store too.
	deadline := time.Now().Add(20 * time.Second)
	for {
		var local map[string]any
		p.call("GET", "/fhir/Patient?_tag="+url.QueryEscape("urn:p2pserver:facade|healthie")+"&_total=accurate", testAdmin, nil, &local)
		if local["total"] == float64(5) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("synced patients: %v", local["total"])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := p.call("POST", "/api/webhooks/healthie", "", `{"resource_id":"1","resource_id_type":"Patient","event_type":"patient.updated"}`, nil); st != 401 {
		t.Errorf("unsigned webhook: %d", st)
	}
	apidoc.CheckRoutes(t, p.app.Handler().(chi.Routes))
}
