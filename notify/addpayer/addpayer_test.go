package addpayer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/fhir/workflow"
	"github.com/p2pserver/p2pserver/notify"
	"github.com/p2pserver/p2pserver/notify/addpayer"
)

// seedTask is the add-payer Task of the P2P module guide, filled in.
func seedTask(patient, org string) map[string]any {
	const body = `{
  "resourceType": "Task",
  "identifier": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "value": "PID-OID-2024-05-09T20:36:18Z"}],
  "status": "requested",
  "intent": "original-order",
  "priority": "routine",
  "code": {"coding": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "code": "p2p-request-add-provider-id", "display": "p2p-request-add-provider-id"}], "text": "Add Payer"},
  "authoredOn": "2024-05-09T20:36:18Z",
  "lastModified": "2024-05-09T20:36:18Z",
  "requester": {"reference": "Patient/PID", "type": "Patient"},
  "owner": {"reference": "Organization/OID"},
  "input": [
    {"type": {"coding": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "code": "requester-first-name", "display": "display"}], "text": "Angelic"}, "valueString": "Angelic"},
    {"type": {"coding": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "code": "requester-last-name", "display": "display"}], "text": "Mueller"}, "valueString": "Mueller"},
    {"type": {"coding": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "code": "new-payer-name", "display": "display"}], "text": "Acme Health Plan"}, "valueString": "Acme Health Plan"},
    {"type": {"coding": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "code": "requester-email", "display": "display"}], "text": "angelic@example.org"}, "valueString": "angelic@example.org"},
    {"type": {"coding": [{"system": "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes", "code": "requester-phone", "display": "1111111111"}], "text": "1111111111"}, "valueString": "1111111111"}
  ]
}`
	s := strings.ReplaceAll(strings.ReplaceAll(body, "PID", patient), "OID", org)
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		panic(err)
	}
	return m
}

func input(m map[string]any, i int) map[string]any { return m["input"].([]any)[i].(map[string]any) }

func TestCheckGivesEachProblemItsOwnMessage(t *testing.T) {
	if issues := addpayer.Check(seedTask("member-1", "PAYRB")); len(issues) != 0 {
		t.Fatalf("the guide's Task has problems: %v", issues)
	}
	cases := []struct {
		name   string
		change func(m map[string]any)
		path   string
		want   string
	}{
		{"no identifier", func(m map[string]any) { delete(m, "identifier") }, "Task.identifier", "an identifier with system"},
		{"identifier of another system", func(m map[string]any) {
			m["identifier"] = []any{map[string]any{"system": "urn:other", "value": "x"}}
		}, "Task.identifier", "an identifier with system"},
		{"identifier of another member", func(m map[string]any) {
			m["identifier"].([]any)[0].(map[string]any)["value"] = "member-2-PAYRB-2024-05-09T20:36:18Z"
		}, "Task.identifier[0].value", `starting with "member-1-PAYRB-"`},
		{"identifier without date-time", func(m map[string]any) {
			m["identifier"].([]any)[0].(map[string]any)["value"] = "member-1-PAYRB-yesterday"
		}, "Task.identifier[0].value", "must end with the date-time"},
		{"intent", func(m map[string]any) { m["intent"] = "proposal" }, "Task.intent", "intent must be original-order"},
		{"requester not a Patient", func(m map[string]any) {
			m["requester"] = map[string]any{"reference": "Practitioner/p1"}
		}, "Task.requester.reference", "requester must reference a Patient"},
		{"requester type", func(m map[string]any) { m["requester"].(map[string]any)["type"] = "Practitioner" }, "Task.requester.type", "must be Patient"},
		{"no requester", func(m map[string]any) { delete(m, "requester") }, "Task.requester", "requester is required"},
		{"owner not an Organization", func(m map[string]any) {
			m["owner"] = map[string]any{"reference": "Patient/PAYRB"}
		}, "Task.owner.reference", "owner must reference a Organization"},
		{"no first name", func(m map[string]any) { m["input"] = slices.Delete(m["input"].([]any), 0, 1) }, "Task.input", "the input requester-first-name is missing"},
		{"empty last name", func(m map[string]any) { input(m, 1)["valueString"] = "  " }, "Task.input[1].valueString", "the input requester-last-name is empty"},
		{"payer name not a string", func(m map[string]any) {
			delete(input(m, 2), "valueString")
			input(m, 2)["valueInteger"] = 3
		}, "Task.input[2].valueString", "new-payer-name needs its value in valueString"},
		{"bad email", func(m map[string]any) { input(m, 3)["valueString"] = "angelic-at-example.org" }, "Task.input[3].valueString", `requester-email "angelic-at-example.org" is not a valid email address`},
		{"email without domain", func(m map[string]any) { input(m, 3)["valueString"] = "angelic@localhost" }, "Task.input[3].valueString", "is not a valid email address"},
		{"email with a name", func(m map[string]any) { input(m, 3)["valueString"] = "Angelic <angelic@example.org>" }, "Task.input[3].valueString", "is not a valid email address"},
		{"phone letters", func(m map[string]any) { input(m, 4)["valueString"] = "555-CALL-NOW" }, "Task.input[4].valueString", "must hold only digits"},
		{"phone too short", func(m map[string]any) { input(m, 4)["valueString"] = "12345" }, "Task.input[4].valueString", "has 5 digits"},
		{"line break", func(m map[string]any) { input(m, 2)["valueString"] = "Acme\r\nBcc: x@example.org" }, "Task.input[2].valueString", "one line of text"},
		{"twice", func(m map[string]any) { m["input"] = append(m["input"].([]any), input(m, 3)) }, "Task.input[5]", "requester-email is given more than once"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := seedTask("member-1", "PAYRB")
			c.change(m)
			issues := addpayer.Check(m)
			if len(issues) != 1 {
				t.Fatalf("%d issues, want 1: %v", len(issues), issues)
			}
			if issues[0].Path != c.path || !strings.Contains(issues[0].Message, c.want) {
				t.Errorf("issue %s: %q, want %s: ...%q...", issues[0].Path, issues[0].Message, c.path, c.want)
			}
		})
	}
	// The compact date-time form and a phone with separators are fine.
	m := seedTask("member-1", "PAYRB")
	m["identifier"].([]any)[0].(map[string]any)["value"] = "member-1-PAYRB-20240509203618"
	input(m, 4)["valueString"] = "+1 (555) 010-9999"
	if issues := addpayer.Check(m); len(issues) != 0 {
		t.Errorf("compact identifier date, formatted phone: %v", issues)
	}
}

// server is a FHIR server with the workflow and add-payer validators.
type server struct {
	t   *testing.T
	url string
	now time.Time
}

func newServer(t *testing.T) *server {
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, search.NewRegistry(spec.R4()), nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	h := httptest.NewServer(mux)
	s := &server{t: t, url: h.URL + "/fhir", now: time.Date(2024, 5, 9, 20, 0, 0, 0, time.UTC)}
	fs := fhir.New(st, fhir.Config{BaseURL: s.url})
	// A member's requests carry X-Member: the stand-in for the member
	// token the smart guard turns into the same fhir.Access.
	fs.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if p := r.Header.Get("X-Member"); p != "" {
				r = r.WithContext(fhir.WithAccess(r.Context(), &fhir.Access{Patient: p, Subject: "Patient/" + p}))
			}
			next.ServeHTTP(w, r)
		})
	})
	workflow.Register(fs, workflow.Options{Now: func() time.Time { return s.now }})
	addpayer.Register(fs)
	mux.Mount("/fhir", fs.Handler())
	t.Cleanup(func() { h.Close(); st.Close(); db.Close() })
	return s
}

func (s *server) do(method, path string, body map[string]any, member string) (int, map[string]any) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	req.Header.Set("Content-Type", "application/fhir+json")
	if member != "" {
		req.Header.Set("X-Member", member)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func diagnostics(oo map[string]any) []string {
	var out []string
	issues, _ := oo["issue"].([]any)
	for _, is := range issues {
		d, _ := is.(map[string]any)["diagnostics"].(string)
		out = append(out, d)
	}
	return out
}

func TestAddPayerTaskOverREST(t *testing.T) {
	s := newServer(t)
	// Every problem in one OperationOutcome.
	bad := seedTask("member-1", "PAYRB")
	bad["intent"] = "plan"
	input(bad, 3)["valueString"] = "not-an-address"
	input(bad, 4)["valueString"] = "call me"
	bad["owner"] = map[string]any{"reference": "Organization/"}
	status, oo := s.do("POST", "/Task", bad, "")
	if status != 422 {
		t.Fatalf("invalid Task: %d %v", status, oo)
	}
	if d := diagnostics(oo); len(d) != 4 {
		t.Errorf("want 4 issues (intent, owner, email, phone), got %q", d)
	}

	created := seedTask("member-1", "PAYRB")
	created["status"] = "accepted"
	if status, oo := s.do("POST", "/Task", created, ""); status != 422 || !strings.Contains(strings.Join(diagnostics(oo), " "), "a new add-payer request is requested") {
		t.Errorf("created accepted: %d %v", status, oo)
	}
	// A member token writes only what is in the member's compartment, so
	// the portal names the member in for as well.
	mine := seedTask("member-1", "PAYRB")
	mine["for"] = map[string]any{"reference": "Patient/member-1"}
	status, task := s.do("POST", "/Task", mine, "member-1")
	if status != 201 {
		t.Fatalf("the member's request: %d %v", status, task)
	}
	id := task["id"].(string)
	put := func(change func(m map[string]any), member string) (int, map[string]any) {
		_, cur := s.do("GET", "/Task/"+id, nil, "")
		change(cur)
		return s.do("PUT", "/Task/"+id, cur, member)
	}

	// The member may not accept their own request.
	if status, oo := put(func(m map[string]any) { m["status"] = "accepted" }, "member-1"); status != 403 {
		t.Errorf("member accepting: %d %v", status, oo)
	}
	if status, oo := put(func(m map[string]any) { m["status"] = "completed" }, ""); status != 422 ||
		!strings.Contains(strings.Join(diagnostics(oo), " "), "cannot go from requested to completed") {
		t.Errorf("requested -> completed: %d %v", status, oo)
	}
	if status, oo := put(func(m map[string]any) { delete(m, "code") }, ""); status != 422 {
		t.Errorf("code removed: %d %v", status, oo)
	}
	if status, oo := put(func(m map[string]any) {
		m["requester"] = map[string]any{"reference": "Patient/member-2"}
		m["identifier"].([]any)[0].(map[string]any)["value"] = "member-2-PAYRB-2024-05-09T20:36:18Z"
	}, ""); status != 422 || !strings.Contains(strings.Join(diagnostics(oo), " "), "cannot change") {
		t.Errorf("requester changed: %d %v", status, oo)
	}
	if status, oo := put(func(m map[string]any) { m["status"] = "accepted" }, ""); status != 200 {
		t.Fatalf("staff accepting: %d %v", status, oo)
	}
	if status, _ := put(func(m map[string]any) { m["status"] = "in-progress" }, ""); status != 200 {
		t.Fatalf("accepted -> in-progress: %d", status)
	}
	if status, oo := put(func(m map[string]any) { m["status"] = "failed" }, ""); status != 422 || !strings.Contains(strings.Join(diagnostics(oo), " "), "must say why") {
		t.Errorf("failed without a reason: %d %v", status, oo)
	}
	if status, oo := put(func(m map[string]any) {
		m["status"] = "failed"
		m["statusReason"] = map[string]any{"text": "the source payer did not answer"}
	}, ""); status != 200 {
		t.Errorf("failed with a reason: %d %v", status, oo)
	}

	// Another request, which the member cancels.
	// Created by staff, for is filled in, and the member may cancel it.
	_, t2 := s.do("POST", "/Task", seedTask("member-1", "PAYRC"), "")
	if f, _ := t2["for"].(map[string]any); f["reference"] != "Patient/member-1" {
		t.Errorf("for = %v, want the requester", t2["for"])
	}
	t2["status"] = "cancelled"
	if status, oo := s.do("PUT", "/Task/"+t2["id"].(string), t2, "member-1"); status != 200 {
		t.Errorf("member cancelling: %d %v", status, oo)
	}
	other := seedTask("member-1", "PAYRD")
	other["for"] = map[string]any{"reference": "Patient/member-9"}
	if status, oo := s.do("POST", "/Task", other, ""); status != 422 || !strings.Contains(strings.Join(diagnostics(oo), " "), "for must be the member who asked") {
		t.Errorf("for another patient: %d %v", status, oo)
	}
	// Other Tasks are not held to this shape.
	if status, oo := s.do("POST", "/Task", map[string]any{"resourceType": "Task", "status": "requested", "intent": "order"}, ""); status != 201 {
		t.Errorf("plain Task: %d %v", status, oo)
	}
}

func TestPortalAndAdminSearches(t *testing.T) {
	s := newServer(t)
	ids := map[string]string{}
	for _, c := range []struct{ key, patient, org string }{{"a", "member-1", "PAYRB"}, {"b", "member-1", "PAYRC"}, {"c", "member-2", "PAYRB"}} {
		status, task := s.do("POST", "/Task", seedTask(c.patient, c.org), "")
		if status != 201 {
			t.Fatalf("%s: %d %v", c.key, status, task)
		}
		ids[c.key] = task["id"].(string)
		s.now = s.now.Add(time.Hour)
	}
	_, b := s.do("GET", "/Task/"+ids["b"], nil, "")
	b["status"] = "accepted"
	if status, _ := s.do("PUT", "/Task/"+ids["b"], b, ""); status != 200 { // modified 23:00
		t.Fatal(status)
	}
	// Another kind of Task that must not turn up in code searches.
	s.do("POST", "/Task", map[string]any{"resourceType": "Task", "status": "requested", "intent": "order", "for": map[string]any{"reference": "Patient/member-1"}}, "")

	find := func(q string) []string {
		t.Helper()
		status, bundle := s.do("GET", "/Task?"+q, nil, "")
		if status != 200 {
			t.Fatalf("%s: %d %v", q, status, bundle)
		}
		var out []string
		entries, _ := bundle["entry"].([]any)
		for _, e := range entries {
			id := e.(map[string]any)["resource"].(map[string]any)["id"].(string)
			for k, v := range ids {
				if v == id {
					out = append(out, k)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	code := url.QueryEscape(addpayer.CodeSystem + "|" + addpayer.Code)
	cases := map[string][]string{
		"requester=Patient/member-1":                   {"a", "b"},
		"owner=Organization/PAYRB":                     {"a", "c"},
		"status=requested":                             {"a", "c"},
		"status=accepted":                              {"b"},
		"code=" + code:                                 {"a", "b", "c"},
		"code=" + code + "&requester=Patient/member-2": {"c"},
		"identifier=" + url.QueryEscape(addpayer.CodeSystem+"|member-1-PAYRC-2024-05-09T20:36:18Z"): {"b"},
		"authored-on=2024-05-09":                                      {"a", "b", "c"},
		"authored-on=lt2024-05-09":                                    nil,
		"modified=ge2024-05-09T21:30:00Z":                             {"b", "c"},
		"modified=lt2024-05-09T20:30:00Z":                             {"a"},
		"code=" + code + "&status=requested&owner=Organization/PAYRB": {"a", "c"},
	}
	for q, want := range cases {
		if got := find(q); !slices.Equal(got, want) {
			t.Errorf("Task?%s = %v, want %v", q, got, want)
		}
	}
}

func TestEveryStatusHasWordsForTheMember(t *testing.T) {
	tmpl := addpayer.Template()
	m := seedTask("member-1", "PAYRB")
	input(m, 2)["valueString"] = "Acme <Health> & Co"
	for _, st := range workflow.Statuses() {
		m["status"] = st
		r := &notify.Resource{Type: "Task", ID: "t1", VersionID: 2, Map: m}
		prev := &notify.Resource{Type: "Task", ID: "t1", VersionID: 1, Map: map[string]any{"status": "requested"}}
		for _, aud := range []notify.Audience{notify.AudienceResource, notify.AudienceSubscriber} {
			mail, err := tmpl.Compose(notify.Event{Subscription: "s", Resource: r, Previous: prev, Audience: aud, Link: "http://x/fhir/Task/t1/_history/2"})
			if err != nil {
				t.Fatal(err)
			}
			if aud == notify.AudienceResource {
				if !strings.HasPrefix(mail.Subject, "Your request to add Acme <Health> & Co: ") || strings.HasSuffix(mail.Subject, ": "+st) && st != "accepted" && st != "cancelled" && st != "paused" {
					t.Errorf("%s: member subject %q", st, mail.Subject)
				}
				if !strings.Contains(mail.Text, "What happens next: ") || strings.Contains(mail.Text, "Check the Task") {
					t.Errorf("%s: member text has no next step:\n%s", st, mail.Text)
				}
			} else if !strings.Contains(mail.Text, "What to do: ") || !strings.Contains(mail.Text, "(was requested)") && st != "requested" {
				t.Errorf("%s: staff text:\n%s", st, mail.Text)
			}
			if strings.Contains(mail.Text+mail.HTML+mail.Subject, "%!") || strings.Contains(mail.Text, "{payer}") {
				t.Errorf("%s: a formatting mistake in the message:\n%s", st, mail.Text)
			}
			if strings.Contains(mail.HTML, "<Health>") || !strings.Contains(mail.HTML, "Acme &lt;Health&gt; &amp; Co") {
				t.Errorf("%s: the payer name is not escaped in HTML", st)
			}
		}
	}
	if !tmpl.Notable(nil, &notify.Resource{Map: m}) {
		t.Error("a new request is not notable")
	}
	same := &notify.Resource{Map: map[string]any{"status": "accepted", "note": "x"}}
	if tmpl.Notable(&notify.Resource{Map: map[string]any{"status": "accepted"}}, same) {
		t.Error("an edit without a status change is notable")
	}
	if got := tmpl.Recipients(&notify.Resource{Map: seedTask("member-1", "PAYRB")}); !slices.Equal(got, []string{"angelic@example.org"}) {
		t.Errorf("recipients %v", got)
	}
}
