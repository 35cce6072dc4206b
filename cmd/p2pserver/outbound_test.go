package main

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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
			var status map[string]any
			if st := target.call("POST", path, testBackoffice, job, &status); st != 202 {
				t.Fatalf("start: %d %v", st, status)
			}
			before := hits.Load()
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
