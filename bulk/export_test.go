package bulk

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// A small data set: two members, their Observations and an Encounter, a
// Practitioner (not in any compartment), and a Group of member a.
func loadBasic(p *payer) {
	p.put(
		map[string]any{"resourceType": "Patient", "id": "a", "name": []any{map[string]any{"family": "Alpha"}}, "birthDate": "1970-01-01"},
		map[string]any{"resourceType": "Patient", "id": "b", "name": []any{map[string]any{"family": "Beta"}}, "birthDate": "1980-01-01"},
		map[string]any{"resourceType": "Observation", "id": "a1", "status": "final", "code": map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "8867-4"}}}, "subject": map[string]any{"reference": "Patient/a"}},
		map[string]any{"resourceType": "Observation", "id": "a2", "status": "final", "code": map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "29463-7"}}}, "subject": map[string]any{"reference": "Patient/a"}},
		map[string]any{"resourceType": "Observation", "id": "b1", "status": "final", "code": map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "8867-4"}}}, "subject": map[string]any{"reference": "Patient/b"}},
		map[string]any{"resourceType": "Encounter", "id": "ea", "status": "finished", "class": map[string]any{"code": "AMB"}, "subject": map[string]any{"reference": "Patient/a"}},
		map[string]any{"resourceType": "Practitioner", "id": "doc", "name": []any{map[string]any{"family": "Doc"}}},
		map[string]any{"resourceType": "Group", "id": "ga", "type": "person", "actual": true, "member": []any{map[string]any{"entity": map[string]any{"reference": "Patient/a"}}}},
	)
}

func keys(m map[string]map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Bulk Data Access STU 2, kick-off at the three levels: system (every
// resource the scopes read), Patient (every Patient's compartment), Group
// (its members' compartments); _type limits the types.
func TestExportLevels(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	p := newPayer(t, idp, Config{Slice: 2})
	loadBasic(p)
	tok := p.token("payer-x", "system/*.rs")
	obsOnly := p.token("payer-x", "system/Observation.rs")
	chain := "/$export?_type=Observation&_typeFilter=" + url.QueryEscape("Observation?subject:Patient.family=Beta")
	cases := []struct {
		name, path string
		want       []string
		token      string // tok when empty
	}{
		{"system, one type", "/$export?_type=Observation", []string{"Observation/a1", "Observation/a2", "Observation/b1"}, ""},
		{"system, two types", "/$export?_type=Practitioner,Encounter", []string{"Encounter/ea", "Practitioner/doc"}, ""},
		{"patient level", "/Patient/$export?_type=Patient,Observation,Encounter", []string{"Encounter/ea", "Observation/a1", "Observation/a2", "Observation/b1", "Patient/a", "Patient/b"}, ""},
		{"group level", "/Group/ga/$export", []string{"Encounter/ea", "Observation/a1", "Observation/a2", "Patient/a"}, ""},
		{"group level with _typeFilter", "/Group/ga/$export?_type=Observation&_typeFilter=" + url.QueryEscape("Observation?code=http://loinc.org|8867-4"), []string{"Observation/a1"}, ""},
		// A chained _typeFilter reaches only what the token may read, as
		// the same search would (authz.Policy.Confine): without Patient
		// read, what is exported must not tell a Patient's name.
		{"_typeFilter chain into a readable type", chain, []string{"Observation/b1"}, ""},
		{"_typeFilter chain into a type the token cannot read", chain, nil, obsOnly},
	}
	for _, c := range cases {
		tok := tok
		if c.token != "" {
			tok = c.token
		}
		status := p.kickoff("GET", c.path, tok, nil)
		m := p.wait(status, tok)
		got := keys(p.exported(m, tok))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: exported %v, want %v", c.name, got, c.want)
		}
		if !m.RequiresAccessToken || m.TransactionTime == "" || !strings.HasSuffix(m.Request, c.path) {
			t.Errorf("%s: manifest %+v", c.name, m)
		}
		p.do("DELETE", status, tok, nil)
	}
}

// Bulk Data Access STU 2 kick-off: a parameter the server cannot honour
// is an error, never silently dropped; PDex STU 2.1 §_typeFilter: "SHALL
// NOT silently ignore an unsupported _typeFilter and emit unfiltered data".
func TestKickoffRefusals(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	idp.AddClient("payer-obs", "s")
	p := newPayer(t, idp, Config{})
	loadBasic(p)
	tok := p.token("payer-x", "system/*.rs")
	obsOnly := p.token("payer-obs", "system/Observation.rs")
	cases := []struct {
		name, method, path, token string
		prefer                    bool
		status                    int
		says                      string
	}{
		{"no Prefer: respond-async", "GET", "/$export", tok, false, 400, "respond-async"},
		{"unknown search parameter in _typeFilter", "GET", "/$export?_typeFilter=" + url.QueryEscape("Observation?nosuchparam=1"), tok, true, 400, "_typeFilter"},
		{"_typeFilter of a result parameter", "GET", "/$export?_typeFilter=" + url.QueryEscape("Observation?_count=5"), tok, true, 400, "_count"},
		{"_typeFilter without a query", "GET", "/$export?_typeFilter=Observation", tok, true, 400, "_typeFilter"},
		{"_typeFilter of a type not exported", "GET", "/$export?_type=Patient&_typeFilter=" + url.QueryEscape("Observation?code=1"), tok, true, 400, "not among the types"},
		{"_outputFormat not NDJSON", "GET", "/$export?_outputFormat=text/csv", tok, true, 400, "_outputFormat"},
		{"_since not an instant", "GET", "/$export?_since=yesterday", tok, true, 400, "_since"},
		{"_since in the future", "GET", "/$export?_since=2999-01-01T00:00:00Z", tok, true, 400, "future"},
		{"unknown parameter", "GET", "/$export?_elements=id", tok, true, 400, "_elements"},
		{"_type not a resource", "GET", "/$export?_type=Nonsense", tok, true, 400, "Nonsense"},
		{"_type beyond the scopes", "GET", "/$export?_type=Patient", obsOnly, true, 403, "Patient"},
		{"unknown Group", "GET", "/Group/nope/$export", tok, true, 404, "Group/nope"},
		{"davinci-data-export without exportType", "POST", "/Group/ga/$davinci-data-export", tok, true, 400, "exportType"},
		{"davinci-data-export of another exportType", "GET", "/Group/ga/$davinci-data-export?exportType=other", tok, true, 400, "exportType"},
		{"payer-to-payer _type outside its data set", "GET", "/Group/ga/$davinci-data-export?exportType=" + url.QueryEscape(PayerToPayer) + "&_type=Practitioner", tok, true, 400, "payer-to-payer"},
	}
	for _, c := range cases {
		var hdr []string
		if c.prefer {
			hdr = []string{"Prefer", "respond-async"}
		}
		resp, body := p.do(c.method, c.path, c.token, nil, hdr...)
		if resp.StatusCode != c.status || !strings.Contains(string(body), c.says) || !strings.Contains(string(body), "OperationOutcome") {
			t.Errorf("%s: %d %s; want %d with an OperationOutcome saying %q", c.name, resp.StatusCode, body, c.status, c.says)
		}
	}
}

// Bulk Data Access STU 2: _since and _until bound meta.lastUpdated.
func TestExportSinceUntil(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	p := newPayer(t, idp, Config{})
	loadBasic(p)
	time.Sleep(5 * time.Millisecond)
	mid := time.Now().UTC()
	time.Sleep(5 * time.Millisecond)
	p.put(map[string]any{"resourceType": "Observation", "id": "late", "status": "final", "code": map[string]any{"text": "late"}, "subject": map[string]any{"reference": "Patient/b"}})
	tok := p.token("payer-x", "system/*.rs")
	q := url.QueryEscape(mid.Format(time.RFC3339Nano))
	for _, c := range []struct {
		name, path string
		want       []string
	}{
		{"_since", "/$export?_type=Observation&_since=" + q, []string{"Observation/late"}},
		{"_until", "/$export?_type=Observation&_until=" + q, []string{"Observation/a1", "Observation/a2", "Observation/b1"}},
	} {
		m := p.wait(p.kickoff("GET", c.path, tok, nil), tok)
		if got := keys(p.exported(m, tok)); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// Bulk Data Access STU 2 (status and file requests, requiresAccessToken)
// and PDex STU 2.1 §pdex-185: the status URL and the files answer only
// the client that started the export; to another they do not exist.
func TestOtherClientRefused(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	idp.AddClient("payer-y", "s")
	p := newPayer(t, idp, Config{})
	loadBasic(p)
	x := p.token("payer-x", "system/*.rs")
	y := p.token("payer-y", "system/*.rs")
	status := p.kickoff("GET", "/$export?_type=Observation", x, nil)
	m := p.wait(status, x)
	if len(m.Output) == 0 {
		t.Fatal("nothing exported")
	}
	for _, c := range []struct{ name, method, url, token string }{
		{"status, other client", "GET", status, y},
		{"file, other client", "GET", m.Output[0].URL, y},
		{"cancel, other client", "DELETE", status, y},
		{"status, admin token", "GET", status, adminToken},
	} {
		resp, body := p.do(c.method, c.url, c.token, nil)
		if resp.StatusCode != 404 || strings.Contains(string(body), "Observation/a1") {
			t.Errorf("%s: %d %s; want 404", c.name, resp.StatusCode, body)
		}
	}
	for _, c := range []struct{ name, url string }{{"status", status}, {"file", m.Output[0].URL}} {
		if resp, _ := p.do("GET", c.url, "", nil); resp.StatusCode != 401 {
			t.Errorf("%s without a token: %d, want 401", c.name, resp.StatusCode)
		}
	}
	// The owner still has it all.
	if got := p.lines(m.Output[0].URL, x); len(got) != 3 {
		t.Errorf("owner's file has %d lines", len(got))
	}
}

// Bulk Data Access STU 2 "Delete a Bulk Data Request": DELETE on the
// status URL cancels; afterwards the status URL answers 404 and the files
// are gone.
func TestExportCancel(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	p := newPayer(t, idp, Config{})
	loadBasic(p)
	tok := p.token("payer-x", "system/*.rs")
	status := p.kickoff("GET", "/$export", tok, nil)
	m := p.wait(status, tok)
	resp, _ := p.do("DELETE", status, tok, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE: %d, want 202", resp.StatusCode)
	}
	if resp, _ := p.do("GET", status, tok, nil); resp.StatusCode != 404 {
		t.Errorf("status after DELETE: %d, want 404", resp.StatusCode)
	}
	if resp, _ := p.do("GET", m.Output[0].URL, tok, nil); resp.StatusCode != 404 {
		t.Errorf("file after DELETE: %d, want 404", resp.StatusCode)
	}
	id := status[strings.LastIndex(status, "/")+1:]
	if _, err := os.Stat(filepath.Join(p.dir, "exports", id)); !os.IsNotExist(err) {
		t.Errorf("the job's folder is still there: %v", err)
	}
}

// -export-retention: a finished job's files are deleted when it expires,
// and its status URL then answers 404.
func TestExportExpiry(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	p := newPayer(t, idp, Config{Retention: 300 * time.Millisecond, Sweep: 50 * time.Millisecond})
	loadBasic(p)
	tok := p.token("payer-x", "system/*.rs")
	status := p.kickoff("GET", "/$export?_type=Patient", tok, nil)
	m := p.wait(status, tok)
	resp, _ := p.do("GET", status, tok, nil)
	if resp.StatusCode == 200 && resp.Header.Get("Expires") == "" {
		t.Error("a complete status has no Expires header")
	}
	id := status[strings.LastIndex(status, "/")+1:]
	dir := filepath.Join(p.dir, "exports", id)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := os.Stat(dir)
		resp, _ := p.do("GET", status, tok, nil)
		if os.IsNotExist(err) && resp.StatusCode == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not expired: folder err %v, status %d", err, resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp, _ := p.do("GET", m.Output[0].URL, tok, nil); resp.StatusCode != 404 {
		t.Errorf("file after expiry: %d", resp.StatusCode)
	}
}

// A client may have -export-per-client unfinished jobs; one more kick-off
// answers 429 with Retry-After.
func TestPerClientLimit(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	idp.AddClient("payer-y", "s")
	// No workers run: jobs stay unfinished.
	p := newPayer(t, idp, Config{PerClient: 2})
	p.ex.Close()
	tok := p.token("payer-x", "system/*.rs")
	for range 2 {
		p.kickoff("GET", "/$export", tok, nil)
	}
	resp, body := p.do("GET", "/$export", tok, nil, "Prefer", "respond-async")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third kick-off: %d %s (Retry-After %q), want 429 with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// Another client is not held back by the first's.
	p.kickoff("GET", "/$export", p.token("payer-y", "system/*.rs"), nil)
}

// A restart in the middle of an export resumes at the checkpoint: on the
// same database, the export completes with every resource once, and the
// files written before the restart are kept, not written again.
func TestExportResumesAfterRestart(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	reached := make(chan struct{})
	var once sync.Once
	cfg := Config{Slice: 10, FileResources: 25, Workers: 1}
	cfg.afterSlice = func(ctx context.Context, j *Job) {
		if j.Written >= 30 {
			once.Do(func() { close(reached) })
			<-ctx.Done() // hold the worker until the server stops
		}
	}
	p := newPayer(t, idp, cfg)
	var obs []map[string]any
	for i := range 120 {
		obs = append(obs, map[string]any{"resourceType": "Observation", "id": fmt.Sprintf("o%03d", i), "status": "final",
			"code": map[string]any{"text": "x"}})
	}
	p.put(obs...)
	tok := p.token("payer-x", "system/*.rs")
	status := p.kickoff("GET", "/$export?_type=Observation", tok, nil)
	id := status[strings.LastIndex(status, "/")+1:]
	<-reached
	p.stop()
	p.cfg.afterSlice = nil
	p.restart()
	before := p.job(id)
	if before.State != StateRunning || before.Written < 30 || before.Written >= 120 || before.Cursor.After == "" {
		t.Fatalf("after the restart the job is at %+v (written %d); want it mid-export", before.Cursor, before.Written)
	}
	first := filepath.Join(p.dir, "exports", id, "Observation-1.ndjson")
	st1, err := os.Stat(first)
	if err != nil {
		t.Fatal(err)
	}
	m := p.wait(status, tok)
	got := p.exported(m, tok)
	if len(got) != 120 {
		t.Fatalf("exported %d resources, want 120 (each once)", len(got))
	}
	if len(m.Output) != 5 {
		t.Errorf("%d files, want 5 of at most 25 resources", len(m.Output))
	}
	// The first file, full before the restart, was not rewritten.
	if st2, err := os.Stat(first); err != nil || !st2.ModTime().Equal(st1.ModTime()) {
		t.Errorf("the first file was written again after the restart")
	}
}

// job reads job id's record.
func (p *payer) job(id string) *Job {
	p.t.Helper()
	var j *Job
	if err := p.st.View(context.Background(), func(tx *store.Tx) (err error) {
		j, err = getJob(tx, id)
		return err
	}); err != nil || j == nil {
		p.t.Fatalf("job %s: %v", id, err)
	}
	return j
}

// The CapabilityStatement lists the operations with their canonical
// definitions: Group's bulk-member-match and davinci-data-export as the
// PDex STU 2.1 pdex-payer-access-server statement names them, and the
// Bulk Data Access STU 2 export operations.
func TestCapabilityStatementOperations(t *testing.T) {
	t.Parallel()
	p := newPayer(t, oidctest.New(t), Config{})
	resp, body := p.do("GET", "/metadata", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("metadata: %d", resp.StatusCode)
	}
	var cs struct {
		Rest []struct {
			Operation []struct{ Name, Definition string } `json:"operation"`
			Resource  []struct {
				Type      string                              `json:"type"`
				Operation []struct{ Name, Definition string } `json:"operation"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(body, &cs); err != nil || len(cs.Rest) == 0 {
		t.Fatalf("metadata: %v", err)
	}
	have := map[string]string{}
	for _, o := range cs.Rest[0].Operation {
		have["system $"+o.Name] = o.Definition
	}
	for _, r := range cs.Rest[0].Resource {
		for _, o := range r.Operation {
			have[r.Type+" $"+o.Name] = o.Definition
		}
	}
	for k, want := range map[string]string{
		"system $export":             "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
		"Patient $export":            "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
		"Group $export":              "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
		"Group $davinci-data-export": "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export",
		"Group $bulk-member-match":   "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch",
		"Patient $member-match":      "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match",
	} {
		if have[k] != want {
			t.Errorf("%s: definition %q, want %q", k, have[k], want)
		}
	}
}

// Bulk Data Access STU 2, "File Request": the Accept header is optional and
// defaults to application/fhir+ndjson. A client that names it (or NDJSON,
// JSON, anything) gets the file; one that accepts only another format gets
// 406 with an OperationOutcome.
func TestFileRequestAcceptHeader(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	p := newPayer(t, idp, Config{})
	loadBasic(p)
	x := p.token("payer-x", "system/*.rs")
	m := p.wait(p.kickoff("GET", "/$export?_type=Observation", x, nil), x)
	if len(m.Output) == 0 {
		t.Fatal("nothing exported")
	}
	for _, c := range []struct {
		accept string
		want   int
	}{
		{"application/fhir+ndjson", 200},
		{"application/ndjson", 200},
		{"application/fhir+ndjson, application/fhir+json;q=0.5", 200},
		{"*/*", 200},
		{"application/fhir+json", 200},
		{"application/fhir+xml", 406},
		{"text/html", 406},
		{"application/fhir+ndjson;q=0", 406},
	} {
		resp, body := p.do("GET", m.Output[0].URL, x, nil, "Accept", c.accept)
		if resp.StatusCode != c.want {
			t.Errorf("Accept %q: %d %s; want %d", c.accept, resp.StatusCode, body, c.want)
			continue
		}
		if c.want == 200 && resp.Header.Get("Content-Type") != NDJSON {
			t.Errorf("Accept %q: Content-Type %q", c.accept, resp.Header.Get("Content-Type"))
		}
		if c.want == 406 && !strings.Contains(string(body), "OperationOutcome") {
			t.Errorf("Accept %q: 406 without an OperationOutcome: %s", c.accept, body)
		}
	}
}
