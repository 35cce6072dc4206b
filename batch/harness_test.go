package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	td "github.com/p2pserver/p2pserver/internal/testdata"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/secrets"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

var (
	regOnce  sync.Once
	registry *search.Registry
)

func testRegistry() *search.Registry {
	regOnce.Do(func() { registry = search.NewRegistry(spec.R4()) })
	return registry
}

const (
	adminToken      = "admin-token-0123456789abcdef"
	backOfficeToken = "back-office-token-0123456789"
	sourceAdmin     = "source-admin-token-0123456789"
	clientID        = "target-payer"
	clientSecret    = "target-payer-secret"
	testKey         = "0000000000000000000000000000000000000000000000000000000000000001"
	mdmSystem       = "urn:p2pserver:test:source-member-id"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// sourcePayer is a second p2pserver acting as the source payer: a real FHIR
// server on loopback with Patient/$everything and paged searches, guarded
// by SMART bearer tokens from the in-process OpenID provider. fault, when
// set, sees every FHIR request first and may answer it instead.
type sourcePayer struct {
	t     testing.TB
	URL   string // FHIR base
	idp   *oidctest.Provider
	db    store.DB
	fhir  *fhir.Server
	fault atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
	hits  atomic.Int64
}

func newSource(t testing.TB, idp *oidctest.Provider) *sourcePayer {
	t.Helper()
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, testRegistry(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	hs := httptest.NewServer(mux)
	s := &sourcePayer{t: t, URL: hs.URL + "/fhir", idp: idp, db: db}
	s.fhir = fhir.New(st, fhir.Config{BaseURL: s.URL, MaxBody: 64 << 20, MaxCount: 1000, Logger: testLogger(t)})
	s.fhir.EnableEverything(fhir.EverythingOptions{})
	guard, err := smart.New(smart.Config{BaseURL: s.URL, Issuers: []smart.Issuer{{URL: idp.Issuer()}},
		AdminTokens: []string{sourceAdmin}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	guard.Attach(s.fhir)
	mux.Method(http.MethodGet, "/fhir"+smart.WellKnownPath(), guard.ConfigurationHandler())
	h := s.fhir.Handler()
	mux.Mount("/fhir", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if f := s.fault.Load(); f != nil && (*f)(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		hs.Close()
		st.Close()
		db.Close()
	})
	return s
}

// setFault installs f in front of the source's FHIR API (nil removes it).
func (s *sourcePayer) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	if f == nil {
		s.fault.Store(nil)
		return
	}
	s.fault.Store(&f)
}

// load posts Synthea patient bundles as transactions and returns each
// bundle's Patient id at the source.
func (s *sourcePayer) load(names ...string) []string {
	s.t.Helper()
	var ids []string
	for _, name := range names {
		files, _ := filepath.Glob(filepath.Join(td.Dir, "synthea", name+"*.json"))
		if len(files) != 1 {
			s.t.Fatalf("synthea bundle %s: %v", name, files)
		}
		raw, err := os.ReadFile(files[0])
		if err != nil {
			s.t.Fatal(err)
		}
		var out map[string]any
		if st := s.do(http.MethodPost, "", sourceAdmin, raw, &out); st != http.StatusOK {
			s.t.Fatalf("load %s: status %d %v", name, st, out)
		}
		for _, e := range out["entry"].([]any) {
			loc := e.(map[string]any)["response"].(map[string]any)["location"].(string)
			loc = strings.TrimPrefix(loc, s.URL+"/")
			if rest, ok := strings.CutPrefix(loc, "Patient/"); ok {
				ids = append(ids, rest[:strings.Index(rest, "/")])
			}
		}
	}
	return ids
}

// do sends a request to the source's FHIR API.
func (s *sourcePayer) do(method, path, token string, body []byte, out any) int {
	s.t.Helper()
	u := s.URL + path
	if strings.HasPrefix(path, "http") {
		u = path
	}
	req, _ := http.NewRequest(method, u, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			s.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return resp.StatusCode
}

// everything returns "Type/id" of every resource the source serves for
// request (all pages), read with the admin token.
func (s *sourcePayer) everything(request string) []string {
	s.t.Helper()
	var out []string
	next := s.URL + "/" + request
	for next != "" {
		var b map[string]any
		if st := s.do(http.MethodGet, next, sourceAdmin, nil, &b); st != http.StatusOK {
			s.t.Fatalf("GET %s: %d %v", next, st, b)
		}
		next = ""
		for _, l := range listOf(b["link"]) {
			if l["relation"] == "next" {
				next = l["url"].(string)
			}
		}
		for _, e := range listOf(b["entry"]) {
			res := e["resource"].(map[string]any)
			out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
		}
	}
	return out
}

func listOf(v any) []map[string]any {
	var out []map[string]any
	for _, e := range v.([]any) {
		out = append(out, e.(map[string]any))
	}
	return out
}

// targetPayer is this server: its FHIR API, the /api routes of the OIDC
// server definitions and batch jobs, and a Runner, over a database file
// that survives restart.
type targetPayer struct {
	t       testing.TB
	dbPath  string
	cfg     Config
	db      store.DB
	st      *store.Store
	fhir    *fhir.Server
	repo    *oidcservers.Repository
	runner  *Runner
	router  chi.Router
	handler atomic.Pointer[http.Handler]
	http    *httptest.Server
	URL     string // server root
	cipher  *secrets.Cipher
	// leaseDuration, when set, is the Runner's lease duration: its
	// leases are not renewed, and it looks for jobs every tenth of it
	// (see lease.Config).
	leaseDuration time.Duration
}

func newTarget(t testing.TB, cfg Config) *targetPayer {
	t.Helper()
	return newTargetAt(t, cfg, storetest.DSN(t))
}

// newTargetAt is newTarget on the database dsn.
func newTargetAt(t testing.TB, cfg Config, dsn string) *targetPayer {
	t.Helper()
	tg := &targetPayer{t: t, dbPath: dsn, cfg: cfg}
	tg.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*tg.handler.Load()).ServeHTTP(w, r)
	}))
	tg.URL = tg.http.URL
	var err error
	if tg.cipher, err = secrets.NewCipher(testKey); err != nil {
		t.Fatal(err)
	}
	tg.open()
	t.Cleanup(func() {
		tg.http.Close()
		tg.close()
	})
	return tg
}

// open wires the target over its database file, as cmd/p2pserver does.
func (tg *targetPayer) open() {
	t := tg.t
	db, err := store.OpenDB(context.Background(), tg.dbPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tg.db = db
	if tg.st, err = store.Open(db, testRegistry(), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	tg.fhir = fhir.New(tg.st, fhir.Config{BaseURL: tg.URL + "/fhir", Logger: testLogger(t)})
	if tg.repo, err = oidcservers.NewRepository(tg.st, tg.cipher); err != nil {
		t.Fatal(err)
	}
	cfg := tg.cfg
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if tg.leaseDuration > 0 && cfg.Leases == nil {
		cfg.Leases = lease.New(tg.st, lease.Config{Duration: tg.leaseDuration, Logger: cfg.Logger})
	}
	if tg.runner, err = New(tg.fhir, tg.repo, tg.cipher, cfg); err != nil {
		t.Fatal(err)
	}
	tg.repo.SetInUseCheck(tg.runner.InUse)
	auth, err := httpapi.NewAuthorizer(testLogger(t),
		httpapi.Role{Name: "admin", Setting: "-admin-token", Tokens: []string{adminToken}},
		httpapi.Role{Name: "back-office", Setting: "-backoffice-token", Tokens: []string{backOfficeToken}},
	)
	if err != nil {
		t.Fatal(err)
	}
	api := httpapi.NewRouter(testLogger(t))
	oidcservers.NewAPI(tg.repo, auth.Require("admin"), testLogger(t), httpapi.DefaultMaxBody).Mount(api)
	NewAPI(tg.runner, auth.Require("admin", "back-office"), testLogger(t), httpapi.DefaultMaxBody).Mount(api)
	root := chi.NewRouter()
	root.Mount("/fhir", tg.fhir.Handler())
	root.Mount("/api", api)
	tg.router = root
	var h http.Handler = root
	tg.handler.Store(&h)
	if err := tg.runner.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// close stops the runner and closes the store and database, in the order
// cmd/p2pserver must.
func (tg *targetPayer) close() {
	if tg.db == nil {
		return
	}
	tg.runner.Close()
	tg.st.Close()
	tg.db.Close()
	tg.db = nil
}

// restart is the server killed between pages and started again on the
// same database file.
func (tg *targetPayer) restart() {
	tg.close()
	tg.open()
}

// call sends an /api or /fhir request to the target.
func (tg *targetPayer) call(method, path, token string, body any, out any) (int, http.Header) {
	tg.t.Helper()
	var rd io.Reader
	ct := ""
	switch b := body.(type) {
	case nil:
	case string:
		rd, ct = strings.NewReader(b), "application/json"
	default:
		raw, _ := json.Marshal(b)
		rd, ct = bytes.NewReader(raw), "application/json"
	}
	req, _ := http.NewRequest(method, tg.URL+path, rd)
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tg.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			tg.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
		}
	}
	return resp.StatusCode, resp.Header
}

// putResource stores a resource on the target through its FHIR API.
func (tg *targetPayer) putResource(typ, id, body string) {
	tg.t.Helper()
	req, _ := http.NewRequest(http.MethodPut, tg.URL+"/fhir/"+typ+"/"+id, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tg.t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		tg.t.Fatalf("PUT %s/%s: %d %s", typ, id, resp.StatusCode, raw)
	}
}

// define registers the source payer's OIDC server definition.
func (tg *targetPayer) define(src *sourcePayer) int64 {
	tg.t.Helper()
	src.idp.AddClient(clientID, clientSecret)
	srv, err := tg.repo.Create(context.Background(), oidcservers.Server{
		Name: "Source Payer A", Issuer: src.idp.Issuer(), ClientID: clientID, ClientSecret: clientSecret,
		FHIREndpoint: src.URL, TokenEndpoint: src.idp.TokenEndpoint(), OrganizationID: "PAYRA",
		CustomTokenParams: "memberId=m-1",
	})
	if err != nil {
		tg.t.Fatal(err)
	}
	return srv.PID
}

// startJob posts a batch job and returns its id.
func (tg *targetPayer) startJob(pid int64, body map[string]any) int64 {
	tg.t.Helper()
	var job Job
	st, _ := tg.call(http.MethodPost, fmt.Sprintf("/api/oidc_servers/%d/batch_job", pid), backOfficeToken, body, &job)
	if st != http.StatusAccepted {
		tg.t.Fatalf("POST batch_job: %d %+v", st, job)
	}
	return job.BatchJobID
}

// job reads a job through the API.
func (tg *targetPayer) job(pid, id int64) Job {
	tg.t.Helper()
	var job Job
	if st, _ := tg.call(http.MethodGet, fmt.Sprintf("/api/oidc_servers/%d/batch_job/%d", pid, id), adminToken, nil, &job); st != http.StatusOK {
		tg.t.Fatalf("GET batch_job: %d", st)
	}
	return job
}

// wait polls a job until cond holds. The deadline is generous: it only
// bounds a broken run, it is not what the test measures.
func (tg *targetPayer) wait(pid, id int64, what string, cond func(Job) bool) Job {
	tg.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		job := tg.job(pid, id)
		if cond(job) {
			return job
		}
		if time.Now().After(deadline) {
			tg.t.Fatalf("job %d: gave up waiting for %s; last seen %+v", id, what, job)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tg *targetPayer) waitEnd(pid, id int64) Job {
	tg.t.Helper()
	return tg.wait(pid, id, "the end", func(j Job) bool { return !j.BatchStatus.Active() })
}

// jobBody is a POST batch_job body.
func jobBody(tok, refresh, request, srcPatient, member, task string) map[string]any {
	b := map[string]any{
		"sourcePayer": map[string]any{"oidcToken": tok, "oidcRefreshToken": refresh, "fhirBundleRequest": request, "patientId": srcPatient},
		"targetPayer": map[string]any{"patientId": member, "organizationId": "PAYRB"},
	}
	if task != "" {
		b["taskId"] = task
	}
	return b
}

// memberJSON is the member's Patient at the target payer.
const memberJSON = `{"resourceType":"Patient","id":"member-1","identifier":[{"system":"urn:payer-b:members","value":"B-1"}],"name":[{"family":"Mueller","given":["Angelic"]}]}`

// addPayerTask is the member's add-payer Task, as the member portal creates it.
func addPayerTask(id, member string) string {
	return `{"resourceType":"Task","id":"` + id + `",
	"identifier":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","value":"` + member + `-PAYRB-2024-05-09T20:36:18Z"}],
	"status":"requested","intent":"original-order","priority":"routine",
	"code":{"coding":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","code":"p2p-request-add-provider-id","display":"p2p-request-add-provider-id"}],"text":"Add Payer"},
	"authoredOn":"2024-05-09T20:36:18Z","lastModified":"2024-05-09T20:36:18Z",
	"requester":{"reference":"Patient/` + member + `","type":"Patient"},
	"owner":{"reference":"Organization/PAYRB"},
	"input":[
	 {"type":{"coding":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","code":"requester-first-name","display":"display"}],"text":"Angelic"},"valueString":"Angelic"},
	 {"type":{"coding":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","code":"requester-last-name","display":"display"}],"text":"Mueller"},"valueString":"Mueller"},
	 {"type":{"coding":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","code":"new-payer-name","display":"display"}],"text":"Source Payer A"},"valueString":"Source Payer A"},
	 {"type":{"coding":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","code":"requester-email","display":"display"}],"text":"angelic@example.org"},"valueString":"angelic@example.org"},
	 {"type":{"coding":[{"system":"http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes","code":"requester-phone","display":"1111111111"}],"text":"1111111111"},"valueString":"1111111111"}]}`
}

// read returns the current JSON of a resource in the target's store.
func (tg *targetPayer) read(typ, id string) (*store.Version, error) {
	var v *store.Version
	err := tg.st.View(context.Background(), func(tx *store.Tx) (err error) {
		v, err = tx.Read(typ, id)
		return err
	})
	return v, err
}

// ingested returns every resource in the target whose meta.source is at
// base, by local ref, decoded.
func (tg *targetPayer) ingested(base string) map[string]map[string]any {
	tg.t.Helper()
	out := map[string]map[string]any{}
	err := tg.st.View(context.Background(), func(tx *store.Tx) error {
		for _, typ := range testRegistry().Model().ResourceTypes() {
			ids := tx.AllIDs(typ)
			vs, err := tx.ReadCurrent(typ, ids)
			if err != nil {
				return err
			}
			for _, v := range vs {
				m, err := decodeMap(v.JSON)
				if err != nil {
					return err
				}
				meta, _ := m["meta"].(map[string]any)
				if src, _ := meta["source"].(string); strings.HasPrefix(src, base+"/") {
					out[typ+"/"+v.ID] = m
				}
			}
		}
		return nil
	})
	if err != nil {
		tg.t.Fatal(err)
	}
	return out
}

// walkRefs calls f with every string value of a member named "reference"
// in v, and replaces it with f's result when f reports a change.
func walkRefs(v any, f refFunc) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && k == "reference" {
				if to, changed := f(s); changed {
					x[k] = to
				}
				continue
			}
			walkRefs(val, f)
		}
	case []any:
		for _, e := range x {
			walkRefs(e, f)
		}
	}
}
