package bulk

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

const day = 24 * time.Hour

// A member here: a Patient and the Coverage that ties a match to it.
func memberHere(p *payer, id, family, given, birth string) {
	p.put(
		map[string]any{"resourceType": "Patient", "id": id, "birthDate": birth, "gender": "female",
			"name": []any{map[string]any{"family": family, "given": []any{given}}}},
		map[string]any{"resourceType": "Coverage", "id": "cov-" + id, "status": "active",
			"identifier":  []any{map[string]any{"system": "http://old-payer.example/coverage", "value": "C-" + id}},
			"beneficiary": map[string]any{"reference": "Patient/" + id}, "payor": []any{map[string]any{"display": "Old Payer"}},
			"costToBeneficiary": []any{map[string]any{"valueMoney": map[string]any{"value": 20, "currency": "USD"}}}},
	)
}

// consent is an HRex Consent: permit (or deny), policy, period.
func consent(typ, policy string, start, end time.Time) map[string]any {
	c := map[string]any{"resourceType": "Consent", "status": "active",
		"scope":    map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}}},
		"category": []any{map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "64292-6"}}}},
		"patient":  map[string]any{"reference": "Patient/1"},
		"provision": map[string]any{"type": typ, "period": map[string]any{"start": start.Format("2006-01-02"), "end": end.Format("2006-01-02")},
			"actor": []any{map[string]any{"role": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}}},
				"reference": map[string]any{"identifier": map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9876543210"}}}}},
	}
	if policy != "" {
		c["policy"] = []any{map[string]any{"uri": policy}}
	}
	return c
}

// memberBundle is one MemberBundle of a multi-member-match request, as
// the requesting payer knows the member.
func memberBundle(submittedID, family, given, birth, coverage string, c map[string]any) map[string]any {
	var parts []any
	parts = append(parts, map[string]any{"name": "MemberPatient", "resource": map[string]any{"resourceType": "Patient", "id": submittedID,
		"meta":       map[string]any{"lastUpdated": "2024-01-01T00:00:00Z"},
		"identifier": []any{map[string]any{"system": "http://new-payer.example/member", "value": "N-" + submittedID}},
		"name":       []any{map[string]any{"family": family, "given": []any{given}}}, "birthDate": birth, "gender": "female"}})
	if coverage != "" {
		parts = append(parts, map[string]any{"name": "CoverageToMatch", "resource": map[string]any{"resourceType": "Coverage", "id": "ctm-" + submittedID,
			"status": "active", "identifier": []any{map[string]any{"system": "http://old-payer.example/coverage", "value": coverage}},
			"beneficiary": map[string]any{"reference": "Patient/" + submittedID}, "payor": []any{map[string]any{"display": "Old Payer"}}}})
	}
	if c != nil {
		parts = append(parts, map[string]any{"name": "Consent", "resource": c})
	}
	return map[string]any{"name": "MemberBundle", "part": parts}
}

func matchRequest(bundles ...map[string]any) map[string]any {
	var ps []any
	for _, b := range bundles {
		ps = append(ps, b)
	}
	return map[string]any{"resourceType": "Parameters", "parameter": ps}
}

// groupMembersOf returns a Group's member references and the ids of its
// contained Patients.
func groupMembersOf(g map[string]any) (refs, contained []string) {
	ms, _ := g["member"].([]any)
	for _, m := range ms {
		e, _ := m.(map[string]any)["entity"].(map[string]any)
		refs = append(refs, e["reference"].(string))
	}
	cs, _ := g["contained"].([]any)
	for _, c := range cs {
		cm := c.(map[string]any)
		if cm["resourceType"] == "Patient" {
			contained = append(contained, cm["id"].(string))
		}
	}
	return refs, contained
}

// PDex STU 2.1 "Payer-to-Payer Exchange (bulk)", Bulk Member Match with
// Consent: each member is matched by the $member-match rules and its
// consent evaluated on its own (§pdex-154a); it lands in MatchedMembers
// (matches, consent can be honoured), ConsentConstrainedMembers (matches,
// consent cannot be honoured) or NonMatchedMembers (does not match); one
// member's failure never fails the others. The result comes as a Bulk
// Data manifest with Group NDJSON and the Parameters envelope
// (pdex-parameters-multi-member-match-bundle-out), and the Groups are the
// requesting client's to read and search (§pdex-157, §pdex-161).
func TestBulkMemberMatchOutcomes(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	p := newPayer(t, idp, Config{})
	now := time.Now().UTC()
	memberHere(p, "ann", "Alvarez", "Ann", "1971-02-03")
	memberHere(p, "bea", "Brown", "Bea", "1972-03-04")
	memberHere(p, "cai", "Chen", "Cai", "1973-04-05")
	memberHere(p, "gus", "Garcia", "Gus", "1975-06-07")
	// Two members alike in what the request gives: a match must be one.
	memberHere(p, "twin1", "Twin", "Tom", "1980-01-01")
	memberHere(p, "twin2", "Twin", "Tom", "1980-01-01")
	p.put(map[string]any{"resourceType": "Coverage", "id": "cov-twin2b", "status": "active",
		"identifier":  []any{map[string]any{"system": "http://old-payer.example/coverage", "value": "C-twin1"}},
		"beneficiary": map[string]any{"reference": "Patient/twin2"}, "payor": []any{map[string]any{"display": "Old Payer"}}})

	good := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))
	expired := consent("permit", mdm.PolicyRegular, now.AddDate(-2, 0, 0), now.AddDate(-1, 0, 0))
	deny := consent("deny", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))
	noPolicy := consent("permit", "", now.Add(-day), now.AddDate(1, 0, 0))
	// The recipient (IRCP) it names is another payer than the one asking.
	otherRecipient := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))
	otherRecipient["provision"].(map[string]any)["actor"].([]any)[0].(map[string]any)["reference"] =
		map[string]any{"identifier": map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1111111111"}}
	rows := []struct {
		submitted string
		bundle    map[string]any
		want      string // Group code
	}{
		{"1", memberBundle("1", "Alvarez", "Ann", "1971-02-03", "C-ann", good), outcomeMatched},
		{"2", memberBundle("2", "Brown", "Bea", "1972-03-04", "C-bea", expired), outcomeConstraint},
		{"3", memberBundle("3", "Chen", "Cai", "1973-04-05", "C-cai", deny), outcomeConstraint},
		{"4", memberBundle("4", "Garcia", "Gus", "1975-06-07", "C-gus", noPolicy), outcomeConstraint},
		{"5", memberBundle("5", "Nobody", "Ned", "1990-01-01", "C-none", good), outcomeNoMatch},
		{"6", memberBundle("6", "Twin", "Tom", "1980-01-01", "C-twin1", good), outcomeNoMatch},
		// No CoverageToMatch: this member's bundle is unusable; the others go on.
		{"7", memberBundle("7", "Alvarez", "Ann", "1971-02-03", "", good), outcomeNoMatch},
		// Does not match: its expired consent does not make it constrained.
		{"8", memberBundle("8", "Nobody", "Nia", "1991-01-01", "C-x", expired), outcomeNoMatch},
		// HRex Consent: the requesting payer must be its recipient.
		{"9", memberBundle("9", "Garcia", "Gus", "1975-06-07", "C-gus", otherRecipient), outcomeConstraint},
		// The same submitted id twice: both kept, told apart.
		{"1", memberBundle("1", "Brown", "Bea", "1972-03-04", "C-bea", good), outcomeMatched},
	}
	var bundles []map[string]any
	for _, r := range rows {
		bundles = append(bundles, r.bundle)
	}
	// The client is registered as the organization the Consents name
	// as recipient.
	client, tok := p.backendOf("new-payer", "9876543210", "system/Patient.rs", "system/Coverage.rs", "system/Group.rs")
	status := p.kickoff("POST", "/Group/$bulk-member-match", tok, matchRequest(bundles...))
	m := p.wait(status, tok)

	var groupURL, paramsURL string
	for _, o := range m.Output {
		switch o.Type {
		case "Group":
			groupURL = o.URL
		case "Parameters":
			paramsURL = o.URL
		}
	}
	if groupURL == "" || paramsURL == "" {
		t.Fatalf("manifest outputs %+v; want a Group and a Parameters file", m.Output)
	}
	groups := map[string]map[string]any{}
	for _, g := range p.lines(groupURL, tok) {
		groups[groupCode(g)] = g
	}
	params := p.lines(paramsURL, tok)
	if len(params) != 1 || params[0]["resourceType"] != "Parameters" {
		t.Fatalf("Parameters file: %v", params)
	}
	envelope := map[string]string{}
	for _, raw := range params[0]["parameter"].([]any) {
		pm := raw.(map[string]any)
		envelope[pm["name"].(string)] = groupCode(pm["resource"].(map[string]any))
	}
	wantEnvelope := map[string]string{"MatchedMembers": outcomeMatched, "NonMatchedMembers": outcomeNoMatch, "ConsentConstrainedMembers": outcomeConstraint}
	for k, v := range wantEnvelope {
		if envelope[k] != v {
			t.Errorf("Parameters %s holds %q, want the %s Group", k, envelope[k], v)
		}
	}

	count := map[string]int{}
	for _, r := range rows {
		count[r.want]++
	}
	for code, n := range count {
		g := groups[code]
		if g == nil {
			t.Errorf("no %s Group", code)
			continue
		}
		refs, contained := groupMembersOf(g)
		if len(refs) != n || len(contained) != n {
			t.Errorf("%s Group: %d members, %d contained Patients; want %d", code, len(refs), len(contained), n)
		}
		for _, ref := range refs {
			local := strings.HasPrefix(ref, "#")
			if code == outcomeMatched && local || code != outcomeMatched && !local {
				t.Errorf("%s Group member %s: matched members name the member here, the others only the submitted Patient", code, ref)
			}
		}
	}
	refs, contained := groupMembersOf(groups[outcomeMatched])
	if !slices.Contains(refs, "Patient/ann") || !slices.Contains(refs, "Patient/bea") {
		t.Errorf("matched Group members %v; want Patient/ann and Patient/bea", refs)
	}
	// §pdex-152: the submitted id is kept (the second "1" is told apart).
	if !slices.Contains(contained, "1") {
		t.Errorf("contained Patients %v: the submitted id 1 is not kept", contained)
	}
	// §pdex-151a: no meta.lastUpdated in a contained resource.
	for _, c := range groups[outcomeMatched]["contained"].([]any) {
		if meta, ok := c.(map[string]any)["meta"].(map[string]any); ok && meta["lastUpdated"] != nil {
			t.Errorf("a contained resource keeps meta.lastUpdated: %v", c)
		}
	}

	// The Groups are stored, owned by the client: read, and found by
	// identifier and characteristic.
	matchedID, _ := groups[outcomeMatched]["id"].(string)
	if resp, body := p.do("GET", "/Group/"+matchedID, tok, nil); resp.StatusCode != 200 {
		t.Errorf("GET Group/%s: %d %s", matchedID, resp.StatusCode, body)
	}
	for _, q := range []string{
		"identifier=" + url.QueryEscape(ClientIdentifierSystem+"|client:"+client),
		"characteristic=match&identifier=" + url.QueryEscape(JobIdentifierSystem+"|"+jobOf(status)),
	} {
		resp, body := p.do("GET", "/Group?"+q, tok, nil)
		if resp.StatusCode != 200 || !strings.Contains(string(body), matchedID) {
			t.Errorf("Group?%s: %d, the matched Group not found: %s", q, resp.StatusCode, body)
		}
	}

	// §pdex-161: another payer's client neither reads, finds nor exports
	// them, though its scopes cover Groups.
	_, other := p.backend("other-payer", "system/*.rs", "system/Group.ud")
	for _, c := range []struct {
		name, method, path string
		want               int // 200: a search that must not find them; 0: any
	}{
		{"read", "GET", "/Group/" + matchedID, 404},
		{"search by identifier", "GET", "/Group?identifier=" + url.QueryEscape(JobIdentifierSystem+"|"+jobOf(status)), 200},
		{"search by characteristic", "GET", "/Group?characteristic=match", 200},
		{"search everything", "GET", "/Group", 200},
		{"export", "GET", "/Group/" + matchedID + "/$davinci-data-export?exportType=" + url.QueryEscape(PayerToPayer), 404},
		// FHIR answers a delete of what is not there with 200: the
		// owner still reads it below.
		{"delete", "DELETE", "/Group/" + matchedID, 0},
	} {
		resp, raw := p.do(c.method, c.path, other, nil, "Prefer", "respond-async")
		if c.want != 0 && resp.StatusCode != c.want || c.want == 200 && strings.Contains(string(raw), matchedID) {
			t.Errorf("other client, %s: %d %s; want %d without the Group", c.name, resp.StatusCode, raw, c.want)
		}
	}
	// Nor does it export them at system level, nor take one over by
	// writing its id (update as create): it answers as for an id that
	// does not exist, and creates nothing.
	m = p.wait(p.kickoff("GET", "/$export?_type=Group", other, nil), other)
	if got := p.exported(m, other); got["Group/"+matchedID] != nil {
		t.Errorf("other client, system export: the Group is exported: %v", keys(got))
	}
	replaced := map[string]any{"resourceType": "Group", "type": "person", "actual": true}
	for _, id := range []string{matchedID, "no-such-group"} {
		replaced["id"] = id
		if resp, raw := p.do("PUT", "/Group/"+id, other, replaced); resp.StatusCode != 404 || !strings.Contains(string(raw), "Group/"+id+" is not known") {
			t.Errorf("other client, update of Group/%s: %d %s; want 404 as for an unknown id", id, resp.StatusCode, raw)
		}
	}
	if resp, raw := p.do("GET", "/Group/"+matchedID, tok, nil); resp.StatusCode != 200 || !strings.Contains(string(raw), `"versionId":"1"`) {
		t.Errorf("after the other client's attempts the owner reads the Group unchanged: %d %s", resp.StatusCode, raw)
	}
}

func jobOf(status string) string { return status[strings.LastIndex(status, "/")+1:] }

// The payer-to-payer scope of PDex STU 2.1 ("Payer-to-Payer Exchange
// (bulk)", Da Vinci Data Export Payload, _since): the member data a
// $davinci-data-export with exportType payertopayer sends, each row a
// resource and whether (and how) it is sent.
func TestPayerToPayerScope(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	var shift atomic.Int64 // the exporter's clock ahead of the real one
	p := newPayer(t, idp, Config{Now: func() time.Time { return time.Now().Add(time.Duration(shift.Load())) }})
	now := time.Now().UTC()
	ago := func(d time.Duration) string { return now.Add(-d).Format(time.RFC3339) }
	memberHere(p, "ann", "Alvarez", "Ann", "1971-02-03")
	memberHere(p, "bea", "Brown", "Bea", "1972-03-04")
	subj := map[string]any{"reference": "Patient/ann"}
	pa := func(id string, extra map[string]any) map[string]any {
		r := map[string]any{"resourceType": "ExplanationOfBenefit", "id": id, "status": "active", "use": "preauthorization",
			"type":    map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}}},
			"patient": subj, "created": ago(30 * day), "insurer": map[string]any{"display": "Old Payer"}, "provider": map[string]any{"display": "Dr X"},
			"outcome": "complete", "insurance": []any{map[string]any{"focal": true, "coverage": map[string]any{"reference": "Coverage/cov-ann"}}}}
		for k, v := range extra {
			r[k] = v
		}
		return r
	}
	p.put(
		map[string]any{"resourceType": "Observation", "id": "obs-recent", "status": "final", "code": map[string]any{"text": "bp"}, "subject": subj, "effectiveDateTime": ago(365 * day)},
		map[string]any{"resourceType": "Observation", "id": "obs-old", "status": "final", "code": map[string]any{"text": "bp"}, "subject": subj, "effectiveDateTime": ago(6 * 365 * day)},
		map[string]any{"resourceType": "Encounter", "id": "enc-old", "status": "finished", "class": map[string]any{"code": "AMB"}, "subject": subj,
			"period": map[string]any{"start": ago(7 * 365 * day), "end": ago(7*365*day - day)}},
		map[string]any{"resourceType": "Condition", "id": "cond-undated", "subject": subj, "code": map[string]any{"text": "asthma"}},
		map[string]any{"resourceType": "ExplanationOfBenefit", "id": "eob-claim", "status": "active", "use": "claim",
			"type":    map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}}},
			"patient": subj, "created": ago(60 * day), "billablePeriod": map[string]any{"start": ago(61 * day), "end": ago(60 * day)},
			"insurer": map[string]any{"display": "Old Payer"}, "provider": map[string]any{"display": "Dr X"}, "outcome": "complete",
			"insurance": []any{map[string]any{"focal": true, "coverage": map[string]any{"reference": "Coverage/cov-ann"}}},
			"total":     []any{map[string]any{"category": map[string]any{"text": "submitted"}, "amount": map[string]any{"value": 100, "currency": "USD"}}},
			"payment":   map[string]any{"amount": map[string]any{"value": 80, "currency": "USD"}},
			"item": []any{map[string]any{"sequence": 1, "productOrService": map[string]any{"text": "visit"},
				"net":          map[string]any{"value": 100, "currency": "USD"},
				"adjudication": []any{map[string]any{"category": map[string]any{"coding": []any{map[string]any{"code": "copay"}}}, "amount": map[string]any{"value": 20, "currency": "USD"}}}}}},
		pa("pa-active", nil),
		pa("pa-pending", map[string]any{"outcome": "queued"}),
		pa("pa-cancelled", map[string]any{"status": "cancelled"}),
		pa("pa-denied", map[string]any{"item": []any{map[string]any{"sequence": 1, "productOrService": map[string]any{"text": "MRI"},
			"extension": []any{map[string]any{"url": reviewActionExt, "extension": []any{map[string]any{"url": "code",
				"valueCodeableConcept": map[string]any{"coding": []any{map[string]any{"system": "https://codesystem.x12.org/005010/306", "code": "A3"}}}}}}}}}}),
		pa("pa-drug", map[string]any{"type": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}}}}),
		map[string]any{"resourceType": "ClaimResponse", "id": "remit", "status": "active", "type": map[string]any{"text": "x"}, "use": "claim",
			"patient": subj, "created": ago(day), "insurer": map[string]any{"display": "Old Payer"}, "outcome": "complete"},
		map[string]any{"resourceType": "Provenance", "id": "prov-both", "recorded": ago(day), "agent": []any{map[string]any{"who": map[string]any{"display": "Old Payer"}}},
			"target": []any{map[string]any{"reference": "Observation/obs-recent"}, map[string]any{"reference": "Observation/obs-old"}}},
		map[string]any{"resourceType": "Provenance", "id": "prov-old", "recorded": ago(day), "agent": []any{map[string]any{"who": map[string]any{"display": "Old Payer"}}},
			"target": []any{map[string]any{"reference": "Observation/obs-old"}}},
		// Bea's data, whose consent is revoked before the export.
		map[string]any{"resourceType": "Observation", "id": "obs-bea", "status": "final", "code": map[string]any{"text": "bp"}, "subject": map[string]any{"reference": "Patient/bea"}, "effectiveDateTime": ago(day)},
	)
	good := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(10, 0, 0))
	_, tok := p.backend("new-payer", "system/*.rs")
	m := p.wait(p.kickoff("POST", "/Group/$bulk-member-match", tok, matchRequest(
		memberBundle("1", "Alvarez", "Ann", "1971-02-03", "C-ann", good),
		memberBundle("2", "Brown", "Bea", "1972-03-04", "C-bea", good))), tok)
	var group string
	for _, g := range p.lines(m.Output[0].URL, tok) {
		if groupCode(g) == outcomeMatched {
			group = g["id"].(string)
		}
	}
	if group == "" {
		t.Fatal("no matched Group")
	}
	// Bea revokes her consent at the old payer (this server) after the match.
	resp, body := p.do("GET", "/Consent?patient=Patient/bea", adminToken, nil)
	if resp.StatusCode != 200 {
		t.Fatal(string(body))
	}
	beaConsent := firstEntry(t, body)
	beaConsent["status"] = "inactive"
	p.put(beaConsent)

	export := "/Group/" + group + "/$davinci-data-export?exportType=" + url.QueryEscape(PayerToPayer)
	m = p.wait(p.kickoff("GET", export, tok, nil), tok)
	got := p.exported(m, tok)
	rows := []struct {
		key, why string
		sent     bool
	}{
		{"Patient/ann", "the member", true},
		{"Coverage/cov-ann", "the member's coverage", true},
		{"Observation/obs-recent", "date of service a year ago", true},
		{"Observation/obs-old", "date of service six years ago: older than five", false},
		{"Encounter/enc-old", "encounter seven years ago", false},
		{"Condition/cond-undated", "no date of service", true},
		{"ExplanationOfBenefit/eob-claim", "a claim, without its financial data", true},
		{"ExplanationOfBenefit/pa-active", "an active prior authorization", true},
		{"ExplanationOfBenefit/pa-pending", "a pending prior authorization", true},
		{"ExplanationOfBenefit/pa-cancelled", "a prior authorization whose status changed within 12 months", true},
		{"ExplanationOfBenefit/pa-denied", "a denied prior authorization", false},
		{"ExplanationOfBenefit/pa-drug", "a drug prior authorization", false},
		{"ClaimResponse/remit", "a provider remittance", false},
		{"Provenance/prov-both", "the Provenance of a resource sent", true},
		{"Provenance/prov-old", "the Provenance of what is not sent", false},
		{"Patient/bea", "a member whose consent no longer holds", false},
		{"Observation/obs-bea", "a member whose consent no longer holds", false},
	}
	for _, r := range rows {
		if (got[r.key] != nil) != r.sent {
			t.Errorf("%s (%s): sent %v, want %v", r.key, r.why, got[r.key] != nil, r.sent)
		}
	}
	if eob := got["ExplanationOfBenefit/eob-claim"]; eob != nil {
		for _, k := range []string{"total", "payment"} {
			if eob[k] != nil {
				t.Errorf("the claim keeps %s: provider remittance and member cost-sharing are not sent", k)
			}
		}
		item := eob["item"].([]any)[0].(map[string]any)
		if item["adjudication"] != nil || item["net"] != nil {
			t.Errorf("the claim's item keeps its amounts: %v", item)
		}
		if eob["billablePeriod"] == nil || item["productOrService"] == nil {
			t.Errorf("the claim lost non-financial data: %v", eob)
		}
	}
	if cov := got["Coverage/cov-ann"]; cov != nil && cov["costToBeneficiary"] != nil {
		t.Error("the Coverage keeps costToBeneficiary (member cost-sharing)")
	}
	if prov := got["Provenance/prov-both"]; prov != nil {
		if targets := prov["target"].([]any); len(targets) != 1 {
			t.Errorf("the Provenance names what was not sent: %v", targets)
		}
	}
	// The error file names Bea.
	if len(m.Error) != 1 {
		t.Fatalf("error files %+v; want one", m.Error)
	}
	outcomes := p.lines(m.Error[0].URL, tok)
	if len(outcomes) != 1 || !strings.Contains(fmt.Sprint(outcomes[0]), "Patient/bea") {
		t.Errorf("error file %v; want one OperationOutcome naming Patient/bea", outcomes)
	}

	// A year and a month later, the cancelled prior authorization (its
	// status changed over 12 months ago) is no longer sent, the active
	// one still is.
	shift.Store(int64(395 * day))
	m = p.wait(p.kickoff("GET", export, tok, nil), tok)
	got = p.exported(m, tok)
	if got["ExplanationOfBenefit/pa-cancelled"] != nil || got["ExplanationOfBenefit/pa-active"] == nil {
		t.Errorf("13 months on: cancelled PA sent %v, active PA sent %v; want false, true",
			got["ExplanationOfBenefit/pa-cancelled"] != nil, got["ExplanationOfBenefit/pa-active"] != nil)
	}

	// PDex STU 2.1 _since: "If the _since parameter is earlier than five
	// years before the transaction request the date/time SHALL be
	// overridden and set to five years before". Six years on, _since a day
	// before the data was written still finds nothing: the floor (a year
	// after it was written) wins, even for the undated Condition.
	shift.Store(int64(6 * 365 * day))
	since := url.QueryEscape(now.Add(-day).Format(time.RFC3339))
	m = p.wait(p.kickoff("GET", export+"&_since="+since, tok, nil), tok)
	if got := p.exported(m, tok); len(got) != 0 {
		t.Errorf("six years on with an old _since: sent %v; want nothing", keys(got))
	}
	// Ann's consent still holds (it was not what left her data out).
	for _, e := range m.Error {
		if strings.Contains(fmt.Sprint(p.lines(e.URL, tok)), "Patient/ann") {
			t.Error("six years on, Ann's consent no longer holds: the _since floor was not tested")
		}
	}
}

// firstEntry returns the first resource of a searchset Bundle.
func firstEntry(t *testing.T, body []byte) map[string]any {
	t.Helper()
	var b struct {
		Entry []struct {
			Resource map[string]any `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &b); err != nil || len(b.Entry) == 0 {
		t.Fatalf("no entry: %v %s", err, body)
	}
	return b.Entry[0].Resource
}

// A $bulk-member-match cut by a restart resumes after the last member
// decided (its checkpoint): every member is decided once, none twice.
func TestBulkMemberMatchResumesAfterRestart(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	reached := make(chan struct{})
	var once sync.Once
	cfg := Config{Workers: 1}
	cfg.afterSlice = func(ctx context.Context, j *Job) {
		if j.Kind == KindMatch && j.Cursor.Member >= 50 && j.State == StateRunning {
			once.Do(func() { close(reached) })
			<-ctx.Done()
		}
	}
	p := newPayer(t, idp, cfg)
	now := time.Now().UTC()
	memberHere(p, "ann", "Alvarez", "Ann", "1971-02-03")
	good := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))
	var bundles []map[string]any
	for i := range 120 {
		bundles = append(bundles, memberBundle(fmt.Sprintf("n%03d", i), "Nobody", "Ned", "1990-01-01", "C-none", good))
	}
	bundles = append(bundles, memberBundle("a", "Alvarez", "Ann", "1971-02-03", "C-ann", good))
	_, tok := p.backend("new-payer", "system/*.rs")
	status := p.kickoff("POST", "/Group/$bulk-member-match", tok, matchRequest(bundles...))
	<-reached
	p.stop()
	p.cfg.afterSlice = nil
	p.restart()
	if j := p.job(jobOf(status)); j.Cursor.Member < 50 || j.Cursor.Member >= 121 || j.State != StateRunning {
		t.Fatalf("after the restart the job is at member %d (%s); want it part way", j.Cursor.Member, j.State)
	}
	m := p.wait(status, tok)
	groups := map[string][]string{}
	for _, o := range m.Output {
		if o.Type != "Group" {
			continue
		}
		for _, g := range p.lines(o.URL, tok) {
			_, contained := groupMembersOf(g)
			groups[groupCode(g)] = contained
		}
	}
	if len(groups[outcomeNoMatch]) != 120 || len(groups[outcomeMatched]) != 1 {
		t.Errorf("not matched %d, matched %d; want 120 and 1 (each member once)", len(groups[outcomeNoMatch]), len(groups[outcomeMatched]))
	}
	seen := map[string]bool{}
	for _, id := range groups[outcomeNoMatch] {
		if seen[id] {
			t.Errorf("member %s decided twice", id)
		}
		seen[id] = true
	}
}

// PDex STU 2.1: consent is evaluated per requesting payer at the time of
// each export. Two payers that send the same member's identical Consent
// each hold it for themselves: the second match does not reuse the first
// payer's stored Consent, so each one's payer-to-payer export sends her.
func TestSameConsentFromTwoPayers(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	p := newPayer(t, idp, Config{})
	now := time.Now().UTC()
	memberHere(p, "ann", "Alvarez", "Ann", "1971-02-03")
	good := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))
	for _, payer := range []string{"payer-one", "payer-two"} {
		_, tok := p.backend(payer, "system/*.rs")
		m := p.wait(p.kickoff("POST", "/Group/$bulk-member-match", tok, matchRequest(
			memberBundle("1", "Alvarez", "Ann", "1971-02-03", "C-ann", good))), tok)
		var group string
		for _, g := range p.lines(m.Output[0].URL, tok) {
			if groupCode(g) == outcomeMatched {
				group = g["id"].(string)
			}
		}
		if group == "" {
			t.Fatalf("%s: no matched Group", payer)
		}
		export := "/Group/" + group + "/$davinci-data-export?exportType=" + url.QueryEscape(PayerToPayer)
		m = p.wait(p.kickoff("GET", export, tok, nil), tok)
		if got := p.exported(m, tok); got["Patient/ann"] == nil {
			t.Errorf("%s: the member was not exported; errors: %v", payer, m.Error)
		}
	}
}

// TestBulkMemberMatchInvalidResources: a MemberBundle holding a resource
// that is not valid FHIR R4 is that member's failure, never the job's
// (PDex STU 2.1 §pdex-154a): the member is not matched, whatever its
// demographics, and the others are decided as usual. The result Groups
// stay valid: the member's submitted Patient is contained with its id
// (as much of it as is valid), an invalid CoverageToMatch is left out.
func TestBulkMemberMatchInvalidResources(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	p := newPayer(t, idp, Config{})
	now := time.Now().UTC()
	memberHere(p, "ann", "Alvarez", "Ann", "1971-02-03")
	memberHere(p, "bea", "Brown", "Bea", "1972-03-04")
	good := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))

	part := func(b map[string]any, name string) map[string]any {
		for _, p := range b["part"].([]any) {
			if p.(map[string]any)["name"] == name {
				return p.(map[string]any)["resource"].(map[string]any)
			}
		}
		t.Fatalf("no %s", name)
		return nil
	}
	ann := func(id string) map[string]any {
		return memberBundle(id, "Alvarez", "Ann", "1971-02-03", "C-ann", consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0)))
	}
	rows := []struct {
		name, id string
		spoil    func(b map[string]any)
	}{
		{"a Coverage without status, beneficiary and payor", "cov", func(b map[string]any) {
			c := part(b, "CoverageToMatch")
			delete(c, "status")
			delete(c, "beneficiary")
			delete(c, "payor")
		}},
		{"a Coverage with an element R4 does not have", "cov2", func(b map[string]any) { part(b, "CoverageToMatch")["colour"] = "blue" }},
		{"a Patient with an element R4 does not have", "pat", func(b map[string]any) { part(b, "MemberPatient")["colour"] = "blue" }},
		{"a Patient whose gender is a number", "pat2", func(b map[string]any) { part(b, "MemberPatient")["gender"] = 7 }},
		{"a Consent with an element R4 does not have", "con", func(b map[string]any) { part(b, "Consent")["colour"] = "blue" }},
		{"a Consent with a status R4 does not have", "con2", func(b map[string]any) { part(b, "Consent")["status"] = "on" }},
		{"a CoverageToMatch that is a Patient", "typ", func(b map[string]any) { part(b, "CoverageToMatch")["resourceType"] = "Patient" }},
	}
	var bundles []map[string]any
	for _, r := range rows {
		b := ann(r.id)
		r.spoil(b)
		bundles = append(bundles, b)
	}
	bundles = append(bundles, memberBundle("ok", "Brown", "Bea", "1972-03-04", "C-bea", good))
	_, tok := p.backendOf("new-payer", "9876543210", "system/Patient.rs", "system/Coverage.rs", "system/Group.rs")
	status := p.kickoff("POST", "/Group/$bulk-member-match", tok, matchRequest(bundles...))
	m := p.wait(status, tok) // a job that failed is a test failure here
	groups := map[string]map[string]any{}
	for _, o := range m.Output {
		if o.Type == "Group" {
			for _, g := range p.lines(o.URL, tok) {
				groups[groupCode(g)] = g
			}
		}
	}
	if refs, _ := groupMembersOf(groups[outcomeMatched]); !slices.Equal(refs, []string{"Patient/bea"}) {
		t.Errorf("matched members %v; want only the valid bundle's, Patient/bea", refs)
	}
	refs, contained := groupMembersOf(groups[outcomeNoMatch])
	for _, r := range rows {
		if !slices.Contains(refs, "#"+r.id) || !slices.Contains(contained, r.id) {
			t.Errorf("%s: not matched members %v, contained Patients %v; want the member, by its submitted id %s", r.name, refs, contained, r.id)
		}
	}
	for _, c := range groups[outcomeNoMatch]["contained"].([]any) {
		if c.(map[string]any)["colour"] != nil || c.(map[string]any)["gender"] == 7.0 {
			t.Errorf("an invalid submitted resource is contained: %v", c)
		}
	}
}
