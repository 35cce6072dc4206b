package provenance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
	"github.com/p2pserver/p2pserver/provenance"
)

var payerA = provenance.SourceConfig{
	BaseURL:              "https://payer-a.example/fhir",
	OrganizationName:     "Payer A",
	OrganizationID:       "PAYER-A-01",
	OrganizationResource: "payer-a",
}

// TestServedProvenanceGolden pins the shape of the Provenance generated for
// a served resource.
func TestServedProvenanceGolden(t *testing.T) {
	src, err := provenance.NewSource(nil, payerA)
	if err != nil {
		t.Fatal(err)
	}
	recorded := time.Date(2024, 5, 9, 20, 36, 18, 111e6, time.UTC)
	raw, full, err := src.Generate(provenance.Served{Type: "ExplanationOfBenefit", ID: "eob1", VersionID: 3}, recorded)
	if err != nil {
		t.Fatal(err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	pretty.WriteByte('\n')
	golden := filepath.Join("testdata", "source-served.golden.json")
	if *update {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(pretty.Bytes(), want) {
		t.Errorf("Provenance differs from %s:\n%s", golden, pretty.String())
	}
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	if issues := spec.R4().Validate(m); len(issues) > 0 {
		t.Errorf("not valid FHIR R4: %v", issues)
	}
	// The fullUrl is a uuid fixed by what was served: the same version
	// again gives the same, another version another.
	if !strings.HasPrefix(full, "urn:uuid:") {
		t.Errorf("fullUrl %s", full)
	}
	_, again, _ := src.Generate(provenance.Served{Type: "ExplanationOfBenefit", ID: "eob1", VersionID: 3}, recorded.Add(time.Hour))
	_, next, _ := src.Generate(provenance.Served{Type: "ExplanationOfBenefit", ID: "eob1", VersionID: 4}, recorded)
	if again != full || next == full {
		t.Errorf("fullUrls %s %s %s", full, again, next)
	}
	// Without an Organization resource the agent names the payer by id.
	bare, err := provenance.NewSource(nil, provenance.SourceConfig{OrganizationName: "Payer A"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _, _ = bare.Generate(provenance.Served{Type: "Patient", ID: "p1"}, recorded)
	if !strings.Contains(string(raw), `"target":[{"reference":"Patient/p1"}]`) || strings.Contains(string(raw), "Organization/") ||
		!strings.Contains(string(raw), `"who":{"type":"Organization","display":"Payer A"}`) {
		t.Errorf("bare: %s", raw)
	}
	for _, bad := range []provenance.SourceConfig{{}, {OrganizationName: " "}, {OrganizationName: "A", OrganizationResource: "a/b"}} {
		if _, err := provenance.NewSource(nil, bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// sourceEnv is a payer serving over loopback with tokens required, the
// Source middleware and $everything, wired as cmd/p2pserver wires them.
type sourceEnv struct {
	t    *testing.T
	base string
	idp  *oidctest.Provider
	logs *bytes.Buffer
}

const adminTok = "admin-token-0123456789abcdef"

func newSourceEnv(t *testing.T) *sourceEnv {
	t.Helper()
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, search.NewRegistry(spec.R4()), nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	srv := httptest.NewServer(mux)
	e := &sourceEnv{t: t, base: srv.URL + "/fhir", idp: oidctest.New(t), logs: &bytes.Buffer{}}
	e.idp.AddClient("payer-b", "secret")
	fs := fhir.New(st, fhir.Config{BaseURL: e.base})
	g, err := smart.New(smart.Config{BaseURL: e.base, Issuers: []smart.Issuer{{URL: e.idp.Issuer()}}, AdminTokens: []string{adminTok},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	g.Attach(fs)
	cfg := payerA
	cfg.BaseURL = e.base
	cfg.Logger = slog.New(slog.NewTextHandler(e.logs, nil))
	src, err := provenance.NewSource(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	src.Attach(fs)
	fs.EnableEverything(fhir.EverythingOptions{})
	mux.Mount("/fhir", fs.Handler())
	t.Cleanup(func() {
		srv.Close()
		st.Close()
		db.Close()
	})
	return e
}

type served struct {
	status int
	body   []byte
	bundle fhir.Bundle
}

func (e *sourceEnv) get(method, path, token, body string) *served {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	url := path
	if !strings.HasPrefix(path, "http") {
		url = e.base + path
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := &served{status: resp.StatusCode}
	out.body, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(out.body, &out.bundle)
	return out
}

// form POSTs a search form.
func (e *sourceEnv) form(path, token, form string) *served {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.base+path, strings.NewReader(form))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := &served{status: resp.StatusCode}
	out.body, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(out.body, &out.bundle)
	return out
}

// provenances returns, for a page, the targets of its Provenance entries
// ("stored:<id>=>target" or "generated=>target") and its other entries.
func (s *served) provenances(t *testing.T) (prov []string, other []string) {
	t.Helper()
	for _, e := range s.bundle.Entry {
		var r struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
			Target       []struct {
				Reference string `json:"reference"`
			} `json:"target"`
		}
		_ = json.Unmarshal(e.Resource, &r)
		if r.ResourceType != "Provenance" {
			other = append(other, r.ResourceType+"/"+r.ID+":"+e.Search.Mode)
			continue
		}
		kind := "stored:" + r.ID
		if r.ID == "" {
			kind = "generated"
			if !strings.HasPrefix(e.FullURL, "urn:uuid:") {
				t.Errorf("generated Provenance with fullUrl %s", e.FullURL)
			}
		}
		for _, tg := range r.Target {
			prov = append(prov, kind+"=>"+tg.Reference)
		}
		if e.Search.Mode != "include" {
			t.Errorf("Provenance entry with search mode %s", e.Search.Mode)
		}
	}
	slices.Sort(prov)
	slices.Sort(other)
	return prov, other
}

// TestProvenanceOnlyWhenAsked holds the rule of what a page carries beyond
// its matches: a search answers the searched type and the includes asked
// for (FHIR R4 search.html#include; Inferno's PDex payer-server suite,
// "Server returned Search bundle with valid Encounter data", requires every
// entry of Encounter?patient=Patient/<id> to be an Encounter); Provenance
// comes with _revinclude=Provenance:target (stored and generated alike,
// search mode include; :iterate for the included too), this payer's
// Organization only with _include:iterate of the Provenance's agents, and
// $everything carries both (PDex).
func TestProvenanceOnlyWhenAsked(t *testing.T) {
	t.Parallel()
	e := newSourceEnv(t)
	for _, d := range []string{
		`{"resourceType":"Organization","id":"payer-a","name":"Payer A"}`,
		`{"resourceType":"Patient","id":"m1"}`,
		`{"resourceType":"Patient","id":"m2"}`,
		`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Observation","id":"o3","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m2"}}`,
		`{"resourceType":"Encounter","id":"e1","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Encounter","id":"e2","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Encounter","id":"e3","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/m2"}}`,
		// o1 and e1 came from another payer: their Provenance is stored.
		`{"resourceType":"Provenance","id":"prov1","target":[{"reference":"Observation/o1"}],"recorded":"2024-01-15T10:00:00Z",
		  "agent":[{"type":{"coding":[{"system":"http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type","code":"transmitter"}]},"who":{"display":"Payer Z"}}]}`,
		`{"resourceType":"Provenance","id":"prov-e1","target":[{"reference":"Encounter/e1"}],"recorded":"2024-01-15T10:00:00Z",
		  "agent":[{"type":{"coding":[{"system":"http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type","code":"transmitter"}]},"who":{"display":"Payer Z"}}]}`,
	} {
		var m map[string]any
		_ = json.Unmarshal([]byte(d), &m)
		if r := e.get("PUT", "/"+m["resourceType"].(string)+"/"+m["id"].(string), adminTok, d); r.status != 201 {
			t.Fatalf("load: %d %s", r.status, r.body)
		}
	}
	e.get("PUT", "/Observation/o2", adminTok, `{"resourceType":"Observation","id":"o2","status":"amended","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`)
	aud := []string{e.base}
	sys, _ := e.idp.MintSystem(oidctest.SystemGrant{ClientID: "payer-b", Scopes: []string{"system/*.read"}, Audience: aud})
	member, _ := e.idp.MintFor(aud, oidctest.Grant{ClientID: "payer-b", Patient: "m1", Scopes: []string{"patient/*.read"}})
	noProv, _ := e.idp.MintFor(aud, oidctest.Grant{ClientID: "payer-b", Patient: "m1", Scopes: []string{"patient/Observation.rs"}})

	cases := []struct {
		name, method, path, form, token string
		prov, other                     []string
	}{
		// The issue's example: a payer's token searching a member's
		// Encounters gets Encounters, nothing else.
		{"Encounter?patient with a payer's token: Encounters only", "GET", "/Encounter?patient=Patient/m1", "", sys.AccessToken,
			nil, []string{"Encounter/e1:match", "Encounter/e2:match"}},
		{"Encounter?patient with the member's token: Encounters only", "GET", "/Encounter?patient=Patient/m1", "", member.AccessToken,
			nil, []string{"Encounter/e1:match", "Encounter/e2:match"}},
		{"every Observation with a payer's token: Observations only", "GET", "/Observation", "", sys.AccessToken,
			nil, []string{"Observation/o1:match", "Observation/o2:match", "Observation/o3:match"}},
		{"an _include asked for: the included, no Provenance", "GET", "/Observation?_id=o2&_include=Observation:subject", "", sys.AccessToken,
			nil, []string{"Observation/o2:match", "Patient/m1:include"}},
		{"_revinclude=Provenance:target: stored and generated, no Organization", "GET", "/Encounter?patient=Patient/m1&_revinclude=Provenance:target", "", sys.AccessToken,
			[]string{"generated=>Encounter/e2/_history/1", "stored:prov-e1=>Encounter/e1"},
			[]string{"Encounter/e1:match", "Encounter/e2:match"}},
		{"_revinclude=Provenance:target with the member's token", "GET", "/Observation?_revinclude=Provenance:target", "", member.AccessToken,
			[]string{"generated=>Observation/o2/_history/2", "stored:prov1=>Observation/o1"},
			[]string{"Observation/o1:match", "Observation/o2:match"}},
		{"_revinclude=Provenance:target, all stored: the stored one once", "GET", "/Observation?_id=o1&_revinclude=Provenance:target", "", sys.AccessToken,
			[]string{"stored:prov1=>Observation/o1"}, []string{"Observation/o1:match"}},
		{"_revinclude=Provenance:target:Observation names the searched type", "GET", "/Observation?_revinclude=Provenance:target:Observation", "", sys.AccessToken,
			[]string{"generated=>Observation/o2/_history/2", "generated=>Observation/o3/_history/1", "stored:prov1=>Observation/o1"},
			[]string{"Observation/o1:match", "Observation/o2:match", "Observation/o3:match"}},
		{"_revinclude=Provenance:target:Patient on Observations: none targets them", "GET", "/Observation?_id=o2&_revinclude=Provenance:target:Patient", "", sys.AccessToken,
			nil, []string{"Observation/o2:match"}},
		{"_revinclude=Provenance:* counts as asking", "GET", "/Observation?_id=o2,o3&_revinclude=Provenance:*", "", sys.AccessToken,
			[]string{"generated=>Observation/o2/_history/2", "generated=>Observation/o3/_history/1"},
			[]string{"Observation/o2:match", "Observation/o3:match"}},
		{"another _revinclude is not asking for Provenance", "GET", "/Patient?_id=m1&_revinclude=Observation:subject", "", sys.AccessToken,
			nil, []string{"Observation/o1:include", "Observation/o2:include", "Patient/m1:match"}},
		{"generated only for the matches, not for the included", "GET", "/Observation?_id=o2&_include=Observation:subject&_revinclude=Provenance:target", "", sys.AccessToken,
			[]string{"generated=>Observation/o2/_history/2"}, []string{"Observation/o2:match", "Patient/m1:include"}},
		{"_revinclude:iterate: for the included too", "GET", "/Observation?_id=o2&_include=Observation:subject&_revinclude:iterate=Provenance:target", "", sys.AccessToken,
			[]string{"generated=>Observation/o2/_history/2", "generated=>Patient/m1/_history/1"}, []string{"Observation/o2:match", "Patient/m1:include"}},
		{"the payer's Organization with the Provenance's agents", "GET", "/Encounter?patient=Patient/m1&_revinclude=Provenance:target&_include:iterate=Provenance:agent", "", sys.AccessToken,
			[]string{"generated=>Encounter/e2/_history/1", "stored:prov-e1=>Encounter/e1"},
			[]string{"Encounter/e1:match", "Encounter/e2:match", "Organization/payer-a:include"}},
		{"the agents asked as Organizations", "GET", "/Encounter?patient=Patient/m1&_revinclude=Provenance:target&_include:iterate=Provenance:agent:Organization", "", member.AccessToken,
			[]string{"generated=>Encounter/e2/_history/1", "stored:prov-e1=>Encounter/e1"},
			[]string{"Encounter/e1:match", "Encounter/e2:match", "Organization/payer-a:include"}},
		{"agents of another type asked: no Organization", "GET", "/Encounter?patient=Patient/m1&_revinclude=Provenance:target&_include:iterate=Provenance:agent:Practitioner", "", sys.AccessToken,
			[]string{"generated=>Encounter/e2/_history/1", "stored:prov-e1=>Encounter/e1"},
			[]string{"Encounter/e1:match", "Encounter/e2:match"}},
		{"the agents asked without Provenance: nothing", "GET", "/Encounter?patient=Patient/m1&_include:iterate=Provenance:agent", "", sys.AccessToken,
			nil, []string{"Encounter/e1:match", "Encounter/e2:match"}},
		{"POST _search with _revinclude in the form", "POST", "/Encounter/_search", "patient=Patient/m1&_revinclude=Provenance:target", sys.AccessToken,
			[]string{"generated=>Encounter/e2/_history/1", "stored:prov-e1=>Encounter/e1"},
			[]string{"Encounter/e1:match", "Encounter/e2:match"}},
		{"an admin token asking gets them too", "GET", "/Observation?_id=o2&_revinclude=Provenance:target", "", adminTok,
			[]string{"generated=>Observation/o2/_history/2"}, []string{"Observation/o2:match"}},
		{"a token that may not read Provenance", "GET", "/Observation?_revinclude=Provenance:target", "", noProv.AccessToken,
			nil, []string{"Observation/o1:match", "Observation/o2:match"}},
		{"$everything carries Provenance and the payer, even for an admin", "GET", "/Patient/m1/$everything", "", adminTok,
			[]string{"generated=>Encounter/e2/_history/1", "generated=>Observation/o2/_history/2", "generated=>Patient/m1/_history/1",
				"stored:prov-e1=>Encounter/e1", "stored:prov1=>Observation/o1"},
			[]string{"Encounter/e1:match", "Encounter/e2:match", "Observation/o1:match", "Observation/o2:match", "Organization/payer-a:include", "Patient/m1:match"}},
		{"$everything with the member's token", "GET", "/Patient/m1/$everything?_type=Observation", "", member.AccessToken,
			[]string{"generated=>Observation/o2/_history/2", "stored:prov1=>Observation/o1"},
			// The payer's Organization is no member's data: it comes along
			// with the Provenance that names it.
			[]string{"Observation/o1:match", "Observation/o2:match", "Organization/payer-a:include"}},
	}
	for _, c := range cases {
		var r *served
		if c.method == "POST" {
			r = e.form(c.path, c.token, c.form)
		} else {
			r = e.get("GET", c.path, c.token, "")
		}
		if r.status != 200 {
			t.Errorf("%s: %d %s", c.name, r.status, r.body)
			continue
		}
		prov, other := r.provenances(t)
		if !slices.Equal(prov, c.prov) || !slices.Equal(other, c.other) {
			t.Errorf("%s:\n provenance %v\n want       %v\n others     %v\n want       %v", c.name, prov, c.prov, other, c.other)
		}
		if r.bundle.Total == nil {
			t.Errorf("%s: total lost", c.name)
		}
	}

	// Later pages, whose links carry only a cursor, follow the search
	// they page through; the total counts matches only.
	for _, c := range []struct {
		search string
		prov   []string
	}{
		{"/Observation?_count=1&_total=accurate&_revinclude=Provenance:target", []string{"generated=>Observation/o2/_history/2"}},
		{"/Observation?_count=1&_total=accurate", nil},
	} {
		first := e.get("GET", c.search, sys.AccessToken, "")
		if *first.bundle.Total != 3 {
			t.Errorf("%s: total %d", c.search, *first.bundle.Total)
		}
		var next string
		for _, l := range first.bundle.Link {
			if l.Relation == "next" {
				next = l.URL
			}
		}
		if prov, other := e.get("GET", next, sys.AccessToken, "").provenances(t); !slices.Equal(prov, c.prov) || !slices.Equal(other, []string{"Observation/o2:match"}) {
			t.Errorf("%s, second page: %v %v", c.search, prov, other)
		}
	}
	// Single reads and errors pass untouched.
	if r := e.get("GET", "/Observation/o2", sys.AccessToken, ""); r.status != 200 || strings.Contains(string(r.body), "Provenance") {
		t.Errorf("read: %d %s", r.status, r.body)
	}
	if r := e.get("GET", "/Observation/none", sys.AccessToken, ""); r.status != 404 || !strings.Contains(string(r.body), "OperationOutcome") {
		t.Errorf("404: %d %s", r.status, r.body)
	}
	if r := e.get("GET", "/Coverage?_count=1", sys.AccessToken, ""); r.status != 200 || len(r.bundle.Entry) != 0 {
		t.Errorf("empty search: %d %s", r.status, r.body)
	}

	// The receiving payer can store what it got: a generated Provenance is
	// a valid resource.
	r := e.get("GET", "/Observation?_id=o2&_revinclude=Provenance:target", sys.AccessToken, "")
	var gen json.RawMessage
	for _, en := range r.bundle.Entry {
		if strings.HasPrefix(en.FullURL, "urn:uuid:") {
			gen = en.Resource
		}
	}
	if w := e.get("POST", "/Provenance", adminTok, string(gen)); w.status != 201 {
		t.Errorf("storing a generated Provenance: %d %s", w.status, w.body)
	}
	if strings.Contains(e.logs.String(), "level=ERROR") {
		t.Errorf("errors logged: %s", e.logs.String())
	}
}
