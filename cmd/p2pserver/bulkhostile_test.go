package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// targetHolds reports whether the target holds a resource ingested from
// the source URL src (its meta.source).
func targetHolds(t *testing.T, target *payer, typ, src string) bool {
	t.Helper()
	found := false
	err := target.app.store.View(context.Background(), func(tx *store.Tx) error {
		tx.ScanCurrent(typ, "", func(_ string, _ time.Time, raw []byte) bool {
			var r struct {
				Meta struct {
					Source string `json:"source"`
				} `json:"meta"`
			}
			_ = json.Unmarshal(raw, &r)
			found = r.Meta.Source == src
			return !found
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// bulkMembers reads every member outcome of a bulk job, by our Patient id.
func bulkMembers(t *testing.T, p *payer, path string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	next := path + "/members?count=100"
	for next != "" {
		var page map[string]any
		if code := p.call("GET", next, testBackoffice, nil, &page); code != 200 {
			t.Fatalf("GET %s: %d %v", next, code, page)
		}
		for _, m := range page["members"].([]any) {
			m := m.(map[string]any)
			out[m["patientId"].(string)] = m
		}
		next, _ = page["next"].(string)
	}
	return out
}

// TestBulkExchangeIngestsOnlyTheMatchedConsentingMembersData: whatever an
// old payer's export files hold, the new payer keeps exactly the data of
// the members it matched with their consent in force (PDex STU 2.1
// payer-to-payer exchange: data of members who opted in, and of them
// only). Each row is a line a hostile or careless old payer adds to its
// files, or a member it reports in its error file; none of it may reach
// the new payer, and the matched member's data still does. The member
// rows are the $bulk-member-match outcomes of PDex STU 2.1
// (pdex-parameters-multi-member-match-bundle-out): matched, not matched,
// and consent-constrained for a consent that names another payer,
// denies, or has ended.
func TestBulkExchangeIngestsOnlyTheMatchedConsentingMembersData(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 6)
	src := fp.source.URL + "/fhir"
	ms := fp.members
	// m0 matched; m1 matched but reported in the error file as left out;
	// m2 consent for another payer; m3 a denying consent; m4 a coverage
	// the old payer does not know; m5 not asked for; m6 (m5's data, under
	// another id at the target) an ended consent.
	deny := hrexConsent("m0003", newPayerNPI)
	deny["provision"].(map[string]any)["type"] = "deny"
	ended := hrexConsent("m0006", newPayerNPI)
	ended["provision"].(map[string]any)["period"] = map[string]any{"start": "2020-01-01", "end": "2021-01-01"}
	m6 := *ms[5]
	m6.n = 6
	createMembers(t, fp.target.payer, []*bulkMemberFixture{&m6})
	withConsent := func(req map[string]any, c map[string]any) map[string]any { req["consent"] = c; return req }
	list := []any{
		memberRequest(ms[0], ms[0].coverage, newPayerNPI),
		memberRequest(ms[1], ms[1].coverage, newPayerNPI),
		memberRequest(ms[2], ms[2].coverage, otherPayerNPI),
		withConsent(memberRequest(ms[3], ms[3].coverage, newPayerNPI), deny),
		memberRequest(ms[4], "WRONG-"+ms[4].coverage, newPayerNPI),
		withConsent(memberRequest(&m6, ms[5].coverage, newPayerNPI), ended),
	}
	wantOutcome := map[string]string{"m0000": "matched", "m0001": "consentConstrained", "m0002": "consentConstrained",
		"m0003": "consentConstrained", "m0004": "notMatched", "m0006": "consentConstrained"}

	condition := func(id, patient string) string {
		return `{"resourceType":"Condition","id":"` + id + `","subject":{"reference":"Patient/` + patient + `"},"code":{"text":"a diagnosis the member did not agree to share"}}`
	}
	rows := []struct {
		name string
		file string // the type of the file it is added to
		typ  string // its resourceType
		id   string
		line string
	}{
		{"a Condition of a member whose consent names another payer", "Condition", "Condition", "leak-other-payer", condition("leak-other-payer", ms[2].source)},
		{"a Condition of a member whose consent denies", "Condition", "Condition", "leak-deny", condition("leak-deny", ms[3].source)},
		{"a Condition of a member whose consent has ended", "Condition", "Condition", "leak-ended", condition("leak-ended", ms[5].source)},
		{"a Condition of a member the old payer did not match", "Condition", "Condition", "leak-unmatched", condition("leak-unmatched", ms[4].source)},
		{"the Patient of a consent-constrained member", "Patient", "Patient", ms[2].source,
			`{"resourceType":"Patient","id":"` + ms[2].source + `","name":[{"family":"` + ms[2].family + `"}],"gender":"` + ms[2].gender + `"}`},
		// Bulk Data Access STU 2, "Complete Status", output.type: "Each
		// file item SHALL contain resources of only one type".
		{"an Observation of the matched member in the Condition file", "Condition", "Observation", "wrong-file",
			`{"resourceType":"Observation","id":"wrong-file","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/` + ms[0].source + `"}}`},
		// Not payer-to-payer data: an add-payer Task would reach the
		// new payer's own Task workflow (and its emails).
		{"a Task, in a file of its own", "Task", "Task", "hostile-task",
			`{"resourceType":"Task","id":"hostile-task","status":"requested","intent":"order","for":{"reference":"Patient/` + ms[0].source + `"}}`},
		// Bulk Data Access STU 2 (NDJSON): each line a FHIR resource.
		{"a line that is not JSON", "Condition", "", "", `this is not ndjson`},
		{"a JSON array", "Condition", "", "", `[{"resourceType":"Condition"}]`},
		{"an object without resourceType", "Condition", "", "", `{"id":"no-type"}`},
		{"a type FHIR R4 does not have", "Condition", "", "", `{"resourceType":"Widget","id":"w"}`},
		{"a Condition of the matched member that is not valid FHIR R4", "Condition", "Condition", "bad-shape",
			`{"resourceType":"Condition","id":"bad-shape","subject":"Patient/` + ms[0].source + `"}`},
	}
	added := map[string][]string{}
	for _, r := range rows {
		added[r.file] = append(added[r.file], r.line)
	}
	// The error file reports m1 as left out (suppressed: its consent no
	// longer holds), while the data files still carry m1's data.
	errLine := `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"suppressed","diagnostics":"the member's consent was revoked","expression":["Patient/` + ms[1].source + `"]}]}`

	var inject atomic.Bool
	inject.Store(true)
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if !inject.Load() || r.Method != "GET" {
			return false
		}
		switch {
		case strings.HasSuffix(r.URL.Path, "/hostile/Task.ndjson"):
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			_, _ = w.Write([]byte(strings.Join(added["Task"], "\n") + "\n"))
			return true
		case strings.HasSuffix(r.URL.Path, "/hostile/errors.ndjson"):
			w.Header().Set("Content-Type", "application/fhir+ndjson")
			_, _ = w.Write([]byte(errLine + "\n"))
			return true
		case strings.Contains(r.URL.Path, "/bulkstatus/") && fp.traffic.get(func() int { return fp.traffic.statusOfKind(r.URL.Path) }) == 2:
			fp.answerEditedJSON(w, r, func(m map[string]any) {
				out, _ := m["output"].([]any)
				m["output"] = append(out, map[string]any{"type": "Task", "url": src + "/hostile/Task.ndjson"})
				errs, _ := m["error"].([]any)
				m["error"] = append(errs, map[string]any{"type": "OperationOutcome", "url": src + "/hostile/errors.ndjson"})
			})
			return true
		case strings.Contains(r.URL.Path, "/bulkfiles/"):
			fp.answerEdited(w, r, func(body []byte) []byte {
				var head struct {
					ResourceType string `json:"resourceType"`
				}
				first, _, _ := bytes.Cut(body, []byte("\n"))
				_ = json.Unmarshal(first, &head)
				if len(added[head.ResourceType]) == 0 || head.ResourceType == "Task" {
					return body
				}
				return append(bytes.Clone(body), []byte(strings.Join(added[head.ResourceType], "\n")+"\n")...)
			})
			return true
		}
		return false
	}

	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": list})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	inject.Store(false)
	if st["batchStatus"] != "COMPLETED" {
		t.Fatalf("job: %v", st)
	}
	got := bulkMembers(t, fp.target.payer, path)
	for id, want := range wantOutcome {
		m := got[id]
		if m["outcome"] != want {
			t.Errorf("%s: outcome %v, want %s (%v)", id, m["outcome"], want, m)
		}
		if n := m["resourcesWritten"].(float64); (want == "matched") != (n > 0) {
			t.Errorf("%s (%s): %v resources written", id, want, n)
		}
	}
	counts := st["members"].(map[string]any)
	if counts["total"] != 6.0 || counts["matched"] != 1.0 || counts["notMatched"] != 1.0 || counts["consentConstrained"] != 4.0 {
		t.Errorf("member counts: %v", counts)
	}
	for _, r := range rows {
		if r.typ != "" && targetHolds(t, fp.target.payer, r.typ, src+"/"+r.typ+"/"+r.id) {
			t.Errorf("%s: ingested", r.name)
		}
	}
	if targetHolds(t, fp.target.payer, "Patient", src+"/Patient/"+ms[1].source) {
		t.Errorf("the Patient of the member the error file reports as left out: ingested")
	}
	if !targetHolds(t, fp.target.payer, "Patient", src+"/Patient/"+ms[0].source) {
		t.Errorf("the matched member's Patient was not ingested")
	}
	fromOld := 0
	for s := range everythingSources(t, fp.target.payer, "m0000") {
		if strings.HasPrefix(s, fp.source.URL) {
			fromOld++
		}
	}
	if float64(fromOld) != got["m0000"]["resourcesWritten"].(float64) {
		t.Errorf("the matched member's $everything shows %d resources of the old payer; %v were written for them", fromOld, got["m0000"]["resourcesWritten"])
	}
	for _, id := range []string{"m0001", "m0002", "m0003", "m0004", "m0006"} {
		for s := range everythingSources(t, fp.target.payer, id) {
			if strings.HasPrefix(s, fp.source.URL) {
				t.Errorf("%s ($everything) shows %s", id, s)
			}
		}
	}
	p := st["progress"].(map[string]any)
	if p["resourcesRejected"].(float64) < float64(len(rows)) {
		t.Errorf("resourcesRejected %v, want at least %d: %v", p["resourcesRejected"], len(rows), p["errorNotes"])
	}
	t.Logf("%v resources, notes %v", st["resourcesWritten"], p["errorNotes"])
	if strings.Contains(fmt.Sprint(p["resourcesByType"]), "Task") {
		t.Errorf("resourcesByType counts a Task: %v", p["resourcesByType"])
	}
}

// TestBulkExchangeRedirectsAndOtherOrigins: the new payer's token goes to
// the old payer's origin only (SMART Backend Services: the access token
// is for that server; Bulk Data Access STU 2, "File Request": the token
// is sent when requiresAccessToken is true). A redirect to another
// origin, or a redirect loop, is the old payer's answer, not a network
// fault: the job fails at once, saying so, rather than retrying it for
// -bulk-retry-for; and a manifest whose files are elsewhere with
// requiresAccessToken false is fetched without the token.
func TestBulkExchangeRedirectsAndOtherOrigins(t *testing.T) {
	t.Parallel()
	rows := []struct {
		name string
		// answer may answer a request of the old payer instead (kind: 1
		// for a match status poll, 2 for an export status poll, 3 for the
		// match result file, 4 for an export file), other being the other
		// origin's URL.
		answer func(fp *faultPair, other string, kind int, w http.ResponseWriter, r *http.Request) bool
		status string // the job's end
		reason string // in its failureReason
	}{
		{"the $bulk-member-match status redirects to itself", func(_ *faultPair, _ string, kind int, w http.ResponseWriter, r *http.Request) bool {
			if kind != 1 {
				return false
			}
			http.Redirect(w, r, r.URL.Path, http.StatusFound)
			return true
		}, "FAILED", "redirect"},
		{"the export status redirects to another origin", func(_ *faultPair, other string, kind int, w http.ResponseWriter, r *http.Request) bool {
			if kind != 2 {
				return false
			}
			http.Redirect(w, r, other+r.URL.Path, http.StatusTemporaryRedirect)
			return true
		}, "FAILED", "another origin"},
		{"the $bulk-member-match result file redirects to another origin", func(_ *faultPair, other string, kind int, w http.ResponseWriter, r *http.Request) bool {
			if kind != 3 {
				return false
			}
			http.Redirect(w, r, other+r.URL.Path, http.StatusFound)
			return true
		}, "FAILED", "another origin"},
		{"an export file redirects to another origin", func(_ *faultPair, other string, kind int, w http.ResponseWriter, r *http.Request) bool {
			if kind != 4 {
				return false
			}
			http.Redirect(w, r, other+r.URL.Path, http.StatusFound)
			return true
		}, "FAILED", "another origin"},
		{"requiresAccessToken false, the files on another origin", func(fp *faultPair, other string, kind int, w http.ResponseWriter, r *http.Request) bool {
			if kind != 2 {
				return false
			}
			fp.answerEditedJSON(w, r, func(m map[string]any) {
				m["requiresAccessToken"] = false
				for _, o := range m["output"].([]any) {
					o := o.(map[string]any)
					o["url"] = other + urlPath(o["url"].(string))
				}
			})
			return true
		}, "COMPLETED", ""},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			fp := newFaultPair(t, 1, "-bulk-retry-for", "1h")
			var seen, withToken atomic.Int64
			other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen.Add(1)
				if r.Header.Get("Authorization") != "" {
					withToken.Add(1)
				}
				w.Header().Set("Content-Type", "application/fhir+ndjson")
			}))
			defer other.Close()
			fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
				kind := 0
				switch {
				case strings.Contains(r.URL.Path, "/bulkstatus/"):
					kind = fp.traffic.get(func() int { return fp.traffic.statusOfKind(r.URL.Path) })
				case strings.Contains(r.URL.Path, "/bulkfiles/") && strings.Contains(r.URL.Path, "/Parameters-"):
					kind = 3
				case strings.Contains(r.URL.Path, "/bulkfiles/"):
					kind = 4
				}
				return r.Method == "GET" && kind > 0 && row.answer(fp, other.URL, kind, w, r)
			}
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
			st := waitBulk(t, fp.target.payer, path, time.Minute)
			reason, _ := st["failureReason"].(string)
			if st["batchStatus"] != row.status || !strings.Contains(reason, row.reason) {
				t.Fatalf("job: %v, want %s with %q", st, row.status, row.reason)
			}
			if p := st["progress"].(map[string]any); row.status == "FAILED" && p["retries"].(float64) != 0 {
				t.Errorf("the refused redirect was retried %v times", p["retries"])
			}
			if withToken.Load() != 0 {
				t.Errorf("the other origin was sent the token %d times", withToken.Load())
			}
			t.Logf("other origin: %d requests; reason %q", seen.Load(), reason)
		})
	}
}

// TestBulkJobStopCancelsTheOldPayersRequest: POST .../stop ends a bulk
// job STOPPED in whatever phase it stands, without waiting for the old
// payer (a held poll, a stalled file), and cancels the request it had
// open there (Bulk Data Access STU 2, "Delete a Bulk Data Request": a
// DELETE on the status URL), so that the old payer stops preparing files
// for nobody. The member's add-payer Task stays open, the attempt noted.
func TestBulkJobStopCancelsTheOldPayersRequest(t *testing.T) {
	t.Parallel()
	rows := []struct {
		phase string
		hold  func(tr *sourceTraffic)
		held  func(tr *sourceTraffic) bool
		kind  string // of the status URL cancelled
	}{
		{"matching", func(tr *sourceTraffic) { tr.holdMatch.Store(true) },
			func(tr *sourceTraffic) bool { return tr.get(func() int { return tr.polls["match"] }) > 0 }, "match"},
		{"exporting", func(tr *sourceTraffic) { tr.holdExprt.Store(true) },
			func(tr *sourceTraffic) bool { return tr.get(func() int { return tr.polls["export"] }) > 0 }, "export"},
		{"downloading", func(tr *sourceTraffic) { tr.stallAt = 30 },
			func(tr *sourceTraffic) bool {
				select {
				case <-tr.stalled:
					return true
				default:
					return false
				}
			}, "export"},
	}
	for _, row := range rows {
		t.Run(row.phase, func(t *testing.T) {
			t.Parallel()
			fp := newFaultPair(t, 1)
			tr := fp.traffic
			row.hold(tr)
			deleted := map[string]bool{}
			tr.then = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == "DELETE" && strings.Contains(r.URL.Path, "/bulkstatus/") {
					tr.count(func() { deleted[tr.statusOf[r.URL.Path]] = true })
				}
				return false
			}
			var task map[string]any
			if st := fp.target.call("POST", "/fhir/Task", testAdmin, addPayerTask("m0000", "m0000@example.org"), &task); st != 201 {
				t.Fatalf("Task: %d %v", st, task)
			}
			list := []any{memberRequest(fp.members[0], fp.members[0].coverage, newPayerNPI)}
			list[0].(map[string]any)["taskId"] = task["id"]
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": list})
			waitFor(t, "the job held in "+row.phase, func() bool { return row.held(tr) })
			var stopped map[string]any
			if code := fp.target.call("POST", path+"/stop", testBackoffice, nil, &stopped); code != 202 {
				t.Fatalf("stop: %d %v", code, stopped)
			}
			st := waitBulk(t, fp.target.payer, path, time.Minute)
			if st["batchStatus"] != "STOPPED" || st["phase"] != row.phase || st["endTime"] == nil {
				t.Errorf("job: %v", st)
			}
			tr.count(func() {
				if !deleted[row.kind] {
					t.Errorf("the old payer's %s request was not cancelled (DELETE of its status URL); deleted: %v", row.kind, deleted)
				}
			})
			var after map[string]any
			fp.target.call("GET", "/fhir/Task/"+task["id"].(string), testAdmin, nil, &after)
			if after["status"] == "completed" || after["status"] == "failed" || !strings.Contains(fmt.Sprint(after["output"]), "STOPPED") {
				t.Errorf("Task after the stop: %v %v", after["status"], after["output"])
			}
			if code := fp.target.call("POST", path+"/stop", testBackoffice, nil, nil); code != 409 {
				t.Errorf("a second stop: %d, want 409", code)
			}
		})
	}
}

// TestBulkExchangeChunksAreBoundedInBytes: a chunk of an export file is
// -bulk-chunk lines or fewer when its lines are large, so that an old
// payer's file of large resources (each within Bulk Data's NDJSON, up to
// 64 MiB a line) cannot make the new payer hold -bulk-chunk of them at
// once (and, killed for it, start again on the same file after every
// restart). Here 24 Observations of 900 kB each (a FHIR string holds up
// to 1 MB) are ingested, with -bulk-chunk 1000, in chunks of at most
// 16 MiB: no Provenance (one a chunk) names more than 18 of them.
func TestBulkExchangeChunksAreBoundedInBytes(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 1, "-bulk-chunk", "1000")
	src := fp.source.URL + "/fhir"
	big := strings.Repeat("x", 900_000)
	var lines []string
	for i := range 24 {
		lines = append(lines, fmt.Sprintf(`{"resourceType":"Observation","id":"big-%02d","status":"final","code":{"text":"a long note"},"subject":{"reference":"Patient/%s"},"valueString":"%s"}`, i, fp.members[0].source, big))
	}
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.Contains(r.URL.Path, "/bulkfiles/") || !strings.Contains(r.URL.Path, "/Observation-") {
			return false
		}
		fp.answerEdited(w, r, func(body []byte) []byte {
			return append(bytes.Clone(body), strings.Join(lines, "\n")+"\n"...)
		})
		return true
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if st["batchStatus"] != "COMPLETED" {
		t.Fatalf("job: %v", st)
	}
	for i := range 24 {
		if !targetHolds(t, fp.target.payer, "Observation", fmt.Sprintf("%s/Observation/big-%02d", src, i)) {
			t.Fatalf("Observation/big-%02d was not ingested", i)
		}
	}
	most := 0
	err := fp.target.app.store.View(context.Background(), func(tx *store.Tx) error {
		for _, id := range st["progress"].(map[string]any)["provenanceIds"].([]any) {
			v, err := tx.Read("Provenance", id.(string))
			if err != nil {
				return err
			}
			var p struct {
				Target []struct {
					Reference string `json:"reference"`
				} `json:"target"`
			}
			_ = json.Unmarshal(v.JSON, &p)
			n := 0
			for _, tg := range p.Target {
				typ, lid, _ := strings.Cut(tg.Reference, "/")
				if typ != "Observation" {
					continue
				}
				if r, err := tx.Read(typ, lid); err == nil && bytes.Contains(r.JSON, []byte(`/Observation/big-`)) {
					n++
				}
			}
			most = max(most, n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if most > 18 {
		t.Errorf("one chunk held %d of the 900 kB Observations", most)
	}
	t.Logf("at most %d large Observations a chunk; %v chunks", most, st["progress"].(map[string]any)["chunks"])
}

// TestBulkExchangeNeverShowsTheTokenTheOldPayerEchoes: an old payer's
// answer may quote the request it refuses, Authorization header and all.
// What the new payer shows of it (failureReason, errorNotes) never holds
// its access token at the old payer, in whole or in part (SMART Backend Services: the token is
// a bearer credential; whoever reads the job's status must not be able to
// use it).
func TestBulkExchangeNeverShowsTheTokenTheOldPayerEchoes(t *testing.T) {
	t.Parallel()
	echo := func(w http.ResponseWriter, r *http.Request, status int) {
		w.Header().Set("Content-Type", "application/fhir+json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"resourceType": "OperationOutcome", "issue": []any{map[string]any{
			"severity": "error", "code": "processing", "diagnostics": "refused the request with Authorization: " + r.Header.Get("Authorization")}}})
	}
	rows := []struct {
		name   string
		answer func(fp *faultPair, w http.ResponseWriter, r *http.Request) bool
		status string
	}{
		{"the export kick-off answers 400 quoting the request", func(_ *faultPair, w http.ResponseWriter, r *http.Request) bool {
			if !strings.HasSuffix(r.URL.Path, "/$davinci-data-export") {
				return false
			}
			echo(w, r, http.StatusBadRequest)
			return true
		}, "FAILED"},
		{"the match status answers 503 quoting the request until -bulk-retry-for", func(fp *faultPair, w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/bulkstatus/") {
				return false
			}
			echo(w, r, http.StatusServiceUnavailable)
			return true
		}, "FAILED"},
		{"an error file quotes the request", func(fp *faultPair, w http.ResponseWriter, r *http.Request) bool {
			switch {
			case strings.HasSuffix(r.URL.Path, "/hostile/errors.ndjson"):
				w.Header().Set("Content-Type", "application/fhir+ndjson")
				_, _ = fmt.Fprintf(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"could not read with Authorization: %s"}]}`+"\n", r.Header.Get("Authorization"))
				return true
			case strings.Contains(r.URL.Path, "/bulkstatus/") && fp.traffic.get(func() int { return fp.traffic.statusOfKind(r.URL.Path) }) == 2:
				fp.answerEditedJSON(w, r, func(m map[string]any) {
					m["error"] = []any{map[string]any{"type": "OperationOutcome", "url": fp.source.URL + "/fhir/hostile/errors.ndjson"}}
				})
				return true
			}
			return false
		}, "COMPLETED"},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			fp := newFaultPair(t, 1, "-bulk-retry-for", "2s")
			tokens := map[string]bool{}
			fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
				if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
					fp.traffic.count(func() { tokens[tok] = true })
				}
				return row.answer(fp, w, r)
			}
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
			st := waitBulk(t, fp.target.payer, path, time.Minute)
			if st["batchStatus"] != row.status {
				t.Fatalf("job: %v", st)
			}
			var raw json.RawMessage
			fp.target.call("GET", path, testBackoffice, nil, &raw)
			var list json.RawMessage
			fp.target.call("GET", strings.TrimSuffix(path, path[strings.LastIndex(path, "/"):]), testBackoffice, nil, &list)
			fp.traffic.count(func() {
				if len(tokens) == 0 {
					t.Fatal("the old payer saw no token")
				}
				for tok := range tokens {
					// In whole or in part: a message clipped to its first
					// hundreds of bytes would still show an opaque token.
					part := tok[:min(len(tok), 32)]
					if strings.Contains(string(raw), part) || strings.Contains(string(list), part) {
						t.Errorf("the job's status shows the access token: %s", raw)
					}
				}
			})
			t.Logf("failureReason %v; notes %v", st["failureReason"], st["progress"].(map[string]any)["errorNotes"])
		})
	}
}

// TestBulkExchangeOneSourcePatientForTwoMembers: an old payer's
// $bulk-member-match result (PDex STU 2.1 MatchedMembers Group) that names
// the same Patient of its own for two of the new payer's members cannot
// say whose data it is: neither member is matched, and none of that
// Patient's data is ingested, rather than one member's record receiving
// the other's (or a stranger's) data.
func TestBulkExchangeOneSourcePatientForTwoMembers(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 2)
	var rewrote atomic.Bool
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.Contains(r.URL.Path, "/bulkfiles/") || !strings.Contains(r.URL.Path, "/Parameters-") {
			return false
		}
		rec := httptest.NewRecorder()
		fp.source.h.ServeHTTP(rec, r)
		var p map[string]any
		if err := json.Unmarshal(bytes.TrimSpace(rec.Body.Bytes()), &p); err != nil {
			panic(err)
		}
		for _, pa := range p["parameter"].([]any) {
			g, _ := pa.(map[string]any)["resource"].(map[string]any)
			members, _ := g["member"].([]any)
			if !strings.Contains(fmt.Sprint(g["code"]), "match") || strings.Contains(fmt.Sprint(g["code"]), "nomatch") || len(members) != 2 {
				continue
			}
			first := members[0].(map[string]any)["entity"].(map[string]any)["reference"]
			members[1].(map[string]any)["entity"].(map[string]any)["reference"] = first
			rewrote.Store(true)
		}
		body, _ := json.Marshal(p)
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		_, _ = w.Write(append(body, '\n'))
		return true
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if !rewrote.Load() {
		t.Fatal("the match result was not rewritten")
	}
	got := bulkMembers(t, fp.target.payer, path)
	for _, id := range []string{"m0000", "m0001"} {
		if m := got[id]; m["outcome"] != "notMatched" || m["resourcesWritten"] != 0.0 || !strings.Contains(fmt.Sprint(m["note"]), "same Patient") {
			t.Errorf("%s: %v", id, m)
		}
	}
	for _, m := range fp.members {
		if targetHolds(t, fp.target.payer, "Patient", fp.source.URL+"/fhir/Patient/"+m.source) {
			t.Errorf("Patient/%s of the old payer was ingested", m.source)
		}
	}
	if st["batchStatus"] != "COMPLETED" || st["members"].(map[string]any)["matched"] != 0.0 {
		t.Errorf("job: %v", st)
	}
}

// TestBulkExchangeSourceThatNeverFinishes: an old payer whose status URL
// answers 202 (in progress) for ever (Bulk Data Access STU 2, "Bulk Data
// Status Request" sets no limit) would hold a job STARTED for ever. Past
// -bulk-wait-for the job fails, saying what it waited for and how long,
// and cancels the request at the old payer (DELETE of the status URL).
func TestBulkExchangeSourceThatNeverFinishes(t *testing.T) {
	t.Parallel()
	for _, row := range []struct {
		kind, phase, what string
		hold              func(tr *sourceTraffic)
	}{
		{"match", "matching", "$bulk-member-match", func(tr *sourceTraffic) { tr.holdMatch.Store(true) }},
		{"export", "exporting", "$davinci-data-export", func(tr *sourceTraffic) { tr.holdExprt.Store(true) }},
	} {
		t.Run(row.phase, func(t *testing.T) {
			t.Parallel()
			fp := newFaultPair(t, 1, "-bulk-wait-for", "2s")
			tr := fp.traffic
			row.hold(tr)
			deleted := map[string]bool{}
			tr.then = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method == "DELETE" && strings.Contains(r.URL.Path, "/bulkstatus/") {
					tr.count(func() { deleted[tr.statusOf[r.URL.Path]] = true })
				}
				return false
			}
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
			st := waitBulk(t, fp.target.payer, path, time.Minute)
			reason, _ := st["failureReason"].(string)
			if st["batchStatus"] != "FAILED" || st["phase"] != row.phase || !strings.Contains(reason, row.what) || !strings.Contains(reason, "-bulk-wait-for") {
				t.Fatalf("job: %v", st)
			}
			tr.count(func() {
				if !deleted[row.kind] {
					t.Errorf("the old payer's %s request was not cancelled; deleted: %v", row.kind, deleted)
				}
			})
		})
	}
}

// TestBulkExchangeTransactionTimeFromTheFuture: the manifest's
// transactionTime is "the server's time when the query is run" (Bulk Data
// Access STU 2, "Complete Status"), and the member's next pull asks for
// what changed since it (PDex STU 2.1 concurrent coverage). An old payer
// whose clock (or manifest) says 2999 would make every later pull ask for
// nothing: the time kept is never later than the new payer's own clock.
func TestBulkExchangeTransactionTimeFromTheFuture(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 1)
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.Contains(r.URL.Path, "/bulkstatus/") || fp.traffic.get(func() int { return fp.traffic.statusOfKind(r.URL.Path) }) != 2 {
			return false
		}
		fp.answerEditedJSON(w, r, func(m map[string]any) { m["transactionTime"] = "2999-01-01T00:00:00Z" })
		return true
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	tt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(st["transactionTime"]))
	if st["batchStatus"] != "COMPLETED" || err != nil || tt.After(time.Now()) {
		t.Fatalf("job: %v", st)
	}
	// The next pull's _since is that time, not 2999.
	path2 := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	st2 := waitBulk(t, fp.target.payer, path2, 2*time.Minute)
	if st2["since"] != st["transactionTime"] {
		t.Errorf("second pull since %v, first transactionTime %v", st2["since"], st["transactionTime"])
	}
}
