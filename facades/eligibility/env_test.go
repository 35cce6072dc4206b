package eligibility_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

var registry = search.NewRegistry(spec.R4())

const adminToken = "admin-token-0123456789abcdef"

// testKey is a fixed secret key for tests (32 bytes, base64).
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// env is a real p2pserver slice over HTTP on loopback: a real store, FHIR
// server, the eligibility Service with real connectors, /api router.
type env struct {
	t      *testing.T
	URL    string // server root
	FHIR   string // FHIR base
	dbPath string
	cfg    eligibility.Config
	conns  func(e *env) []eligibility.Connector
	// noCipher starts the service without a secret key.
	noCipher bool

	srv     *httptest.Server
	handler *swapHandler
	db      store.DB
	st      *store.Store
	fs      *fhir.Server
	svc     *eligibility.Service
	api     chi.Router
}

type swapHandler struct {
	mu sync.RWMutex
	h  http.Handler
}

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	h := s.h
	s.mu.RUnlock()
	if h == nil {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}

// newEnv starts the HTTP server first (vendors need its webhook URL), then
// calls conns to build the connectors, then wires everything.
func newEnv(t *testing.T, cfg eligibility.Config, conns func(e *env) []eligibility.Connector) *env {
	t.Helper()
	e := &env{t: t, cfg: cfg, conns: conns, dbPath: storetest.DSN(t), handler: &swapHandler{}}
	e.srv = httptest.NewServer(e.handler)
	e.URL = e.srv.URL
	e.FHIR = e.URL + "/fhir"
	t.Cleanup(func() {
		e.stop()
		e.srv.Close()
	})
	e.start()
	return e
}

func (e *env) start() {
	t := e.t
	t.Helper()
	db, err := store.OpenDB(context.Background(), e.dbPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs := fhir.New(st, fhir.Config{BaseURL: e.FHIR, MaxBody: 1 << 20})
	admin, err := httpapi.NewAuthorizer(nil, httpapi.Role{Name: "admin", Tokens: []string{adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	cipher, err := secrets.NewCipher(testKey)
	if err != nil {
		t.Fatal(err)
	}
	if e.noCipher {
		cipher = nil
	}
	svc, err := eligibility.New(fs, e.cfg, eligibility.Options{Connectors: e.conns(e), Cipher: cipher, Admin: admin.Require("admin")})
	if err != nil {
		t.Fatal(err)
	}
	root := chi.NewRouter()
	root.Mount("/fhir", fs.Handler())
	api := httpapi.NewRouter(nil)
	svc.Mount(api)
	root.Mount("/api", api)
	e.db, e.st, e.fs, e.svc, e.api = db, st, fs, svc, api
	e.handler.mu.Lock()
	e.handler.h = root
	e.handler.mu.Unlock()
	svc.Start(context.Background())
}

// stop closes the service, store and database, as a process exit would.
func (e *env) stop() {
	if e.svc == nil {
		return
	}
	e.handler.mu.Lock()
	e.handler.h = nil
	e.handler.mu.Unlock()
	_ = e.svc.Close()
	_ = e.st.Close()
	_ = e.db.Close()
	e.svc = nil
}

// restart stops and starts again on the same database.
func (e *env) restart() {
	e.stop()
	e.start()
}

type result struct {
	Status int
	Header http.Header
	Body   []byte
	JSON   map[string]any
}

func (e *env) do(method, url string, body any, header ...string) *result {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	if !strings.HasPrefix(url, "http") {
		url = e.URL + url
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
		if strings.Contains(url, "/api/") {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := &result{Status: resp.StatusCode, Header: resp.Header, Body: b}
	_ = json.Unmarshal(b, &r.JSON)
	return r
}

// eventually polls cond until it holds, failing after a generous deadline:
// tests wait for conditions, never for durations.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// read returns a resource's JSON, or nil when it does not exist.
func (e *env) read(typ, id string) map[string]any {
	e.t.Helper()
	r := e.do("GET", "/fhir/"+typ+"/"+id, nil)
	if r.Status != 200 {
		return nil
	}
	return r.JSON
}

// taskFor finds the Task tracking a request.
func (e *env) taskFor(reqID string) map[string]any {
	e.t.Helper()
	r := e.do("GET", "/fhir/Task?focus=CoverageEligibilityRequest/"+reqID, nil)
	if r.Status != 200 {
		e.t.Fatalf("task search: %d %s", r.Status, r.Body)
	}
	entries, _ := r.JSON["entry"].([]any)
	if len(entries) != 1 {
		return nil
	}
	return entries[0].(map[string]any)["resource"].(map[string]any)
}

// responseFor finds the CoverageEligibilityResponse of a request.
func (e *env) responseFor(reqID string) map[string]any {
	e.t.Helper()
	r := e.do("GET", "/fhir/CoverageEligibilityResponse?request=CoverageEligibilityRequest/"+reqID, nil)
	if r.Status != 200 {
		e.t.Fatalf("response search: %d %s", r.Status, r.Body)
	}
	entries, _ := r.JSON["entry"].([]any)
	if len(entries) == 0 {
		return nil
	}
	if len(entries) > 1 {
		e.t.Fatalf("request %s has %d responses", reqID, len(entries))
	}
	return entries[0].(map[string]any)["resource"].(map[string]any)
}

// validR4 fails the test when a resource is not valid R4.
func validR4(t *testing.T, res map[string]any) {
	t.Helper()
	b, _ := json.Marshal(res)
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	if issues := spec.R4().Validate(m); len(issues) > 0 {
		t.Fatalf("%s is not valid R4: %v\n%s", res["resourceType"], issues, b)
	}
}

// reqOpts shape a CoverageEligibilityRequest built by eligibilityRequest.
type reqOpts struct {
	payer, member, first, last, dob, state, gender, npi string
	pos, specialty, serviceType                         string
	relationship                                        string
	noItems                                             bool
}

func defaults() reqOpts {
	return reqOpts{payer: "60054", member: "M100", first: "Jane", last: "Doe", dob: "1980-09-20", state: "CA", gender: "female",
		npi: "1234567893", pos: "10", specialty: "PSY", serviceType: "MH", relationship: "self"}
}

// eligibilityRequest builds a request whose Patient, Coverage, insurer and
// provider are contained resources, as an intake form would send it.
func eligibilityRequest(o reqOpts) map[string]any {
	patient := map[string]any{"resourceType": "Patient", "id": "pat"}
	name := map[string]any{}
	if o.first != "" {
		name["given"] = []any{o.first}
	}
	if o.last != "" {
		name["family"] = o.last
	}
	if len(name) > 0 {
		patient["name"] = []any{name}
	}
	if o.dob != "" {
		patient["birthDate"] = o.dob
	}
	if o.gender != "" {
		patient["gender"] = o.gender
	}
	if o.state != "" {
		patient["address"] = []any{map[string]any{"state": o.state}}
	}
	coverage := map[string]any{"resourceType": "Coverage", "id": "cov", "status": "active",
		"beneficiary": map[string]any{"reference": "#pat"}, "payor": []any{map[string]any{"reference": "#ins"}}}
	if o.member != "" {
		coverage["subscriberId"] = o.member
	}
	if o.relationship != "" {
		coverage["relationship"] = map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": o.relationship}}}
	}
	org := map[string]any{"resourceType": "Organization", "id": "ins", "name": "Payer " + o.payer,
		"identifier": []any{map[string]any{"system": "http://example.org/payer-id", "value": o.payer}}}
	contained := []any{patient, coverage, org}
	req := map[string]any{
		"resourceType": "CoverageEligibilityRequest",
		"status":       "active",
		"purpose":      []any{"validation", "benefits"},
		"patient":      map[string]any{"reference": "#pat"},
		"created":      "2026-11-23",
		"servicedDate": "2026-11-30",
		"insurer":      map[string]any{"reference": "#ins"},
		"insurance":    []any{map[string]any{"focal": true, "coverage": map[string]any{"reference": "#cov"}}},
	}
	if o.npi != "" {
		role := map[string]any{"resourceType": "PractitionerRole", "id": "role",
			"identifier": []any{map[string]any{"system": "http://hl7.org/fhir/sid/us-npi", "value": o.npi}}}
		if o.specialty != "" {
			role["specialty"] = []any{map[string]any{"coding": []any{map[string]any{"code": o.specialty}}}}
		}
		contained = append(contained, role)
		req["provider"] = map[string]any{"reference": "#role"}
	}
	if !o.noItems {
		item := map[string]any{}
		if o.serviceType != "" {
			item["category"] = map[string]any{"coding": []any{map[string]any{"system": "https://x12.org/codes/service-type-codes", "code": o.serviceType}}}
		}
		if o.pos != "" {
			contained = append(contained, map[string]any{"resourceType": "Location", "id": "loc",
				"type": []any{map[string]any{"coding": []any{map[string]any{
					"system": "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set", "code": o.pos}}}}})
			item["facility"] = map[string]any{"reference": "#loc"}
		}
		if len(item) == 0 {
			item["category"] = map[string]any{"text": "any"}
		}
		req["item"] = []any{item}
	}
	req["contained"] = contained
	return req
}

// errorCode returns the eligibility error code of a response, "" if none.
func errorCode(resp map[string]any) string {
	errsList, _ := resp["error"].([]any)
	for _, e := range errsList {
		code, _ := e.(map[string]any)["code"].(map[string]any)
		for _, c := range code["coding"].([]any) {
			cm := c.(map[string]any)
			if cm["system"] == eligibility.ErrorSystem {
				return cm["code"].(string)
			}
		}
	}
	return ""
}

func errorText(resp map[string]any) string {
	errsList, _ := resp["error"].([]any)
	if len(errsList) == 0 {
		return ""
	}
	code, _ := errsList[0].(map[string]any)["code"].(map[string]any)
	s, _ := code["text"].(string)
	return s
}

func inforce(resp map[string]any) any {
	ins, _ := resp["insurance"].([]any)
	if len(ins) == 0 {
		return nil
	}
	return ins[0].(map[string]any)["inforce"]
}

func idOf(res map[string]any) string { s, _ := res["id"].(string); return s }
