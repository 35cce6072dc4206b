package workflow_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
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
	"github.com/p2pserver/p2pserver/internal/errs"
)

func TestTaskStateMachine(t *testing.T) {
	cases := []struct {
		from, to string
		ok       bool
	}{
		{"requested", "accepted", true},
		{"requested", "received", true},
		{"received", "accepted", true},
		{"accepted", "in-progress", true},
		{"requested", "in-progress", true}, // starting implies accepting
		{"in-progress", "on-hold", true},
		{"on-hold", "in-progress", true},
		{"in-progress", "completed", true},
		{"in-progress", "failed", true},
		{"requested", "rejected", true},
		{"requested", "cancelled", true},
		{"draft", "requested", true},
		{"completed", "entered-in-error", true},
		{"requested", "requested", true},
		{"requested", "completed", false}, // nobody worked on it
		{"accepted", "completed", false},
		{"accepted", "rejected", false},
		{"draft", "in-progress", false},
		{"completed", "in-progress", false},
		{"failed", "requested", false},
		{"cancelled", "accepted", false},
		{"rejected", "accepted", false},
		{"entered-in-error", "requested", false},
		{"in-progress", "requested", false},
		{"requested", "started", false},
	}
	for _, c := range cases {
		err := workflow.CheckTransition(c.from, c.to)
		if (err == nil) != c.ok {
			t.Errorf("%s -> %s: err %v, want allowed=%v", c.from, c.to, err, c.ok)
		}
		if err != nil && !errs.Is(err, errs.Unprocessable) {
			t.Errorf("%s -> %s: kind %v, want Unprocessable", c.from, c.to, errs.KindOf(err))
		}
	}
	for _, s := range workflow.Statuses() {
		if !workflow.Known(s) {
			t.Errorf("%s unknown", s)
		}
		for _, n := range workflow.Next(s) {
			if !workflow.Known(n) {
				t.Errorf("%s leads to unknown %s", s, n)
			}
		}
	}
	if !workflow.Terminal("completed") || workflow.Terminal("on-hold") {
		t.Error("Terminal")
	}
	_, issues := errs.Public(workflow.CheckTransition("accepted", "completed"))
	if len(issues) != 1 || !strings.Contains(issues[0].Message, "from accepted it can only go to ready, in-progress, failed, cancelled, entered-in-error") {
		t.Errorf("the refusal does not list the possible statuses: %v", issues)
	}
}

// server is a FHIR server with the workflow validator, over loopback.
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
	s := &server{t: t, url: h.URL + "/fhir", now: time.Date(2024, 5, 9, 20, 36, 18, 0, time.UTC)}
	fs := fhir.New(st, fhir.Config{BaseURL: s.url})
	workflow.Register(fs, workflow.Options{Now: func() time.Time { return s.now }})
	mux.Mount("/fhir", fs.Handler())
	t.Cleanup(func() { h.Close(); st.Close(); db.Close() })
	return s
}

func (s *server) do(method, path string, body map[string]any) (int, map[string]any) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestTaskStatusAndDatesThroughREST(t *testing.T) {
	s := newServer(t)
	status, task := s.do("POST", "/Task", map[string]any{"resourceType": "Task", "status": "requested", "intent": "order",
		"lastModified": "1999-01-01T00:00:00Z"})
	if status != 201 {
		t.Fatalf("create: %d %v", status, task)
	}
	if task["lastModified"] != "2024-05-09T20:36:18.000Z" || task["authoredOn"] != "2024-05-09T20:36:18.000Z" {
		t.Errorf("lastModified %v, authoredOn %v: want the time of the write", task["lastModified"], task["authoredOn"])
	}
	id := task["id"].(string)

	s.now = s.now.Add(time.Hour)
	task["status"] = "completed"
	status, oo := s.do("PUT", "/Task/"+id, task)
	if status != 422 || oo["resourceType"] != "OperationOutcome" {
		t.Fatalf("requested -> completed: %d %v", status, oo)
	}
	diag := oo["issue"].([]any)[0].(map[string]any)
	if !strings.Contains(diag["diagnostics"].(string), "cannot go from requested to completed") || !slices.Equal(toStrings(diag["expression"]), []string{"Task.status"}) {
		t.Errorf("refusal: %v", diag)
	}

	task["status"] = "accepted"
	delete(task, "authoredOn") // a client that drops it keeps it
	status, got := s.do("PUT", "/Task/"+id, task)
	if status != 200 || got["status"] != "accepted" || got["lastModified"] != "2024-05-09T21:36:18.000Z" || got["authoredOn"] != "2024-05-09T20:36:18.000Z" {
		t.Fatalf("requested -> accepted: %d %v", status, got)
	}
	got["authoredOn"] = "2020-01-01"
	if status, oo := s.do("PUT", "/Task/"+id, got); status != 422 || !strings.Contains(oo["issue"].([]any)[0].(map[string]any)["diagnostics"].(string), "authoredOn") {
		t.Errorf("authoredOn changed: %d %v", status, oo)
	}

	// A copy of another payer's Task keeps the source's statuses and dates.
	status, mirror := s.do("PUT", "/Task/src-1", map[string]any{"resourceType": "Task", "id": "src-1", "status": "completed", "intent": "order",
		"lastModified": "2023-01-01T00:00:00Z", "meta": map[string]any{"source": "https://source.example/fhir/Task/1"}})
	if status != 201 || mirror["lastModified"] != "2023-01-01T00:00:00Z" {
		t.Fatalf("mirrored create: %d %v", status, mirror)
	}
	mirror["status"] = "in-progress"
	if status, _ := s.do("PUT", "/Task/src-1", mirror); status != 200 {
		t.Errorf("mirrored Task refused: %d", status)
	}
	// meta.source under this server's own base is no exemption.
	status, own := s.do("POST", "/Task", map[string]any{"resourceType": "Task", "status": "completed", "intent": "order",
		"meta": map[string]any{"source": s.url + "/Task/x"}})
	if status != 201 {
		t.Fatal(status)
	}
	own["status"] = "requested"
	if status, _ := s.do("PUT", "/Task/"+own["id"].(string), own); status != 422 {
		t.Errorf("completed -> requested with own meta.source: %d", status)
	}
}

func toStrings(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
