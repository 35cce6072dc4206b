package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// ingestedID is the local id a batch job stores a source resource under
// (batch.localID: the source's id after 16 hexadecimal digits of a digest
// of the source's FHIR base and the type, for ids of up to 47 characters).
func ingestedID(base, typ, id string) string {
	sum := sha256.Sum256([]byte(base + "\x00" + typ))
	return hex.EncodeToString(sum[:8]) + "." + id
}

// TestIngestionNeverOverwritesWhatItDidNotCreate (rule 9): a batch job
// stores each source resource under a local id derived from its source
// identity, and checks the resource stored there (its last live version
// when deleted) against meta.source before the page writes over it. Put
// there first by an admin, a member, a client, or ingested from another
// source, live or deleted, the resource stays exactly as it was, the page
// is not written, and the job fails naming the entry. Ingested from the
// same source, it is updated as before.
func TestIngestionNeverOverwritesWhatItDidNotCreate(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	idp.AddClient("portal", "portal-secret")
	idp.AddClient("lab", "lab-secret")
	source := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer())
	for _, r := range []string{
		`{"resourceType":"Patient","id":"src-1","name":[{"family":"Mueller"}]}`,
		`{"resourceType":"Observation","id":"obs-1","status":"final","code":{"text":"from the source"},"subject":{"reference":"Patient/src-1"}}`,
	} {
		id := strings.Split(strings.Split(r, `"id":"`)[1], `"`)[0]
		typ := strings.Split(strings.Split(r, `"resourceType":"`)[1], `"`)[0]
		if st := source.call("PUT", "/fhir/"+typ+"/"+id, testAdmin, r, nil); st != 201 {
			t.Fatalf("source %s: %d", id, st)
		}
	}
	srcBase := source.URL + "/fhir"
	local := ingestedID(srcBase, "Observation", "obs-1")
	srcTok, err := idp.MintFor([]string{srcBase}, oidctest.Grant{ClientID: "payer-b", Patient: "src-1"})
	if err != nil {
		t.Fatal(err)
	}

	type setup func(t *testing.T, p *payer) (writer string)
	put := func(token, subject, source string) setup {
		return func(t *testing.T, p *payer) string {
			meta := ""
			if source != "" {
				meta = `,"meta":{"source":"` + source + `"}`
			}
			body := `{"resourceType":"Observation","id":"` + local + `","status":"final","code":{"text":"written here"},"subject":{"reference":"Patient/` + subject + `"}` + meta + `}`
			if st := p.call("PUT", "/fhir/Observation/"+local, token, body, nil); st != 201 {
				return fmt.Sprintf("refused %d", st)
			}
			return "written"
		}
	}
	memberRW := func(t *testing.T, p *payer) string {
		tok, err := idp.MintFor([]string{p.URL + "/fhir"}, oidctest.Grant{ClientID: "portal", Patient: "member-2", Scopes: []string{"patient/*.*"}})
		if err != nil {
			t.Fatal(err)
		}
		return put(tok.AccessToken, "member-2", "")(t, p)
	}
	client := func(t *testing.T, p *payer) string {
		tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "lab", Scopes: []string{"system/Observation.cruds"}, Audience: []string{p.URL + "/fhir"}})
		if err != nil {
			t.Fatal(err)
		}
		return put(tok.AccessToken, "member-2", "")(t, p)
	}
	deleted := func(t *testing.T, p *payer) string {
		put(testAdmin, "member-2", "")(t, p)
		if st := p.call("DELETE", "/fhir/Observation/"+local, testAdmin, nil, nil); st != 200 {
			t.Fatalf("delete: %d", st)
		}
		return "written"
	}
	sameSource := func(t *testing.T, p *payer) string {
		return "ingested" // a first run of the same job puts it there
	}

	for _, c := range []struct {
		name  string
		setup setup
	}{
		{"admin", put(testAdmin, "member-2", "")},
		{"member read-write", memberRW},
		{"system client with one type", client},
		{"another source", put(testAdmin, "member-2", "https://other-payer.example/fhir/Observation/obs-1")},
		{"meta.source of another resource of the source", put(testAdmin, "member-2", srcBase+"/Observation/obs-2")},
		{"forged meta.source of this very resource", put(testAdmin, "member-2", srcBase+"/Observation/obs-1")},
		{"deleted by an admin", deleted},
		{"the same source", sameSource},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey,
				"-trusted-issuers", idp.Issuer())
			for _, m := range []string{"member-1", "member-2"} {
				if st := target.call("PUT", "/fhir/Patient/"+m, testAdmin, `{"resourceType":"Patient","id":"`+m+`"}`, nil); st != 201 {
					t.Fatalf("member: %d", st)
				}
			}
			def := map[string]any{"name": "Source", "issuer": idp.Issuer(), "clientId": "payer-b", "clientSecret": "payer-b-secret",
				"fhirEndpoint": srcBase, "tokenEndpoint": idp.TokenEndpoint(), "scopes": "openid patient/*.read", "responseType": "code"}
			var created map[string]any
			if st := target.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
				t.Fatalf("definition: %d %v", st, created)
			}
			path := fmt.Sprintf("/api/oidc_servers/%v/batch_job", created["pid"])
			run := func() map[string]any {
				job := map[string]any{
					"sourcePayer": map[string]any{"oidcToken": srcTok.AccessToken, "oidcRefreshToken": srcTok.RefreshToken,
						"fhirBundleRequest": "Observation?subject=Patient/src-1", "patientId": "src-1"},
					"targetPayer": map[string]any{"patientId": "member-1", "organizationId": "PAYRB"},
				}
				var status map[string]any
				if st := target.call("POST", path, testBackoffice, job, &status); st != 202 {
					t.Fatalf("start: %d %v", st, status)
				}
				return waitJob(t, target, fmt.Sprintf("%s/%v", path, status["batchJobId"]))
			}
			what := c.setup(t, target)
			if what == "ingested" {
				if st := run(); st["batchStatus"] != "COMPLETED" {
					t.Fatalf("first run: %v", st)
				}
			}
			var before map[string]any
			beforeStatus := target.call("GET", "/fhir/Observation/"+local, testAdmin, nil, &before)
			status := run()

			if what != "written" {
				// Nothing of anyone else's was there (the member could not
				// choose the id, or the same source put it there): the job
				// stores the source's Observation.
				var obs map[string]any
				if status["batchStatus"] != "COMPLETED" || target.call("GET", "/fhir/Observation/"+local, testAdmin, nil, &obs) != 200 ||
					obs["code"].(map[string]any)["text"] != "from the source" {
					t.Fatalf("%s: job %v, Observation %v", what, status, obs)
				}
				return
			}
			reason, _ := status["failureReason"].(string)
			if status["batchStatus"] != "FAILED" || !strings.Contains(reason, "Observation/obs-1") || !strings.Contains(reason, "Observation/"+local) ||
				!strings.Contains(reason, "nothing stored was changed") {
				t.Fatalf("job %v: %q", status["batchStatus"], reason)
			}
			// Nothing lost, nothing written: the resource is as it was, with
			// its history, and the page left no Provenance.
			var after map[string]any
			if st := target.call("GET", "/fhir/Observation/"+local, testAdmin, nil, &after); st != beforeStatus || fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("the stored resource changed: %d %v, was %d %v", st, after, beforeStatus, before)
			}
			var v1 map[string]any
			if st := target.call("GET", "/fhir/Observation/"+local+"/_history/1", testAdmin, nil, &v1); st != 200 || v1["code"].(map[string]any)["text"] != "written here" {
				t.Fatalf("version 1: %d %v", st, v1)
			}
			var provs map[string]any
			if target.call("GET", "/fhir/Provenance?_summary=count", testAdmin, nil, &provs); provs["total"] != float64(0) {
				t.Fatalf("the page left %v Provenance", provs["total"])
			}
		})
	}
}
