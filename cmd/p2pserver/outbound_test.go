package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// counting wraps a running payer's handler to count the requests it gets.
func counting(p *payer) *atomic.Int64 {
	n := new(atomic.Int64)
	h := p.hs.Config.Handler
	p.hs.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	})
	return n
}

// waitJob polls a batch job until it ends and returns its status.
func waitJob(t *testing.T, p *payer, path string) map[string]any {
	t.Helper()
	var status map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for {
		p.call("GET", path, testBackoffice, nil, &status)
		if s := status["batchStatus"]; s == "COMPLETED" || s == "FAILED" {
			return status
		}
		if time.Now().After(deadline) {
			t.Fatalf("job still %v", status["batchStatus"])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestOutboundPolicySourcePayer (rule 10): a batch job's requests to the
// source payer are checked on the address dialled, after DNS resolution.
// The definition names the source by the name "localhost", which resolves
// to loopback: with -outbound-allow none (public addresses only) or
// private the job fails saying why and the source is never called; with
// loopback named it runs.
func TestOutboundPolicySourcePayer(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	source := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer())
	if st := source.call("PUT", "/fhir/Patient/src-1", testAdmin, `{"resourceType":"Patient","id":"src-1","name":[{"family":"Mueller"}]}`, nil); st != 201 {
		t.Fatalf("source member: %d", st)
	}
	hits := counting(source)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(source.URL, "http://"))
	byName := "http://localhost:" + port + "/fhir"

	for _, c := range []struct {
		allow   string
		ok      bool
		because string
	}{
		{"none", false, "is a loopback address, which -outbound-allow does not allow"},
		{"private", false, "is a loopback address, which -outbound-allow does not allow"},
		{"loopback", true, ""},
		{"127.0.0.1,::1", true, ""},
	} {
		t.Run(c.allow, func(t *testing.T) {
			target := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey,
				"-outbound-allow", c.allow)
			if st := target.call("PUT", "/fhir/Patient/member-1", testAdmin, `{"resourceType":"Patient","id":"member-1"}`, nil); st != 201 {
				t.Fatalf("member: %d", st)
			}
			def := map[string]any{"name": "Source", "issuer": idp.Issuer(), "clientId": "payer-b", "clientSecret": "payer-b-secret",
				"fhirEndpoint": byName, "tokenEndpoint": idp.TokenEndpoint(), "scopes": "openid patient/*.read", "responseType": "code"}
			var created map[string]any
			if st := target.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
				t.Fatalf("definition: %d %v", st, created)
			}
			tok, err := idp.MintFor([]string{source.URL + "/fhir", byName}, oidctest.Grant{ClientID: "payer-b", Patient: "src-1"})
			if err != nil {
				t.Fatal(err)
			}
			job := map[string]any{
				"sourcePayer": map[string]any{"oidcToken": tok.AccessToken, "oidcRefreshToken": tok.RefreshToken,
					"fhirBundleRequest": "Patient?_id=src-1", "patientId": "src-1"},
				"targetPayer": map[string]any{"patientId": "member-1", "organizationId": "PAYRB"},
			}
			path := fmt.Sprintf("/api/oidc_servers/%v/batch_job", created["pid"])
			// Counted before the job starts: it may end before POST answers.
			before := hits.Load()
			var status map[string]any
			if st := target.call("POST", path, testBackoffice, job, &status); st != 202 {
				t.Fatalf("start: %d %v", st, status)
			}
			status = waitJob(t, target, fmt.Sprintf("%s/%v", path, status["batchJobId"]))
			if c.ok {
				if status["batchStatus"] != "COMPLETED" || hits.Load() == before {
					t.Fatalf("job %v, %d requests at the source", status, hits.Load()-before)
				}
				return
			}
			reason, _ := status["failureReason"].(string)
			if status["batchStatus"] != "FAILED" || !strings.Contains(reason, "outbound policy") || !strings.Contains(reason, c.because) {
				t.Fatalf("job %v, reason %q", status["batchStatus"], reason)
			}
			if n := hits.Load() - before; n != 0 {
				t.Fatalf("the source got %d requests", n)
			}
		})
	}
}

// TestOutboundPolicyVendorsAndIssuers (rule 10): the eligibility vendor and
// the token issuer are reached through the same policy. With
// -outbound-allow none, a vendor and an issuer on loopback are never
// called: $submit answers 503 saying the payer could not be reached (the
// vendor received nothing, not even a token request), and a token from
// the issuer cannot be checked (its keys cannot be fetched: 503). With
// loopback allowed both work.
func TestOutboundPolicyVendorsAndIssuers(t *testing.T) {
	for _, c := range []struct {
		allow string
		ok    bool
	}{{"none", false}, {"loopback", true}} {
		t.Run(c.allow, func(t *testing.T) {
			idp := oidctest.New(t)
			idp.AddClient("backend", "backend-secret")
			sim, err := sohartest.New(sohartest.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sim.Close)
			sim.AddClient("client-1", "secret-1")
			raw, _ := json.Marshal(map[string]any{
				"routes": []any{map[string]any{"payerId": "60054", "vendor": "sohar", "name": "Aetna", "placeOfService": "10", "specialty": "PSY"}},
				"vendors": map[string]any{"sohar": map[string]any{"baseUrl": sim.URL, "clientId": "client-1", "clientSecret": "secret-1",
					"webhookSecret": sim.WebhookSecret()}},
				"submitWait": "15s", "pollInterval": "50ms", "retryBackoff": "10ms", "maxAttempts": 2,
			})
			cfgFile := filepath.Join(t.TempDir(), "eligibility.json")
			if err := os.WriteFile(cfgFile, raw, 0o600); err != nil {
				t.Fatal(err)
			}
			p := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer(), "-eligibility-config", cfgFile,
				"-outbound-allow", c.allow)
			sim.SetWebhook(p.URL + "/api/webhooks/sohar")
			for path, body := range map[string]string{
				"Patient/A":          `{"resourceType":"Patient","id":"A","name":[{"family":"Doe","given":["Jane"]}],"birthDate":"1980-09-20","gender":"female","address":[{"state":"CA"}]}`,
				"Organization/payer": `{"resourceType":"Organization","id":"payer","identifier":[{"value":"60054"}]}`,
				"Coverage/covA":      `{"resourceType":"Coverage","id":"covA","status":"active","subscriberId":"M-A","beneficiary":{"reference":"Patient/A"},"payor":[{"reference":"Organization/payer"}]}`,
			} {
				if st := p.call("PUT", "/fhir/"+path, testAdmin, body, nil); st != 201 {
					t.Fatalf("%s: %d", path, st)
				}
			}
			var out map[string]any
			st := p.call("POST", "/fhir/CoverageEligibilityRequest/$submit", testAdmin, eligibilityAsk("Coverage/covA"), &out)
			calls := sim.Calls("POST /oauth/token") + len(sim.Verifications())
			if c.ok && (st != 200 || calls == 0) {
				t.Fatalf("$submit: %d %v, %d vendor calls", st, out, calls)
			}
			if !c.ok && (st != 503 || calls != 0) {
				t.Fatalf("$submit: %d %v, %d vendor calls; want 503 and none", st, out, calls)
			}

			tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "backend", Scopes: []string{"system/Patient.rs"}, Audience: []string{p.URL + "/fhir"}})
			if err != nil {
				t.Fatal(err)
			}
			want := map[bool]int{true: 200, false: 503}[c.ok]
			if st := p.call("GET", "/fhir/Patient/A", tok.AccessToken, nil, &out); st != want {
				t.Fatalf("read with the issuer's token: %d %v, want %d", st, out, want)
			}
		})
	}
}
