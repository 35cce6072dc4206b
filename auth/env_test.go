package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

const (
	adminToken = "admin-token-0123456789abcdef"
	secretKey  = "0000000000000000000000000000000000000000000000000000000000000007"
)

var (
	regOnce  sync.Once
	registry *search.Registry
)

// env is a p2pserver's authorization surface on a real loopback server:
// the FHIR API behind the guard, the SMART configuration, the token
// endpoint and key set, and /api/backend_clients, wired as cmd/p2pserver
// wires them. restart closes everything but the listener and opens it
// again on the same database, as a restarted process would.
type env struct {
	t       testing.TB
	hs      *httptest.Server
	base    string
	dbPath  string
	issuers []smart.Issuer
	opts    []func(*auth.Config)

	handler atomic.Pointer[http.Handler]
	db      store.DB
	st      *store.Store
	srv     *auth.Server
	guard   *smart.Guard
	api     chi.Router
	logs    *bytes.Buffer
}

func newEnv(t *testing.T, issuers []smart.Issuer, opts ...func(*auth.Config)) *env {
	t.Helper()
	return newEnvTB(t, issuers, opts...)
}

func newEnvTB(t testing.TB, issuers []smart.Issuer, opts ...func(*auth.Config)) *env {
	t.Helper()
	regOnce.Do(func() { registry = search.NewRegistry(spec.R4()) })
	e := &env{t: t, dbPath: storetest.DSN(t), issuers: issuers, opts: opts, logs: &bytes.Buffer{}}
	e.hs = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*e.handler.Load()).ServeHTTP(w, r)
	}))
	e.base = "http://" + e.hs.Listener.Addr().String()
	e.open()
	e.hs.Start()
	t.Cleanup(func() {
		e.hs.Close()
		e.close()
	})
	return e
}

func (e *env) tokenURL() string { return e.base + auth.TokenPath }
func (e *env) fhirBase() string { return e.base + "/fhir" }

func (e *env) open() {
	t := e.t
	t.Helper()
	db, err := store.OpenDB(context.Background(), e.dbPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: e.logs}, nil))
	st, err := store.Open(db, registry, log)
	if err != nil {
		t.Fatal(err)
	}
	cipher, err := secrets.NewCipher(secretKey)
	if err != nil {
		t.Fatal(err)
	}
	authz, err := httpapi.NewAuthorizer(log, httpapi.Role{Name: "admin", Tokens: []string{adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := auth.Config{BaseURL: e.base, Cipher: cipher, Admin: authz.Require("admin"), Logger: log}
	for _, o := range e.opts {
		o(&cfg)
	}
	srv, err := auth.New(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fs := fhir.New(st, fhir.Config{BaseURL: e.fhirBase(), Logger: log})
	guard, err := smart.New(smart.Config{BaseURL: e.fhirBase(), Issuers: e.issuers, AdminTokens: []string{adminToken}, Backend: srv, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	guard.Attach(fs)
	r := chi.NewRouter()
	r.Method(http.MethodGet, "/fhir"+smart.WellKnownPath(), guard.ConfigurationHandler())
	r.Mount("/fhir", fs.Handler())
	r.Mount("/auth", srv.Handler())
	api := httpapi.NewRouter(log)
	srv.MountAPI(api)
	r.Mount("/api", api)
	var h http.Handler = r
	e.handler.Store(&h)
	e.db, e.st, e.srv, e.guard, e.api = db, st, srv, guard, api
}

func (e *env) close() {
	e.srv.Close()
	e.st.Close()
	e.db.Close()
}

// restart stops the server and opens it again on the same database.
func (e *env) restart() {
	e.t.Helper()
	e.close()
	e.open()
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

type answer struct {
	status int
	header http.Header
	body   []byte
	json   map[string]any
}

// do sends a request with a bearer token and a JSON (or FHIR JSON) body.
func (e *env) do(method, path, token string, body any) *answer {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		ct := "application/json"
		if strings.HasPrefix(path, "/fhir") {
			ct = "application/fhir+json"
		}
		req.Header.Set("Content-Type", ct)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	a := &answer{status: resp.StatusCode, header: resp.Header}
	a.body, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(a.body, &a.json)
	return a
}

// fixtures: two members with data, and what belongs to no one.
var fixtures = []string{
	`{"resourceType":"Patient","id":"p1","name":[{"family":"One"}]}`,
	`{"resourceType":"Patient","id":"p2","name":[{"family":"Two"}]}`,
	`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`,
	`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}`,
	`{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}`,
	`{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Who"}]}`,
}

func (e *env) load() {
	e.t.Helper()
	for _, f := range fixtures {
		var m map[string]any
		_ = json.Unmarshal([]byte(f), &m)
		if a := e.do("PUT", "/fhir/"+m["resourceType"].(string)+"/"+m["id"].(string), adminToken, f); a.status != 201 {
			e.t.Fatalf("load %s: %d %s", f, a.status, a.body)
		}
	}
}

// ids returns "Type/id" of a searchset's entries.
func (a *answer) ids() []string {
	var out []string
	entries, _ := a.json["entry"].([]any)
	for _, en := range entries {
		res := en.(map[string]any)["resource"].(map[string]any)
		out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
	}
	return out
}
