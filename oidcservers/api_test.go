package oidcservers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/internal/apidoc/apidoctest"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

const (
	adminToken  = "admin-token-for-tests-0123"
	secretValue = "the-client-secret-that-must-never-leak"
	maxBody     = 16 << 10
)

// apiEnv is the real /api router over a real database, served over HTTP.
type apiEnv struct {
	t      *testing.T
	url    string
	repo   *Repository
	api    *API
	db     dbStore
	server *httptest.Server
	doc    *apidoctest.Validator

	mu     sync.Mutex
	bodies []response // every response, to search for secrets
}

type envConfig struct {
	dbPath string
	key    string
	tokens []string
}

func newAPIEnv(t *testing.T, cfg envConfig) *apiEnv {
	t.Helper()
	if cfg.dbPath == "" {
		cfg.dbPath = storetest.DSN(t)
	}
	db := openDB(t, cfg.dbPath)
	var c *secrets.Cipher
	if cfg.key != "" {
		c = newCipher(t, cfg.key)
	}
	repo, err := NewRepository(db.Store, c)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	admin, err := httpapi.Admin(logger, cfg.tokens)
	if err != nil {
		t.Fatal(err)
	}
	api := NewAPI(repo, admin, logger, maxBody)
	r := httpapi.NewRouter(logger)
	apidoc.Mount(r, "/api")
	api.Mount(r)
	root := chi.NewRouter()
	root.Mount("/api", r)
	apidoc.CheckRoutes(t, root)

	e := &apiEnv{t: t, repo: repo, api: api, db: db, doc: apidoctest.New(t)}
	e.server = httptest.NewServer(root)
	e.url = e.server.URL
	t.Cleanup(e.close)
	t.Cleanup(e.assertNoSecretLeaked)
	return e
}

func (e *apiEnv) close() {
	if e.server != nil {
		e.server.Close()
		e.db.Close()
		e.server = nil
	}
}

func (e *apiEnv) assertNoSecretLeaked() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.bodies {
		var hdr strings.Builder
		_ = r.header.Write(&hdr)
		if strings.Contains(hdr.String()+string(r.body), secretValue) {
			e.t.Errorf("a response carries the client secret:\n%s%s", hdr.String(), r.body)
		}
		// Only error responses may name the field (to say what is wrong with it).
		if r.status < 300 && strings.Contains(string(r.body), `"clientSecret"`) {
			e.t.Errorf("a successful response has a clientSecret field: %s", r.body)
		}
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v: %s", err, r.body)
	}
	return m
}

// errorFields returns the code and fields of an error response.
func (r response) errorOf(t *testing.T) (string, map[string]any) {
	t.Helper()
	m := r.json(t)
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("not an error response: %s", r.body)
	}
	f, _ := e["fields"].(map[string]any)
	code, _ := e["code"].(string)
	return code, f
}

// do sends a request; body "" sends none; contentType "" means JSON. Every
// documented exchange is checked against openapi.json.
func (e *apiEnv) do(method, path, token, body, contentType string) response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		if contentType == "" {
			contentType = "application/json"
		}
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	e.doc.Check(e.t, req, resp)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	out := response{status: resp.StatusCode, header: resp.Header, body: b}
	e.mu.Lock()
	e.bodies = append(e.bodies, out)
	e.mu.Unlock()
	return out
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// inputJSON is a valid POST body with the secret.
func inputJSON(change func(m map[string]any)) string {
	m := map[string]any{
		"name":              "P2P Source Payer A",
		"issuer":            "https://sourcepayerA.example/issuer",
		"clientId":          "p2pexchangeclientId",
		"clientSecret":      secretValue,
		"scopes":            "openid profile offline_access",
		"customTokenParams": "memberId",
		"authWellKnown":     "https://sourcepayerA.example/.well-known/openid-configuration",
		"tokenEndpoint":     "https://sourcepayerA.example/token-endpoint",
		"fhirEndpoint":      "https://sourcepayerA.example/fhir-endpoint",
		"responseType":      "code",
		"organizationId":    "ABCD",
	}
	if change != nil {
		change(m)
	}
	return mustJSON(m)
}

func TestAPICreateReadListReplaceDelete(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{adminToken}})
	ctx := context.Background()

	if r := e.do("GET", "/api/oidc_servers", "", "", ""); r.status != 200 || string(r.body) != "{\"servers\":[]}\n" {
		t.Fatalf("empty list: %d %s", r.status, r.body)
	}

	r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), "")
	if r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	if loc := r.header.Get("Location"); loc != "/api/oidc_servers/1" {
		t.Errorf("Location = %q", loc)
	}
	created := r.json(t)
	if created["pid"] != float64(1) || created["hasClientSecret"] != true {
		t.Errorf("created = %v", created)
	}
	b := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(func(m map[string]any) {
		m["name"], m["issuer"] = "P2P Source Payer B", "https://sourcepayerB.example"
		delete(m, "clientSecret")
	}), "")
	if b.status != 201 || b.json(t)["hasClientSecret"] != false {
		t.Fatalf("POST B: %d %s", b.status, b.body)
	}

	// The list is exactly the seed's shape.
	r = e.do("GET", "/api/oidc_servers", "", "", "")
	want := `{"servers":[{"pid":1,"name":"P2P Source Payer A"},{"pid":2,"name":"P2P Source Payer B"}]}` + "\n"
	if r.status != 200 || string(r.body) != want {
		t.Errorf("list = %d %s, want %s", r.status, r.body, want)
	}

	// One definition: the seed's sample fields, with the values given.
	r = e.do("GET", "/api/oidc_servers/1", "", "", "")
	got := r.json(t)
	for k, v := range map[string]any{
		"pid": float64(1), "name": "P2P Source Payer A", "issuer": "https://sourcepayerA.example/issuer",
		"clientId": "p2pexchangeclientId", "scopes": "openid profile offline_access", "customTokenParams": "memberId",
		"authWellKnown": "https://sourcepayerA.example/.well-known/openid-configuration",
		"tokenEndpoint": "https://sourcepayerA.example/token-endpoint", "fhirEndpoint": "https://sourcepayerA.example/fhir-endpoint",
		"responseType": "code", "organizationId": "ABCD", "hasClientSecret": true,
	} {
		if got[k] != v {
			t.Errorf("GET field %s = %v, want %v", k, got[k], v)
		}
	}

	// PUT of what GET returned keeps the secret.
	got["notes"] = "Registration: https://sourcepayerA.example/register"
	r = e.do("PUT", "/api/oidc_servers/1", adminToken, mustJSON(got), "")
	if r.status != 200 || r.json(t)["notes"] != got["notes"] || r.json(t)["hasClientSecret"] != true {
		t.Fatalf("PUT as read: %d %s", r.status, r.body)
	}
	if s, _ := e.repo.Get(ctx, 1); s.ClientSecret != secretValue {
		t.Errorf("secret after PUT without it = %q", s.ClientSecret)
	}
	// PUT with a new secret replaces it; with "" removes it.
	r = e.do("PUT", "/api/oidc_servers/1", adminToken, inputJSON(func(m map[string]any) { m["clientSecret"] = secretValue + "-2" }), "")
	if r.status != 200 {
		t.Fatalf("PUT new secret: %d %s", r.status, r.body)
	}
	if s, _ := e.repo.Get(ctx, 1); s.ClientSecret != secretValue+"-2" {
		t.Errorf("secret after PUT with one = %q", s.ClientSecret)
	}
	r = e.do("PUT", "/api/oidc_servers/1", adminToken, inputJSON(func(m map[string]any) { m["clientSecret"] = "" }), "")
	if r.status != 200 || r.json(t)["hasClientSecret"] != false {
		t.Fatalf("PUT removing secret: %d %s", r.status, r.body)
	}
	// PUT replaces every field: notes left out are gone.
	if r.json(t)["notes"] != nil {
		t.Errorf("PUT kept a field it did not send: %s", r.body)
	}

	if r := e.do("DELETE", "/api/oidc_servers/2", adminToken, "", ""); r.status != 204 || len(r.body) != 0 {
		t.Errorf("DELETE: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/api/oidc_servers/2", "", "", ""); r.status != 404 {
		t.Errorf("GET deleted: %d", r.status)
	}
	if r := e.do("DELETE", "/api/oidc_servers/2", adminToken, "", ""); r.status != 404 {
		t.Errorf("DELETE deleted: %d", r.status)
	}
	if r := e.do("PUT", "/api/oidc_servers/2", adminToken, inputJSON(nil), ""); r.status != 404 {
		t.Errorf("PUT deleted: %d", r.status)
	}
	if r := e.do("POST", "/api/oidc_servers/2/verify", adminToken, "", ""); r.status != 404 {
		t.Errorf("verify deleted: %d", r.status)
	}
	for _, id := range []string{"0", "-1", "abc", "1.5", "99999999999999999999"} {
		r := e.do("GET", "/api/oidc_servers/"+id, "", "", "")
		if code, _ := r.errorOf(t); r.status != 404 || code != "not-found" {
			t.Errorf("GET id %q: %d %s", id, r.status, r.body)
		}
	}
	// Routes and methods that do not exist answer in the JSON error shape.
	req, _ := http.NewRequest("PATCH", e.url+"/api/oidc_servers/1", strings.NewReader("{}"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Errorf("PATCH: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestAPIPidInBody(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{adminToken}})
	r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(func(m map[string]any) { m["pid"] = 7 }), "")
	if code, f := r.errorOf(t); r.status != 400 || code != "invalid" || f["pid"] == nil {
		t.Errorf("POST with pid: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), ""); r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	r = e.do("PUT", "/api/oidc_servers/1", adminToken, inputJSON(func(m map[string]any) { m["pid"] = 2 }), "")
	if _, f := r.errorOf(t); r.status != 400 || f["pid"] == nil {
		t.Errorf("PUT with another pid: %d %s", r.status, r.body)
	}
	if r := e.do("PUT", "/api/oidc_servers/1", adminToken, inputJSON(func(m map[string]any) { m["pid"] = 1 }), ""); r.status != 200 {
		t.Errorf("PUT with its own pid: %d %s", r.status, r.body)
	}
}

func TestAPIValidationErrors(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{adminToken}})
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), ""); r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	set := func(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
	drop := func(k string) func(map[string]any) { return func(m map[string]any) { delete(m, k) } }
	other := func(f func(map[string]any)) func(map[string]any) {
		return func(m map[string]any) { m["issuer"] = "https://other.example"; f(m) }
	}
	tests := []struct {
		name   string
		body   string
		status int
		code   string
		field  string
	}{
		{"duplicate issuer", inputJSON(nil), 409, "conflict", "issuer"},
		{"duplicate issuer trailing slash", inputJSON(set("issuer", "https://sourcepayerA.example/issuer/")), 409, "conflict", "issuer"},
		{"name missing", inputJSON(other(drop("name"))), 400, "invalid", "name"},
		{"issuer missing", inputJSON(drop("issuer")), 400, "invalid", "issuer"},
		{"issuer not a URL", inputJSON(set("issuer", "sourcepayerA")), 400, "invalid", "issuer"},
		{"issuer with query", inputJSON(set("issuer", "https://x.example/?a=1")), 400, "invalid", "issuer"},
		{"clientId missing", inputJSON(other(drop("clientId"))), 400, "invalid", "clientId"},
		{"clientSecret too long", inputJSON(other(set("clientSecret", strings.Repeat("s", 4097)))), 400, "invalid", "clientSecret"},
		{"fhirEndpoint missing", inputJSON(other(drop("fhirEndpoint"))), 400, "invalid", "fhirEndpoint"},
		{"fhirEndpoint relative", inputJSON(other(set("fhirEndpoint", "/fhir"))), 400, "invalid", "fhirEndpoint"},
		{"authWellKnown ftp", inputJSON(other(set("authWellKnown", "ftp://x.example/wk"))), 400, "invalid", "authWellKnown"},
		{"tokenEndpoint credentials", inputJSON(other(set("tokenEndpoint", "https://u:p@x.example/token"))), 400, "invalid", "tokenEndpoint"},
		{"responseType", inputJSON(other(set("responseType", "password"))), 400, "invalid", "responseType"},
		{"scopes", inputJSON(other(set("scopes", "openid \"bad\""))), 400, "invalid", "scopes"},
		{"customTokenParams reserved", inputJSON(other(set("customTokenParams", "grant_type=password"))), 400, "invalid", "customTokenParams"},
		{"jwkText private key", inputJSON(other(set("jwkText", `{"kty":"oct","k":"AAAA"}`))), 400, "invalid", "jwkText"},
		{"organizationId too long", inputJSON(other(set("organizationId", strings.Repeat("o", 300)))), 400, "invalid", "organizationId"},
		{"notes too long", inputJSON(other(set("notes", strings.Repeat("n", 16<<10+1)))), 413, "too-large", ""},
		{"unknown field", inputJSON(other(set("client_secret", "x"))), 400, "invalid", "client_secret"},
		{"wrong type", inputJSON(other(set("scopes", []string{"openid"}))), 400, "invalid", "scopes"},
		{"malformed", `{"name":`, 400, "invalid", ""},
		{"trailing data", inputJSON(other(drop("x"))) + `{}`, 400, "invalid", ""},
		{"array", `[]`, 400, "invalid", ""},
		{"too large", inputJSON(other(set("notes", strings.Repeat("n", maxBody)))), 413, "too-large", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/api/oidc_servers", adminToken, tc.body, "")
			code, fields := r.errorOf(t)
			if r.status != tc.status || code != tc.code {
				t.Fatalf("got %d %s, want %d %s: %s", r.status, code, tc.status, tc.code, r.body)
			}
			if tc.field != "" && fields[tc.field] == nil {
				t.Errorf("fields %v do not name %s", fields, tc.field)
			}
		})
	}

	// Every problem at once, each by field.
	r := e.do("POST", "/api/oidc_servers", adminToken, `{"issuer":"x","responseType":"y","fhirEndpoint":"z"}`, "")
	_, fields := r.errorOf(t)
	for _, f := range []string{"name", "issuer", "clientId", "fhirEndpoint", "responseType"} {
		if fields[f] == nil {
			t.Errorf("multi-error response lacks %s: %s", f, r.body)
		}
	}
	// The same rules on PUT.
	r = e.do("PUT", "/api/oidc_servers/1", adminToken, inputJSON(set("responseType", "bogus")), "")
	if _, f := r.errorOf(t); r.status != 400 || f["responseType"] == nil {
		t.Errorf("PUT invalid: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/api/oidc_servers", adminToken, "name=x", "application/x-www-form-urlencoded"); r.status != 415 {
		t.Errorf("form body: %d %s", r.status, r.body)
	}
	if r := e.do("PUT", "/api/oidc_servers/1", adminToken, inputJSON(nil), "text/plain"); r.status != 415 {
		t.Errorf("PUT text/plain: %d %s", r.status, r.body)
	}
	// Nothing invalid was stored.
	if r := e.do("GET", "/api/oidc_servers", "", "", ""); !strings.Contains(string(r.body), `"pid":1`) || strings.Contains(string(r.body), `"pid":2`) {
		t.Errorf("list after refusals: %s", r.body)
	}
}

// TestAPIEveryProblemAtOnce: a body with problems of every kind (unknown
// field, wrong JSON type, pid, missing and invalid values, an issuer
// already registered) is answered with all of them in one 400, on POST and
// PUT, and nothing is stored.
func TestAPIEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{adminToken}})
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), ""); r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(func(m map[string]any) { m["issuer"] = "https://b.example" }), ""); r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	bad := inputJSON(func(m map[string]any) {
		delete(m, "name")
		m["client_secret"] = "x"                     // unknown
		m["scopes"] = []string{"openid"}             // wrong type
		m["tokenEndpoint"] = "ftp://x.example/token" // invalid
		m["responseType"] = "password"               // invalid
		m["pid"] = 9
	})
	want := []string{"name", "client_secret", "scopes", "tokenEndpoint", "responseType", "pid", "issuer"}
	for _, c := range []struct{ method, path string }{{"POST", "/api/oidc_servers"}, {"PUT", "/api/oidc_servers/2"}} {
		r := e.do(c.method, c.path, adminToken, bad, "")
		code, fields := r.errorOf(t)
		if r.status != 400 || code != "invalid" {
			t.Errorf("%s: %d %s", c.method, r.status, r.body)
		}
		for _, f := range want {
			if fields[f] == nil {
				t.Errorf("%s: the answer does not name %s: %s", c.method, f, r.body)
			}
		}
		if !strings.Contains(fmt.Sprint(fields["issuer"]), "already registered") {
			t.Errorf("%s: issuer %v", c.method, fields["issuer"])
		}
	}
	if r := e.do("GET", "/api/oidc_servers/2", "", "", ""); !strings.Contains(string(r.body), "https://b.example") {
		t.Errorf("a refused PUT changed the definition: %s", r.body)
	}
	if r := e.do("GET", "/api/oidc_servers/3", "", "", ""); r.status != 404 {
		t.Errorf("a refused POST stored a definition: %d", r.status)
	}
}

func TestAPIAdminAuthOnEveryWriteRoute(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{"other-admin-token-abcdef", adminToken}})
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), ""); r.status != 201 {
		t.Fatalf("POST: %d %s", r.status, r.body)
	}
	routes := []struct{ method, path, body string }{
		{"POST", "/api/oidc_servers", inputJSON(func(m map[string]any) { m["issuer"] = "https://new.example" })},
		{"PUT", "/api/oidc_servers/1", inputJSON(nil)},
		{"POST", "/api/oidc_servers/1/verify", ""},
		{"DELETE", "/api/oidc_servers/1", ""},
	}
	for _, rt := range routes {
		for _, tok := range []string{"", "wrong-token-wrong-token", adminToken + "x"} {
			r := e.do(rt.method, rt.path, tok, rt.body, "")
			code, _ := r.errorOf(t)
			if r.status != 401 || code != "unauthorized" || !strings.HasPrefix(r.header.Get("WWW-Authenticate"), `Bearer realm="p2pserver"`) {
				t.Errorf("%s %s with token %q: %d %q %s", rt.method, rt.path, tok, r.status, r.header.Get("WWW-Authenticate"), r.body)
			}
		}
	}
	// Nothing changed.
	if r := e.do("GET", "/api/oidc_servers", "", "", ""); string(r.body) != `{"servers":[{"pid":1,"name":"P2P Source Payer A"}]}`+"\n" {
		t.Errorf("unauthorized requests changed state: %s", r.body)
	}
	// Both configured tokens work.
	if r := e.do("POST", "/api/oidc_servers/1/verify", "other-admin-token-abcdef", "", ""); r.status != 200 {
		t.Errorf("second admin token: %d %s", r.status, r.body)
	}
	for _, rt := range routes {
		if r := e.do(rt.method, rt.path, adminToken, rt.body, ""); r.status >= 300 {
			t.Errorf("%s %s with the admin token: %d %s", rt.method, rt.path, r.status, r.body)
		}
	}
}

func TestAPIWritesRefusedWithoutConfiguredToken(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t)})
	if _, err := e.repo.Create(context.Background(), validServer()); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []struct{ method, path string }{
		{"POST", "/api/oidc_servers"}, {"PUT", "/api/oidc_servers/1"}, {"DELETE", "/api/oidc_servers/1"}, {"POST", "/api/oidc_servers/1/verify"},
	} {
		for _, tok := range []string{"", adminToken} {
			r := e.do(rt.method, rt.path, tok, inputJSON(nil), "")
			if code, _ := r.errorOf(t); r.status != 403 || code != "forbidden" {
				t.Errorf("%s %s (token %q): %d %s", rt.method, rt.path, tok, r.status, r.body)
			}
		}
	}
	// Reads stay open.
	if r := e.do("GET", "/api/oidc_servers/1", "", "", ""); r.status != 200 {
		t.Errorf("GET: %d", r.status)
	}
}

func TestAPIDeleteRefusedWhileInUse(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{adminToken}})
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), ""); r.status != 201 {
		t.Fatalf("POST: %d", r.status)
	}
	running := true
	var mu sync.Mutex
	e.repo.SetInUseCheck(func(_ context.Context, pid int64) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return pid == 1 && running, nil
	})
	r := e.do("DELETE", "/api/oidc_servers/1", adminToken, "", "")
	if code, _ := r.errorOf(t); r.status != 409 || code != "conflict" || !strings.Contains(string(r.body), "batch job") {
		t.Errorf("DELETE while in use: %d %s", r.status, r.body)
	}
	mu.Lock()
	running = false
	mu.Unlock()
	if r := e.do("DELETE", "/api/oidc_servers/1", adminToken, "", ""); r.status != 204 {
		t.Errorf("DELETE after the job: %d %s", r.status, r.body)
	}
}

func TestAPIPersistsAcrossRestart(t *testing.T) {
	t.Parallel()
	path := storetest.DSN(t)
	key := newKey(t)
	e := newAPIEnv(t, envConfig{dbPath: path, key: key, tokens: []string{adminToken}})
	if r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(nil), ""); r.status != 201 {
		t.Fatalf("POST: %d", r.status)
	}
	before := e.do("GET", "/api/oidc_servers/1", "", "", "")
	e.close()

	e2 := newAPIEnv(t, envConfig{dbPath: path, key: key, tokens: []string{adminToken}})
	after := e2.do("GET", "/api/oidc_servers/1", "", "", "")
	if after.status != 200 || string(after.body) != string(before.body) {
		t.Errorf("after restart: %d %s, want %s", after.status, after.body, before.body)
	}
	if s, err := e2.repo.Get(context.Background(), 1); err != nil || s.ClientSecret != secretValue {
		t.Errorf("secret after restart: %q, %v", s.ClientSecret, err)
	}
	// The pid sequence survives too.
	r := e2.do("POST", "/api/oidc_servers", adminToken, inputJSON(func(m map[string]any) { m["issuer"] = "https://b.example" }), "")
	if r.status != 201 || r.json(t)["pid"] != float64(2) {
		t.Errorf("POST after restart: %d %s", r.status, r.body)
	}
}

func TestAPIVerify(t *testing.T) {
	t.Parallel()
	e := newAPIEnv(t, envConfig{key: newKey(t), tokens: []string{adminToken}})
	p := newProvider(t)
	create := func(change func(m map[string]any)) string {
		t.Helper()
		r := e.do("POST", "/api/oidc_servers", adminToken, inputJSON(change), "")
		if r.status != 201 {
			t.Fatalf("POST: %d %s", r.status, r.body)
		}
		return r.header.Get("Location")
	}
	verify := func(loc string) map[string]any {
		t.Helper()
		r := e.do("POST", loc+"/verify", adminToken, "", "")
		if r.status != 200 {
			t.Fatalf("verify: %d %s", r.status, r.body)
		}
		return r.json(t)
	}

	good := create(func(m map[string]any) {
		m["issuer"] = p.Issuer() + "/"
		delete(m, "authWellKnown")
		delete(m, "tokenEndpoint")
	})
	rep := verify(good)
	endpoints, _ := rep["endpoints"].(map[string]any)
	if rep["ok"] != true || rep["issuerMatches"] != true || rep["issuer"] != p.Issuer() || rep["jwksKeys"] != float64(1) {
		t.Errorf("good provider: %v", rep)
	}
	if endpoints["token_endpoint"] != p.TokenEndpoint() || endpoints["jwks_uri"] == nil || endpoints["authorization_endpoint"] == nil {
		t.Errorf("endpoints = %v", endpoints)
	}
	if rep["wellKnownUrl"] != p.WellKnownURL() {
		t.Errorf("wellKnownUrl = %v", rep["wellKnownUrl"])
	}

	mismatch := create(func(m map[string]any) {
		m["issuer"] = "https://not-that-provider.example"
		m["authWellKnown"] = p.WellKnownURL()
		m["tokenEndpoint"] = "https://not-that-provider.example/token"
	})
	rep = verify(mismatch)
	if rep["ok"] != false || rep["issuerMatches"] != false || rep["issuer"] != p.Issuer() || !strings.Contains(fmt.Sprint(rep["problems"]), "issuer mismatch") {
		t.Errorf("mismatched issuer: %v", rep)
	}

	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	unreachable := create(func(m map[string]any) { m["issuer"] = deadURL; delete(m, "authWellKnown") })
	rep = verify(unreachable)
	if rep["ok"] != false || !strings.Contains(fmt.Sprint(rep["problems"]), "could not connect") {
		t.Errorf("unreachable: %v", rep)
	}

	// A provider that never answers is cut off by the timeout.
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(block) })
	e.api.verifyTimeout = 300 * time.Millisecond
	hanging := create(func(m map[string]any) { m["issuer"] = slow.URL; delete(m, "authWellKnown") })
	start := time.Now()
	rep = verify(hanging)
	if time.Since(start) > 3*time.Second || rep["ok"] != false || !strings.Contains(fmt.Sprint(rep["problems"]), "timed out") {
		t.Errorf("hanging provider after %v: %v", time.Since(start), rep)
	}

	notJSON := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<html>login</html>")
	}))
	t.Cleanup(notJSON.Close)
	html := create(func(m map[string]any) { m["issuer"] = notJSON.URL; delete(m, "authWellKnown") })
	rep = verify(html)
	if rep["ok"] != false || !strings.Contains(fmt.Sprint(rep["problems"]), "not JSON") {
		t.Errorf("HTML page: %v", rep)
	}
}
