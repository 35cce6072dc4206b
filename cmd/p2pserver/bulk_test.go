package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/bulk"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestBulkWired: the binary offers PDex STU 2.1 bulk payer-to-payer as
// the responding payer, with the flags' settings: a backend client
// (SMART Backend Services, registered with its organization) matches a
// member with $bulk-member-match and exports the matched Group with
// $davinci-data-export; the files are written under -export-dir.
func TestBulkWired(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	dir := filepath.Join(t.TempDir(), "bulk-files")
	p := startPayer(t, "-trusted-issuers", idp.Issuer(), "-secret-key", testSecretKey, "-admin-token", testAdmin,
		"-export-dir", dir, "-export-retention", "1h")
	now := time.Now().UTC()
	bundle := map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": []any{
		map[string]any{"request": map[string]any{"method": "PUT", "url": "Patient/m1"}, "resource": map[string]any{"resourceType": "Patient", "id": "m1",
			"name": []any{map[string]any{"family": "Wired", "given": []any{"Wanda"}}}, "birthDate": "1977-07-07", "gender": "female"}},
		map[string]any{"request": map[string]any{"method": "PUT", "url": "Coverage/c1"}, "resource": map[string]any{"resourceType": "Coverage", "id": "c1", "status": "active",
			"identifier":  []any{map[string]any{"system": "http://old.example/cov", "value": "W-1"}},
			"beneficiary": map[string]any{"reference": "Patient/m1"}, "payor": []any{map[string]any{"display": "Old"}}}},
		map[string]any{"request": map[string]any{"method": "PUT", "url": "Observation/o1"}, "resource": map[string]any{"resourceType": "Observation", "id": "o1", "status": "final",
			"code": map[string]any{"text": "x"}, "subject": map[string]any{"reference": "Patient/m1"}, "effectiveDateTime": now.AddDate(0, -1, 0).Format(time.RFC3339)}},
	}}
	if st := p.call("POST", "/fhir", testAdmin, bundle, nil); st != 200 {
		t.Fatalf("load: %d", st)
	}
	key := authtest.NewKey(t, jose.ES384)
	status, out := authtest.Register(t, p.URL, testAdmin, map[string]any{"name": "New Payer", "jwks": authtest.JWKS(key),
		"scopes": []any{"system/*.rs"}, "organizationId": "1234567893"})
	client, _ := out["clientId"].(string)
	if status != 201 || client == "" {
		t.Fatalf("register: %d %v", status, out)
	}
	tok := key.Token(t, client, p.URL+"/auth/token", "system/*.rs")

	consent := map[string]any{"resourceType": "Consent", "status": "active",
		"scope":    map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}}},
		"category": []any{map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "64292-6"}}}},
		"patient":  map[string]any{"reference": "Patient/1"},
		"policy":   []any{map[string]any{"uri": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"}},
		"provision": map[string]any{"type": "permit", "period": map[string]any{"start": now.AddDate(0, 0, -1).Format("2006-01-02"), "end": now.AddDate(1, 0, 0).Format("2006-01-02")},
			"actor": []any{map[string]any{"role": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}}},
				"reference": map[string]any{"identifier": map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}}}}},
	}
	match := map[string]any{"resourceType": "Parameters", "parameter": []any{map[string]any{"name": "MemberBundle", "part": []any{
		map[string]any{"name": "MemberPatient", "resource": map[string]any{"resourceType": "Patient", "id": "1", "name": []any{map[string]any{"family": "Wired", "given": []any{"Wanda"}}}, "birthDate": "1977-07-07"}},
		map[string]any{"name": "CoverageToMatch", "resource": map[string]any{"resourceType": "Coverage", "id": "9", "status": "active",
			"identifier": []any{map[string]any{"system": "http://old.example/cov", "value": "W-1"}}, "beneficiary": map[string]any{"reference": "Patient/1"}, "payor": []any{map[string]any{"display": "Old"}}}},
		map[string]any{"name": "Consent", "resource": consent},
	}}}}
	manifest := asyncCall(t, p, "POST", "/fhir/Group/$bulk-member-match", tok, match)
	var group string
	for _, o := range manifest.Output {
		if o.Type != "Group" {
			continue
		}
		for _, line := range ndjson(t, o.URL, tok) {
			if strings.Contains(line, `"code":"match"`) {
				var g map[string]any
				_ = json.Unmarshal([]byte(line), &g)
				group, _ = g["id"].(string)
				if !strings.Contains(line, `"reference":"Patient/m1"`) {
					t.Errorf("the matched Group does not name Patient/m1: %s", line)
				}
			}
		}
	}
	if group == "" {
		t.Fatalf("no matched Group in %+v", manifest)
	}
	manifest = asyncCall(t, p, "GET", "/fhir/Group/"+group+"/$davinci-data-export?exportType="+url.QueryEscape(bulk.PayerToPayer), tok, nil)
	got := map[string]bool{}
	for _, o := range manifest.Output {
		for _, line := range ndjson(t, o.URL, tok) {
			var r map[string]any
			_ = json.Unmarshal([]byte(line), &r)
			got[r["resourceType"].(string)+"/"+r["id"].(string)] = true
		}
	}
	for _, want := range []string{"Patient/m1", "Coverage/c1", "Observation/o1"} {
		if !got[want] {
			t.Errorf("the export lacks %s: %v", want, got)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) < 2 {
		t.Errorf("-export-dir %s holds %d job folders (%v); want the two jobs'", dir, len(entries), err)
	}
}

// asyncCall kicks off with Prefer: respond-async, polls the status URL
// and returns the manifest.
func asyncCall(t *testing.T, p *payer, method, path, tok string, body any) *bulk.Manifest {
	t.Helper()
	var location string
	h := map[string]string{"Authorization": "Bearer " + tok, "Prefer": "respond-async"}
	req := func(method, u string, body any) (*http.Response, []byte) {
		var rd io.Reader
		if body != nil {
			raw, _ := json.Marshal(body)
			rd = strings.NewReader(string(raw))
		}
		r, _ := http.NewRequest(method, u, rd)
		for k, v := range h {
			r.Header.Set(k, v)
		}
		if rd != nil {
			r.Header.Set("Content-Type", "application/fhir+json")
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp, raw
	}
	resp, raw := req(method, p.URL+path, body)
	if location = resp.Header.Get("Content-Location"); resp.StatusCode != 202 || location == "" {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	delete(h, "Prefer")
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, raw := req("GET", location, nil)
		switch resp.StatusCode {
		case 202:
			continue
		case 200:
			var m bulk.Manifest
			if err := json.Unmarshal(raw, &m); err != nil {
				t.Fatal(err)
			}
			return &m
		default:
			t.Fatalf("status: %d %s", resp.StatusCode, raw)
		}
	}
	t.Fatal("the job did not finish")
	return nil
}

// ndjson downloads a file with the token and returns its lines.
func ndjson(t *testing.T, u, tok string) []string {
	t.Helper()
	r, _ := http.NewRequest("GET", u, nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != bulk.NDJSON {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var out []string
	for _, l := range strings.Split(string(raw), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}
