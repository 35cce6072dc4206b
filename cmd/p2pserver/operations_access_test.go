package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/examples"
	"github.com/p2pserver/p2pserver/facades/healthie"
	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// eligibilityAsk is a CoverageEligibilityRequest about Patient/A naming the
// stored Coverage cov, the stored payer Organization, and a contained
// provider.
func eligibilityAsk(cov string) map[string]any { return eligibilityAbout("Patient/A", cov) }

// eligibilityAbout is eligibilityAsk about another patient.
func eligibilityAbout(patient, cov string) map[string]any {
	return map[string]any{
		"resourceType": "CoverageEligibilityRequest", "status": "active", "purpose": []any{"validation", "benefits"},
		"patient": map[string]any{"reference": patient}, "created": "2026-11-23", "servicedDate": "2026-11-30",
		"insurer":   map[string]any{"reference": "Organization/payer"},
		"insurance": []any{map[string]any{"focal": true, "coverage": map[string]any{"reference": cov}}},
		"provider":  map[string]any{"reference": "#role"},
		"contained": []any{map[string]any{"resourceType": "PractitionerRole", "id": "role",
			"identifier": []any{map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}}}},
	}
}

// TestOperationsResolveWithTheCallersRights (rule 8): facades and
// operations read the resources a request refers to with the requester's
// rights, never the store's. Member A posting
// CoverageEligibilityRequest/$submit about themselves but naming member B's
// Coverage, or their own Coverage whose subscriber is B, is answered
// exactly as if B's resource did not exist (the same OperationOutcome as
// for an id nobody has), and nothing reaches the vendor. $submit creates
// the request, so it needs the create letter (SMART App Launch 2,
// "Scopes for requesting clinical data": c); a client must be allowed to
// read each type the request refers to. Healthie writes likewise: booking
// an appointment for a Patient needs read rights on Patient and
// Practitioner, or Healthie is never asked.
func TestOperationsResolveWithTheCallersRights(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("portal", "portal-secret")
	idp.AddClient("backend", "backend-secret")
	sim, err := sohartest.New(sohartest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	sim.AddClient("client-1", "secret-1")
	cfg := map[string]any{
		"routes": []any{map[string]any{"payerId": "60054", "vendor": "sohar", "name": "Aetna", "placeOfService": "10", "specialty": "PSY"}},
		"vendors": map[string]any{"sohar": map[string]any{"baseUrl": sim.URL, "clientId": "client-1", "clientSecret": "secret-1",
			"webhookSecret": sim.WebhookSecret()}},
		"submitWait": "15s", "pollInterval": "50ms", "maxPollInterval": "200ms", "retryBackoff": "10ms", "maxAttempts": 3,
	}
	raw, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(t.TempDir(), "eligibility.json")
	if err := os.WriteFile(cfgFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	hsim := healthietest.New(healthietest.Options{})
	demo := hsim.Seed(3)
	hs := hsim.Start()
	t.Cleanup(func() { hs.Close(); hsim.Close() })
	p := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-trusted-issuers", idp.Issuer(),
		"-secret-key", testSecretKey, "-eligibility-config", cfgFile,
		"-healthie-url", hs.URL+"/graphql", "-healthie-api-key", hsim.APIKey())
	sim.SetWebhook(p.URL + "/api/webhooks/sohar")
	for path, body := range map[string]string{
		"Patient/A":          `{"resourceType":"Patient","id":"A","name":[{"family":"Doe","given":["Jane"]}],"birthDate":"1980-09-20","gender":"female","address":[{"state":"CA"}]}`,
		"Patient/B":          `{"resourceType":"Patient","id":"B","name":[{"family":"Roe","given":["Rich"]}],"birthDate":"1961-03-14","gender":"male","address":[{"state":"NY"}]}`,
		"Organization/payer": `{"resourceType":"Organization","id":"payer","name":"Aetna","identifier":[{"system":"http://example.org/payer-id","value":"60054"}]}`,
		"Coverage/covA":      `{"resourceType":"Coverage","id":"covA","status":"active","subscriberId":"M-A","beneficiary":{"reference":"Patient/A"},"payor":[{"reference":"Organization/payer"}],"relationship":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/subscriber-relationship","code":"self"}]}}`,
		"Coverage/covB":      `{"resourceType":"Coverage","id":"covB","status":"active","subscriberId":"M-B","beneficiary":{"reference":"Patient/B"},"payor":[{"reference":"Organization/payer"}],"class":[{"type":{"coding":[{"code":"group"}]},"value":"GROUP-B"}]}`,
		"Coverage/covAofB":   `{"resourceType":"Coverage","id":"covAofB","status":"active","subscriberId":"M-B","beneficiary":{"reference":"Patient/A"},"subscriber":{"reference":"Patient/B"},"payor":[{"reference":"Organization/payer"}],"relationship":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/subscriber-relationship","code":"child"}]}}`,
	} {
		if st := p.call("PUT", "/fhir/"+path, testAdmin, body, nil); st != 201 {
			t.Fatalf("%s: %d", path, st)
		}
	}
	aud := []string{p.URL + "/fhir"}
	member := func(scopes ...string) string {
		tok, err := idp.MintFor(aud, oidctest.Grant{ClientID: "portal", Patient: "A", Scopes: scopes})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	client := func(scopes ...string) string {
		tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "backend", Scopes: scopes, Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	memberRO, memberRW := member("patient/*.read"), member("patient/*.*")
	oneType := client("system/CoverageEligibilityRequest.c")
	intake := client("system/CoverageEligibilityRequest.c", "system/Patient.r", "system/Coverage.r", "system/Organization.r")

	// Answers that must not depend on whether B's resource exists: the
	// OperationOutcome for B's, with B's id replaced by an unknown one.
	outcome := func(token, cov string) (int, string) {
		patient := "Patient/A"
		switch {
		case cov == "Coverage/covB-for-A":
			cov = "Coverage/covB"
		case cov == "Coverage/covB" && token != memberRW:
			patient = "Patient/B" // asked about B, by those who may
		}
		var oo map[string]any
		st := p.call("POST", "/fhir/CoverageEligibilityRequest/$submit", token, eligibilityAbout(patient, cov), &oo)
		b, _ := json.Marshal(oo)
		return st, string(b)
	}
	for _, c := range []struct {
		name, token, cov string
		status           int
		says             string
		vendor           bool // the vendor is asked
	}{
		{"member read-write, own Coverage", memberRW, "Coverage/covA", 200, "CoverageEligibilityResponse", true},
		// The member's write itself may refer only to what they may read
		// (authz): refused before the request is read, as for an unknown id.
		{"member read-write, B's Coverage", memberRW, "Coverage/covB", 403, "refers to Coverage/covB", false},
		{"member read-write, own Coverage with B as subscriber", memberRW, "Coverage/covAofB", 422, "Patient/B is not a resource on this server", false},
		{"member read-only", memberRO, "Coverage/covA", 403, "CoverageEligibilityRequest.c", false},
		{"system client with one type", oneType, "Coverage/covA", 403, "Patient.r", false},
		{"intake client, B's Coverage", intake, "Coverage/covB", 200, "CoverageEligibilityResponse", true},
		{"back office", testBackoffice, "Coverage/covA", 401, "", false},
		{"admin, B's Coverage", testAdmin, "Coverage/covB", 200, "CoverageEligibilityResponse", true},
		// Whoever asks, the Coverage must be the patient's: B's benefits are
		// never filed in A's record.
		{"admin, B's Coverage for A", testAdmin, "Coverage/covB-for-A", 422, "is not the request's patient", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(sim.Verifications())
			st, body := outcome(c.token, c.cov)
			if st != c.status || !strings.Contains(body, c.says) {
				t.Fatalf("$submit naming %s: %d %s, want %d with %q", c.cov, st, body, c.status, c.says)
			}
			if asked := len(sim.Verifications()) > before; asked != c.vendor {
				t.Fatalf("vendor asked: %v, want %v", asked, c.vendor)
			}
			if c.status == 422 && c.cov != "Coverage/covB-for-A" || c.status == 403 && strings.Contains(c.cov, "covB") {
				// Exactly the answer for a resource that does not exist.
				unknown := strings.Replace(c.cov, "cov", "nobody", 1)
				st2, body2 := outcome(c.token, unknown)
				if c.cov == "Coverage/covAofB" {
					// B is the subscriber: compare with an unknown subscriber.
					if st := p.call("PUT", "/fhir/Coverage/covAofX", testAdmin, strings.ReplaceAll(`{"resourceType":"Coverage","id":"covAofX","status":"active","subscriberId":"M-B","beneficiary":{"reference":"Patient/A"},"subscriber":{"reference":"Patient/X"},"payor":[{"reference":"Organization/payer"}],"relationship":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/subscriber-relationship","code":"child"}]}}`, "\n", ""), nil); st != 201 {
						t.Fatalf("covAofX: %d", st)
					}
					st2, body2 = outcome(c.token, "Coverage/covAofX")
					body2 = strings.ReplaceAll(body2, "Patient/X", "Patient/B")
				} else {
					body2 = strings.ReplaceAll(body2, unknown, c.cov)
				}
				if st2 != st || body2 != body {
					t.Fatalf("answers differ:\n  B's:     %d %s\n  unknown: %d %s", st, body, st2, body2)
				}
			}
		})
	}

	// $member-match matches across every member: clients only, with read
	// rights on Patient and Coverage (Da Vinci HRex: a payer's system
	// calls it); a member, whatever their scopes, is refused.
	mm, err := examples.Read("member-match.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, token string
		refused     int // 0: allowed (the match itself may then find no one: 200 or 422)
	}{
		{"member read-only", memberRO, 403},
		{"member read-write", memberRW, 403},
		{"system client with one type", client("system/Patient.rs"), 403},
		{"payer client", client("system/Patient.rs", "system/Coverage.rs", "system/Consent.c"), 0},
		{"back office", testBackoffice, 401},
		{"admin", testAdmin, 0},
	} {
		t.Run("$member-match "+c.name, func(t *testing.T) {
			var out map[string]any
			st := p.call("POST", "/fhir/Patient/$member-match", c.token, mm, &out)
			if (c.refused != 0 && st != c.refused) || (c.refused == 0 && st != 200 && st != 422) {
				t.Fatalf("%d %v, want %d", st, out, c.refused)
			}
		})
	}

	// $everything gathers a member's record with the requester's rights:
	// another member's answers as an unknown id, a type the scopes do not
	// cover is refused, references never lead into another member's data.
	everything := func(token, id string) (int, string) {
		var out map[string]any
		st := p.call("GET", "/fhir/Patient/"+id+"/$everything", token, nil, &out)
		b, _ := json.Marshal(out)
		return st, string(b)
	}
	if st, body := everything(memberRO, "A"); st != 200 || strings.Contains(body, "covB") || strings.Contains(body, `"id":"B"`) || !strings.Contains(body, "covAofB") {
		t.Errorf("member's own $everything: %d %s", st, body)
	}
	stB, bodyB := everything(memberRO, "B")
	stX, bodyX := everything(memberRO, "nobody")
	if stB != 404 || stB != stX || bodyB != strings.ReplaceAll(bodyX, "nobody", "B") {
		t.Errorf("another member's $everything: %d %s; unknown: %d %s", stB, bodyB, stX, bodyX)
	}
	if st, _ := everything(client("system/Observation.rs"), "A"); st != 403 {
		t.Errorf("$everything with Observation scopes only: %d", st)
	}
	if st, _ := everything(testBackoffice, "A"); st != 401 {
		t.Errorf("$everything by the back office: %d", st)
	}
	if st, body := everything(testAdmin, "B"); st != 200 || !strings.Contains(body, "covB") {
		t.Errorf("admin's $everything of B: %d %s", st, body)
	}

	// Healthie: booking for a Patient needs read rights on Patient and
	// Practitioner; refused, Healthie is not asked at all.
	appointment := map[string]any{"resourceType": "Appointment", "status": "booked", "start": "2030-05-01T15:00:00Z",
		"serviceType": []any{map[string]any{"coding": []any{map[string]any{"system": healthie.IDSystem + "appointment-type", "code": demo.Types[0]}}}},
		"participant": []any{
			map[string]any{"actor": map[string]any{"reference": "Patient/" + demo.Patients[0]}, "status": "accepted"},
			map[string]any{"actor": map[string]any{"reference": "Practitioner/" + demo.Providers[0]}, "status": "accepted"},
		}}
	for _, c := range []struct {
		name, token string
		status      int
	}{
		{"system client with one type", client("system/Appointment.c"), 403},
		{"client without Practitioner", client("system/Appointment.c", "system/Patient.r"), 403},
		{"member read-write", memberRW, 403},
		{"scheduling client", client("system/Appointment.c", "system/Patient.r", "system/Practitioner.r"), 201},
		{"admin", testAdmin, 201},
	} {
		t.Run("healthie "+c.name, func(t *testing.T) {
			hsim.ResetRequests()
			var out map[string]any
			if st := p.call("POST", "/facades/healthie/fhir/Appointment", c.token, appointment, &out); st != c.status {
				t.Fatalf("book: %d %v, want %d", st, out, c.status)
			}
			if asked := len(hsim.Requests()) > 0; asked != (c.status == 201) {
				t.Fatalf("Healthie asked: %v (%v)", asked, fmt.Sprint(hsim.Requests()))
			}
		})
	}
}
