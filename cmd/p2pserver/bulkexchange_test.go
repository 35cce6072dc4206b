package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	td "github.com/p2pserver/p2pserver/internal/testdata"

	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/bulk"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// The organizations of the two payers in the bulk exchange tests: a
// member's Consent names the new payer (the recipient) by its NPI.
const (
	newPayerNPI   = "1234567893"
	otherPayerNPI = "1111111112"
	oldPayerName  = "Old Payer"
)

// bulkMemberFixture is one member as both payers know them.
type bulkMemberFixture struct {
	n                     int
	family, given, gender string
	birth                 string
	coverage              string // the member's coverage identifier at the old payer
	source                string // the member's Patient id at the old payer ("" when not there)
}

// bulkPair starts an old payer (source) and a new payer (target), each a
// whole p2pserver, with SMART Backend Services both ways: each registers
// the other as a backend client whose keys are at the other's
// GET /api/jwks, and each has an OIDC server definition of the other with
// system access. It returns the target's definition of the source.
func bulkPair(t *testing.T, sourceArgs, targetArgs []string) (source, target *payer, pid int64) {
	t.Helper()
	source = startPayer(t, append([]string{"-admin-token", testAdmin, "-secret-key", testSecretKey,
		"-organization-name", oldPayerName, "-organization-id", "OLDPAYER", "-export-retention", "1h"}, sourceArgs...)...)
	target = startPayer(t, append([]string{"-admin-token", testAdmin, "-backoffice-token", testBackoffice,
		"-secret-key", "0000000000000000000000000000000000000000000000000000000000000004",
		"-mdm-identifier-system", "urn:old-payer:member-id", "-bulk-min-poll", "20ms"}, targetArgs...)...)
	pid, _ = connectAsSystem(t, target, source, "New Payer", newPayerNPI, oldPayerName, "OLDPAYER")
	// The other way too: the old payer may pull from the new one.
	back, _ := connectAsSystem(t, source, target, oldPayerName, "1234567890", "New Payer", newPayerNPI)
	if rep := checkSystemToken(t, source, back); !rep.OK {
		t.Fatalf("the old payer's system access to the new payer: %+v", rep)
	}
	return source, target, pid
}

// connectAsSystem registers requester at provider as a backend client
// named client of organization org (keys at requester's /api/jwks,
// system/*.rs), and gives requester a definition of provider (named
// name, organization defOrg) with that system access. It returns the
// definition's pid and the client id.
func connectAsSystem(t testing.TB, requester, provider *payer, client, org, name, defOrg string) (int64, string) {
	t.Helper()
	status, out := authtest.Register(t, provider.URL, testAdmin, map[string]any{"name": client,
		"jwksUrl": requester.URL + "/api/jwks", "scopes": []any{"system/*.rs"}, "organizationId": org})
	clientID, _ := out["clientId"].(string)
	if status != 201 || clientID == "" {
		t.Fatalf("register %s at %s: %d %v", client, provider.URL, status, out)
	}
	def := map[string]any{"name": name, "issuer": provider.URL, "clientId": "member-app", "fhirEndpoint": provider.URL + "/fhir",
		"systemClientId": clientID, "systemScopes": "system/*.rs", "organizationId": defOrg}
	var created map[string]any
	if st := requester.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
		t.Fatalf("definition: %d %v", st, created)
	}
	return int64(created["pid"].(float64)), clientID
}

// loadBulkMembers loads n members at the source from the Synthea bundles,
// each bundle once per copy under new ids (the server assigns them) and
// a name of its own, with a Coverage of the old payer.
func loadBulkMembers(t *testing.T, source *payer, n int) []*bulkMemberFixture {
	t.Helper()
	files := td.Glob(t, "synthea/*.json")
	out := make([]*bulkMemberFixture, n)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	sem := make(chan struct{}, 2)
	for i := range n {
		raw, err := os.ReadFile(files[i%len(files)])
		if err != nil {
			t.Fatal(err)
		}
		var b map[string]any
		if err := json.Unmarshal(shiftYears(raw, 4), &b); err != nil {
			t.Fatal(err)
		}
		m := &bulkMemberFixture{n: i, coverage: fmt.Sprintf("OLD-%04d", i)}
		var patientURL string
		for _, e := range b["entry"].([]any) {
			e := e.(map[string]any)
			r := e["resource"].(map[string]any)
			if r["resourceType"] != "Patient" {
				continue
			}
			patientURL = e["fullUrl"].(string)
			name := r["name"].([]any)[0].(map[string]any)
			m.family = fmt.Sprintf("%sBulk%c", name["family"], 'a'+rune(i/len(files)))
			name["family"] = m.family
			m.given = name["given"].([]any)[0].(string)
			m.birth, _ = r["birthDate"].(string)
			m.gender, _ = r["gender"].(string)
			r["name"] = []any{name}
			delete(r, "identifier")
		}
		b["entry"] = append(b["entry"].([]any), map[string]any{"fullUrl": "urn:uuid:coverage-" + m.coverage,
			"request": map[string]any{"method": "POST", "url": "Coverage"},
			"resource": map[string]any{"resourceType": "Coverage", "status": "active", "subscriberId": m.coverage,
				"identifier":  []any{map[string]any{"system": "http://old-payer.example/member", "value": m.coverage}},
				"beneficiary": map[string]any{"reference": patientURL}, "payor": []any{map[string]any{"display": oldPayerName}}}})
		out[i] = m
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			var loaded map[string]any
			if st := source.call("POST", "/fhir", testAdmin, b, &loaded); st != 200 {
				errc <- fmt.Errorf("load member %d: %d", i, st)
				return
			}
			for _, e := range loaded["entry"].([]any) {
				loc := e.(map[string]any)["response"].(map[string]any)["location"].(string)
				if rest, ok := strings.CutPrefix(strings.TrimPrefix(loc, source.URL+"/fhir/"), "Patient/"); ok {
					m.source, _, _ = strings.Cut(rest, "/")
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	return out
}

// yearStart is the year that opens a JSON date, dateTime or instant.
var yearStart = regexp.MustCompile(`"(\d{4})-(\d{2})-(\d{2})`)

// shiftYears moves every date of a Synthea bundle n years on (n a
// multiple of 4 keeps 29 February a date): the bundles were made in
// 2019-2022, and a payer-to-payer export sends five years of data.
func shiftYears(raw []byte, n int) []byte {
	return yearStart.ReplaceAllFunc(raw, func(m []byte) []byte {
		y, _ := strconv.Atoi(string(m[1:5]))
		return fmt.Appendf(nil, `"%04d%s`, y+n, m[5:])
	})
}

// hrexConsent is the member's HRex Consent: permit, naming the recipient
// org as the information recipient.
func hrexConsent(member, org string) map[string]any {
	now := time.Now().UTC()
	return map[string]any{"resourceType": "Consent", "status": "active",
		"scope":    map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}}},
		"category": []any{map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "64292-6"}}}},
		"patient":  map[string]any{"reference": "Patient/" + member},
		"policy":   []any{map[string]any{"uri": "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"}},
		"provision": map[string]any{"type": "permit", "period": map[string]any{"start": now.AddDate(0, 0, -1).Format("2006-01-02"), "end": now.AddDate(1, 0, 0).Format("2006-01-02")},
			"actor": []any{map[string]any{"role": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}}},
				"reference": map[string]any{"identifier": map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": org}}}}},
	}
}

// memberRequest is a member of POST .../bulk_job: our Patient m<n>, the
// coverage to match (coverage: its identifier at the old payer), the
// consent naming org.
func memberRequest(m *bulkMemberFixture, coverage, org string) map[string]any {
	id := fmt.Sprintf("m%04d", m.n)
	return map[string]any{"patientId": id,
		"coverageToMatch": map[string]any{"resourceType": "Coverage", "status": "active", "subscriberId": coverage,
			"identifier":  []any{map[string]any{"system": "http://old-payer.example/member", "value": coverage}},
			"beneficiary": map[string]any{"reference": "Patient/" + id}, "payor": []any{map[string]any{"display": oldPayerName}}},
		"consent": hrexConsent(id, org)}
}

// createMembers creates the members at the target under our ids m<n>.
func createMembers(t *testing.T, target *payer, ms []*bulkMemberFixture) {
	t.Helper()
	var entries []any
	for _, m := range ms {
		id := fmt.Sprintf("m%04d", m.n)
		entries = append(entries, map[string]any{"request": map[string]any{"method": "PUT", "url": "Patient/" + id},
			"resource": map[string]any{"resourceType": "Patient", "id": id, "birthDate": m.birth, "gender": m.gender,
				"name": []any{map[string]any{"family": m.family, "given": []any{m.given}}}}})
	}
	if st := target.call("POST", "/fhir", testAdmin, map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries}, nil); st != 200 {
		t.Fatalf("members at the target: %d", st)
	}
}

// waitBulk polls a bulk job until it ends and returns its last status.
func waitBulk(t *testing.T, p *payer, path string, within time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(within)
	var st map[string]any
	for {
		st = nil
		if code := p.call("GET", path, testBackoffice, nil, &st); code != 200 {
			t.Fatalf("GET %s: %d %v", path, code, st)
		}
		switch st["batchStatus"] {
		case "COMPLETED", "FAILED", "STOPPED":
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("bulk job still %v (%v) after %s: %v", st["batchStatus"], st["phase"], within, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBulk posts a bulk job and returns its status path.
func startBulk(t *testing.T, p *payer, pid int64, body map[string]any) string {
	t.Helper()
	var out map[string]any
	path := fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid)
	req, _ := json.Marshal(body)
	resp, err := http.DefaultClient.Do(func() *http.Request {
		r, _ := http.NewRequest("POST", p.URL+path, strings.NewReader(string(req)))
		r.Header.Set("Authorization", "Bearer "+testBackoffice)
		r.Header.Set("Content-Type", "application/json")
		return r
	}())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != 202 || out["batchStatus"] != "STARTING" || out["createTime"] == nil {
		t.Fatalf("POST %s: %d %v", path, resp.StatusCode, out)
	}
	loc := resp.Header.Get("Location")
	if want := fmt.Sprintf("%s/%v", path, out["bulkJobId"]); loc != want {
		t.Fatalf("Location %q, want %q", loc, want)
	}
	return loc
}

// sourceExport runs the same payer-to-payer export of the source's matched
// Group as the target's client (its keys), and returns each resource's
// source URL by the source Patient whose data it is.
func sourceExport(t *testing.T, source, target *payer, pid int64, group string, patients []string) (byPatient map[string][]string, all []string) {
	t.Helper()
	var def map[string]any
	if st := target.call("GET", fmt.Sprintf("/api/oidc_servers/%d", pid), testAdmin, nil, &def); st != 200 {
		t.Fatalf("definition: %d", st)
	}
	srv := oidcservers.Server{Name: oldPayerName, Issuer: source.URL, ClientID: "member-app", FHIREndpoint: source.URL + "/fhir",
		SystemClientID: def["systemClientId"].(string), SystemScopes: "system/*.rs"}
	ts, err := oidcservers.NewSystemTokenSource(srv, target.app.clientKeys, &http.Client{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := &bulk.Client{Tokens: ts, MinPoll: 20 * time.Millisecond}
	ctx := context.Background()
	q := url.Values{"exportType": {bulk.PayerToPayer}}
	status, err := c.KickOff(ctx, "GET", source.URL+"/fhir/Group/"+group+"/$davinci-data-export?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Wait(ctx, status, nil)
	if err != nil {
		t.Fatal(err)
	}
	byPatient = map[string][]string{}
	for _, o := range m.Output {
		if _, err := c.Download(ctx, o.URL, m.RequiresAccessToken, 0, func(line []byte) error {
			var r struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
			}
			if err := json.Unmarshal(line, &r); err != nil {
				return err
			}
			u := source.URL + "/fhir/" + r.ResourceType + "/" + r.ID
			all = append(all, u)
			for _, p := range patients {
				if (r.ResourceType == "Patient" && r.ID == p) || strings.Contains(string(line), `"Patient/`+p+`"`) {
					byPatient[p] = append(byPatient[p], u)
					break
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.Cancel(ctx, status)
	return byPatient, all
}

// everythingSources returns the meta.source of every resource in
// Patient/{id}/$everything at p.
func everythingSources(t *testing.T, p *payer, id string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	next := "/fhir/Patient/" + id + "/$everything?_count=500"
	for next != "" {
		var page map[string]any
		if st := p.call("GET", next, testAdmin, nil, &page); st != 200 {
			t.Fatalf("$everything %s: %d %v", id, st, page)
		}
		next = ""
		links, _ := page["link"].([]any)
		for _, l := range links {
			if l := l.(map[string]any); l["relation"] == "next" {
				next = strings.TrimPrefix(l["url"].(string), p.URL)
			}
		}
		entries, _ := page["entry"].([]any)
		for _, e := range entries {
			r := e.(map[string]any)["resource"].(map[string]any)
			if meta, ok := r["meta"].(map[string]any); ok {
				if s, ok := meta["source"].(string); ok {
					out[s] = true
				}
			}
		}
	}
	return out
}

// TestBulkExchangeBetweenTwoPayers is the PDex STU 2.1 bulk payer-to-payer
// exchange end to end, between two whole p2pservers with SMART Backend
// Services both ways: the new payer asks for 54 members at once
// (POST /api/oidc_servers/{id}/bulk_job); the old payer matches them with
// Group/$bulk-member-match (44 matched, 6 not matched: 4 with a coverage
// it does not know and 2 it never had, 4 consent-constrained: their
// Consent names another payer); the new payer exports the matched Group
// with $davinci-data-export (exportType payer-to-payer), downloads the
// files and ingests them. It ends with exactly the matched, consenting
// members' data, each resource traced by a Provenance naming the old
// payer, each member's $everything showing theirs, and their add-payer
// Tasks completed or failed in words, with emails as for paged jobs.
func TestBulkExchangeBetweenTwoPayers(t *testing.T) {
	t.Parallel()
	source, target, pid := bulkPair(t, nil, nil)
	members := loadBulkMembers(t, source, 52)
	extra := []*bulkMemberFixture{
		{n: 52, family: "Nobody", given: "Anne", gender: "female", birth: "1970-01-01", coverage: "OLD-9998"},
		{n: 53, family: "Nobody", given: "Bert", gender: "male", birth: "1971-02-02", coverage: "OLD-9999"},
	}
	everyone := append(slices.Clone(members), extra...)
	createMembers(t, target, everyone)

	outcome := map[string]string{}
	var list []any
	for _, m := range everyone {
		id := fmt.Sprintf("m%04d", m.n)
		switch {
		case m.n >= 52:
			list = append(list, memberRequest(m, m.coverage, newPayerNPI))
			outcome[id] = "notMatched"
		case m.n%13 == 1:
			list = append(list, memberRequest(m, "WRONG-"+m.coverage, newPayerNPI))
			outcome[id] = "notMatched"
		case m.n%13 == 2:
			list = append(list, memberRequest(m, m.coverage, otherPayerNPI))
			outcome[id] = "consentConstrained"
		default:
			list = append(list, memberRequest(m, m.coverage, newPayerNPI))
			outcome[id] = "matched"
		}
	}
	// Three members asked for their data with an add-payer Task.
	tasks := map[string]string{} // member -> Task id
	for _, id := range []string{"m0000", "m0001", "m0002"} {
		var task map[string]any
		if st := target.call("POST", "/fhir/Task", testAdmin, addPayerTask(id, id+"@example.org"), &task); st != 201 {
			t.Fatalf("add-payer Task: %d %v", st, task)
		}
		tasks[id] = task["id"].(string)
		for _, e := range list {
			if e := e.(map[string]any); e["patientId"] == id {
				e["taskId"] = task["id"]
			}
		}
	}

	// Bad requests are refused, each problem under its field.
	var bad map[string]any
	if st := target.call("POST", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid), testBackoffice,
		map[string]any{"members": []any{map[string]any{"patientId": "nobody-here", "coverageToMatch": map[string]any{"resourceType": "Patient"}}}}, &bad); st != 400 ||
		!strings.Contains(fmt.Sprint(bad), "members[0].patientId") || !strings.Contains(fmt.Sprint(bad), "members[0].coverageToMatch") || !strings.Contains(fmt.Sprint(bad), "members[0].consent") {
		t.Fatalf("bad request: %d %v", st, bad)
	}

	path := startBulk(t, target, pid, map[string]any{"members": list})
	st := waitBulk(t, target, path, 5*time.Minute)
	if st["batchStatus"] != "COMPLETED" || st["phase"] != "done" {
		t.Fatalf("bulk job: %v", st)
	}
	counts := st["members"].(map[string]any)
	if counts["total"] != 54.0 || counts["matched"] != 44.0 || counts["notMatched"] != 6.0 || counts["consentConstrained"] != 4.0 {
		t.Fatalf("member counts: %v", counts)
	}
	for _, f := range []string{"bulkJobId", "batchStatus", "phase", "members", "filesDone", "resourcesWritten", "failureReason", "startTime", "endTime", "lastUpdated"} {
		if _, ok := st[f]; !ok {
			t.Errorf("the status lacks %s: %v", f, st)
		}
	}

	// Per-member outcomes, paged.
	got := map[string]map[string]any{}
	next := path + "/members?count=20"
	pages := 0
	for next != "" {
		var page map[string]any
		if code := target.call("GET", next, testBackoffice, nil, &page); code != 200 {
			t.Fatalf("members: %d %v", code, page)
		}
		pages++
		for _, m := range page["members"].([]any) {
			m := m.(map[string]any)
			got[m["patientId"].(string)] = m
		}
		next, _ = page["next"].(string)
	}
	if pages != 3 || len(got) != 54 {
		t.Fatalf("members: %d pages, %d members", pages, len(got))
	}
	var matchedSources []string
	sourceOf := map[string]string{}
	for id, want := range outcome {
		m := got[id]
		if m["outcome"] != want {
			t.Errorf("%s: outcome %v, want %s (%v)", id, m["outcome"], want, m)
		}
		if want == "matched" {
			src := strings.TrimPrefix(m["sourcePatient"].(string), "Patient/")
			matchedSources = append(matchedSources, src)
			sourceOf[id] = src
			if m["resourcesWritten"].(float64) == 0 || !strings.HasPrefix(fmt.Sprint(m["memberIdentifier"]), "urn:old-payer:member-id|") && m["memberIdentifier"] != nil {
				t.Errorf("%s: %v", id, m)
			}
		} else if m["resourcesWritten"].(float64) != 0 {
			t.Errorf("%s (%s) had data written: %v", id, want, m)
		}
	}

	t.Logf("bulk job: %d resources in %v files, %d chunks, members %v", int(st["resourcesWritten"].(float64)), st["filesDone"], int(st["progress"].(map[string]any)["chunks"].(float64)), counts)
	// Exactly the matched members' data: what the old payer exports for
	// the matched Group, each resource once, with Provenance.
	byPatient, all := sourceExport(t, source, target, pid, st["sourceGroup"].(string), matchedSources)
	if int(st["resourcesWritten"].(float64)) != len(all) {
		t.Errorf("resourcesWritten %v, the export has %d", st["resourcesWritten"], len(all))
	}
	want := map[string]bool{}
	for _, u := range all {
		want[u] = true
	}
	provTargets := map[string]int{}
	ingested := map[string]bool{}
	err := target.app.store.View(context.Background(), func(tx *store.Tx) error {
		for _, pid := range st["progress"].(map[string]any)["provenanceIds"].([]any) {
			v, err := tx.Read("Provenance", pid.(string))
			if err != nil {
				return fmt.Errorf("Provenance/%s: %w", pid, err)
			}
			var p struct {
				Target []struct {
					Reference string `json:"reference"`
				} `json:"target"`
				Agent []struct {
					Who struct {
						Display string `json:"display"`
					} `json:"who"`
				} `json:"agent"`
			}
			_ = json.Unmarshal(v.JSON, &p)
			if !strings.Contains(string(v.JSON), oldPayerName) {
				t.Errorf("Provenance/%s does not name the old payer: %s", pid, v.JSON)
			}
			for _, tg := range p.Target {
				provTargets[tg.Reference]++
				typ, id, _ := strings.Cut(tg.Reference, "/")
				r, err := tx.Read(typ, id)
				if err != nil {
					return fmt.Errorf("%s: %w", tg.Reference, err)
				}
				var meta struct {
					Meta struct {
						Source string `json:"source"`
					} `json:"meta"`
				}
				_ = json.Unmarshal(r.JSON, &meta)
				ingested[meta.Meta.Source] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for ref, n := range provTargets {
		if n != 1 {
			t.Errorf("%s is the target of %d Provenance", ref, n)
		}
	}
	if len(ingested) != len(want) {
		t.Errorf("%d resources ingested with Provenance, the export has %d", len(ingested), len(want))
	}
	for u := range want {
		if !ingested[u] {
			t.Errorf("not ingested: %s", u)
			break
		}
	}
	for u := range ingested {
		if !want[u] {
			t.Errorf("ingested but not the matched members' export: %s", u)
			break
		}
	}

	// Each member's $everything shows their data; the others' shows none
	// of the old payer's.
	for id, want := range outcome {
		srcs := everythingSources(t, target, id)
		fromOld := 0
		for s := range srcs {
			if strings.HasPrefix(s, source.URL) {
				fromOld++
			}
		}
		if want != "matched" {
			if fromOld != 0 {
				t.Errorf("%s (%s): $everything shows %d resources of the old payer", id, want, fromOld)
			}
			continue
		}
		for _, u := range byPatient[sourceOf[id]] {
			if !srcs[u] {
				t.Errorf("%s: $everything lacks %s", id, u)
				break
			}
		}
	}

	// The Tasks: completed for the matched member, failed in words for
	// the others; the member is emailed as for paged jobs.
	for id, reason := range map[string]string{"m0000": "", "m0001": "did not find you", "m0002": "could not accept the permission"} {
		var task map[string]any
		target.call("GET", "/fhir/Task/"+tasks[id], testAdmin, nil, &task)
		bs, _ := task["businessStatus"].(map[string]any)
		switch {
		case reason == "" && (task["status"] != "completed" || !strings.Contains(fmt.Sprint(bs["text"]), "has been copied")):
			t.Errorf("Task of %s: %v %v", id, task["status"], bs)
		case reason != "" && (task["status"] != "failed" || !strings.Contains(fmt.Sprint(bs["text"]), reason)):
			t.Errorf("Task of %s: %v %v", id, task["status"], bs)
		}
		if out := fmt.Sprint(task["output"]); !strings.Contains(out, "bulk job") {
			t.Errorf("Task of %s has no attempt line: %s", id, out)
		}
	}

	// Listed, and no longer stoppable.
	var jobs map[string]any
	if code := target.call("GET", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid), testBackoffice, nil, &jobs); code != 200 || len(jobs["bulkJobs"].([]any)) != 1 {
		t.Fatalf("list: %d %v", code, jobs)
	}
	if code := target.call("POST", path+"/stop", testBackoffice, nil, nil); code != 409 {
		t.Errorf("stop of an ended job: %d", code)
	}

	// A second pull asks only for what changed since the first
	// (_since = its transactionTime) and writes nothing again.
	var again []any
	for _, e := range list {
		if e := e.(map[string]any); outcome[e["patientId"].(string)] == "matched" && e["taskId"] == nil && len(again) < 3 {
			again = append(again, e)
		}
	}
	path2 := startBulk(t, target, pid, map[string]any{"members": again})
	st2 := waitBulk(t, target, path2, 2*time.Minute)
	if st2["batchStatus"] != "COMPLETED" || st2["since"] != st["transactionTime"] {
		t.Fatalf("second pull: since %v, first transactionTime %v: %v", st2["since"], st["transactionTime"], st2)
	}
	if p := st2["progress"].(map[string]any); p["versionsWritten"].(float64) != 0 {
		t.Errorf("the second pull wrote %v versions", p["versionsWritten"])
	}
}

// TestBulkJobRequestRefusals: every bad bulk job request is refused with
// 400 (409 for a definition without system access), each problem named
// under its field, and nothing is started.
func TestBulkJobRequestRefusals(t *testing.T) {
	t.Parallel()
	p := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey)
	var created map[string]any
	if st := p.call("POST", "/api/oidc_servers", testAdmin, map[string]any{"name": "Old Payer", "issuer": "http://127.0.0.1:1", "clientId": "x",
		"fhirEndpoint": "http://127.0.0.1:1/fhir", "systemClientId": "new-payer", "systemScopes": "system/*.rs"}, &created); st != 201 {
		t.Fatalf("definition: %d %v", st, created)
	}
	pid := int64(created["pid"].(float64))
	var plain map[string]any
	p.call("POST", "/api/oidc_servers", testAdmin, map[string]any{"name": "Member tokens only", "issuer": "http://127.0.0.1:2", "clientId": "y",
		"fhirEndpoint": "http://127.0.0.1:1/fhir"}, &plain)
	p.call("PUT", "/fhir/Patient/m1", testAdmin, map[string]any{"resourceType": "Patient", "id": "m1"}, nil)
	p.call("PUT", "/fhir/Task/not-add-payer", testAdmin, map[string]any{"resourceType": "Task", "id": "not-add-payer", "status": "requested", "intent": "order"}, nil)
	good := func() map[string]any {
		return map[string]any{"patientId": "m1",
			"coverageToMatch": map[string]any{"resourceType": "Coverage", "status": "active", "subscriberId": "OLD-1",
				"beneficiary": map[string]any{"reference": "Patient/m1"}, "payor": []any{map[string]any{"display": "Old Payer"}}},
			"consent": hrexConsent("m1", "1234567893")}
	}
	with := func(k string, v any) map[string]any { m := good(); m[k] = v; return m }
	future := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	for _, c := range []struct {
		name   string
		pid    int64
		body   any
		status int
		field  string
	}{
		{"no members", pid, map[string]any{}, 400, "members"},
		{"members and a Group", pid, map[string]any{"members": []any{good()}, "groupId": "g"}, 400, "groupId"},
		{"unknown Group", pid, map[string]any{"groupId": "g"}, 400, "groupId"},
		{"since not an instant", pid, map[string]any{"members": []any{good()}, "since": "last year"}, 400, "since"},
		{"since in the future", pid, map[string]any{"members": []any{good()}, "since": future}, 400, "since"},
		{"unknown member", pid, map[string]any{"members": []any{with("patientId", "m2")}}, 400, "members[0].patientId"},
		{"member twice", pid, map[string]any{"members": []any{good(), good()}}, 400, "members[1].patientId"},
		{"coverage of another type", pid, map[string]any{"members": []any{with("coverageToMatch", map[string]any{"resourceType": "Patient"})}}, 400, "members[0].coverageToMatch"},
		{"no consent", pid, map[string]any{"members": []any{with("consent", nil)}}, 400, "members[0].consent"},
		// Not valid FHIR R4: the old payer could not use them.
		{"coverage without status, beneficiary and payor", pid, map[string]any{"members": []any{with("coverageToMatch", map[string]any{"resourceType": "Coverage", "subscriberId": "OLD-1"})}}, 400, "members[0].coverageToMatch:is not a valid FHIR R4 Coverage"},
		{"coverage to link with an element R4 does not have", pid, map[string]any{"members": []any{with("coverageToLink", map[string]any{"resourceType": "Coverage", "status": "active",
			"beneficiary": map[string]any{"reference": "Patient/m1"}, "payor": []any{map[string]any{"display": "Us"}}, "colour": "blue"})}}, 400, "members[0].coverageToLink:is not a valid FHIR R4 Coverage"},
		{"consent with a status R4 does not have", pid, map[string]any{"members": []any{with("consent", map[string]any{"resourceType": "Consent", "status": "on",
			"scope": map[string]any{"text": "x"}, "category": []any{map[string]any{"text": "x"}}})}}, 400, "members[0].consent:is not a valid FHIR R4 Consent"},
		{"a bare consent", pid, map[string]any{"members": []any{with("consent", map[string]any{"resourceType": "Consent"})}}, 400, "members[0].consent:is not a valid FHIR R4 Consent"},
		{"not an add-payer Task", pid, map[string]any{"members": []any{with("taskId", "not-add-payer")}}, 400, "members[0].taskId"},
		{"unknown field", pid, map[string]any{"members": []any{good()}, "sincee": "x"}, 400, "sincee"},
		{"no system access", int64(plain["pid"].(float64)), map[string]any{"members": []any{good()}}, 409, "systemClientId"},
	} {
		var out map[string]any
		st := p.call("POST", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", c.pid), testBackoffice, c.body, &out)
		field, why, _ := strings.Cut(c.field, ":")
		e, _ := out["error"].(map[string]any)
		fields, _ := e["fields"].(map[string]any)
		if st != c.status || !strings.Contains(fmt.Sprint(out), field) || why != "" && !strings.HasPrefix(fmt.Sprint(fields[field]), why) {
			t.Errorf("%s: %d %v; want %d naming %s", c.name, st, out, c.status, c.field)
		}
		if why != "" && len(fields) != 1 {
			t.Errorf("%s: fields %v; want only %s (the rest of the request is good)", c.name, fields, field)
		}
	}
	var list map[string]any
	if st := p.call("GET", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid), testBackoffice, nil, &list); st != 200 || len(list["bulkJobs"].([]any)) != 0 {
		t.Errorf("jobs after refusals: %d %v", st, list)
	}
	if st := p.call("GET", fmt.Sprintf("/api/oidc_servers/%d/bulk_job/1", pid), testBackoffice, nil, nil); st != 404 {
		t.Errorf("an unknown job: %d", st)
	}
	if st := p.call("POST", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", pid), "", map[string]any{"members": []any{good()}}, nil); st != 401 {
		t.Errorf("no token: %d", st)
	}
}
