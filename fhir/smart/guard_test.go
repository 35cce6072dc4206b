package smart_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

var (
	regOnce  sync.Once
	registry *search.Registry
)

const adminToken = "admin-token-0123456789abcdef"

// env is a real FHIR server on loopback guarded by a smart.Guard, with the
// SMART configuration mounted as cmd/p2pserver mounts it.
type env struct {
	t     *testing.T
	base  string
	guard *smart.Guard
	fhir  *fhir.Server
	logs  *bytes.Buffer
}

func newEnv(t *testing.T, issuers []smart.Issuer, opts ...func(*smart.Config)) *env {
	t.Helper()
	return newEnvMW(t, issuers, nil, opts...)
}

// newEnvMW is newEnv with mw installed on the FHIR server after the guard.
func newEnvMW(t *testing.T, issuers []smart.Issuer, mw func(http.Handler) http.Handler, opts ...func(*smart.Config)) *env {
	t.Helper()
	regOnce.Do(func() { registry = search.NewRegistry(spec.R4()) })
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	srv := httptest.NewServer(mux)
	e := &env{t: t, base: srv.URL + "/fhir", logs: &bytes.Buffer{}}
	e.fhir = fhir.New(st, fhir.Config{BaseURL: e.base})
	cfg := smart.Config{
		BaseURL: e.base, Issuers: issuers, AdminTokens: []string{adminToken},
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: e.logs}, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	e.guard, err = smart.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.guard.Attach(e.fhir)
	if mw != nil {
		e.fhir.Use(mw)
	}
	mux.Method(http.MethodGet, "/fhir"+smart.WellKnownPath(), e.guard.ConfigurationHandler())
	mux.Mount("/fhir", e.fhir.Handler())
	t.Cleanup(func() {
		srv.Close()
		st.Close()
		db.Close()
	})
	return e
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

func (e *env) do(method, path, token string, body string) *answer {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
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

// ids returns "Type/id" of a searchset's match entries, sorted.
func (a *answer) ids() []string {
	var out []string
	entries, _ := a.json["entry"].([]any)
	for _, en := range entries {
		res := en.(map[string]any)["resource"].(map[string]any)
		out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
	}
	sort.Strings(out)
	return out
}

var fixtures = []string{
	`{"resourceType":"Patient","id":"p1","name":[{"family":"One"}]}`,
	`{"resourceType":"Patient","id":"p2","name":[{"family":"Two"}]}`,
	`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`,
	`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}`,
	`{"resourceType":"Practitioner","id":"dr1","name":[{"family":"Who"}]}`,
}

func (e *env) load() {
	e.t.Helper()
	for _, f := range fixtures {
		var m map[string]any
		_ = json.Unmarshal([]byte(f), &m)
		if a := e.do("PUT", "/"+m["resourceType"].(string)+"/"+m["id"].(string), adminToken, f); a.status != 201 {
			e.t.Fatalf("load %s: %d %s", f, a.status, a.body)
		}
	}
}

func task(patient string) string {
	return `{"resourceType":"Task","status":"requested","intent":"order","for":{"reference":"Patient/` + patient + `"}}`
}

// TestScopeAndCompartmentRules runs every token kind the issue names
// against a guarded server with two members, through real HTTP with tokens
// from a real OpenID provider.
func TestScopeAndCompartmentRules(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "secret")
	e := newEnv(t, []smart.Issuer{{URL: idp.Issuer()}})
	e.load()
	aud := []string{e.base}
	member := func(patient string, scopes ...string) string {
		t.Helper()
		tok, err := idp.MintFor(aud, oidctest.Grant{ClientID: "payer-b", Patient: patient, Scopes: scopes})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	system := func(scopes ...string) string {
		t.Helper()
		tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "payer-b", Scopes: scopes, Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}

	type step struct {
		method, path, body string
		status             int
		ids                []string // for searches: the match entries
	}
	cases := []struct {
		name  string
		token string
		steps []step
	}{
		{"member patient/*.read sees only their compartment", member("p1", "openid", "launch/patient", "patient/*.read"), []step{
			{"GET", "/Patient/p1", "", 200, nil},
			{"GET", "/Patient/p2", "", 404, nil},
			{"GET", "/Observation/o1", "", 200, nil},
			{"GET", "/Observation/o2", "", 404, nil},
			{"GET", "/Observation/o2/_history/1", "", 404, nil},
			{"GET", "/Observation", "", 200, []string{"Observation/o1"}},
			{"GET", "/Patient", "", 200, []string{"Patient/p1"}},
			{"GET", "/Patient?_id=p2", "", 200, nil},
			{"GET", "/Practitioner/dr1", "", 200, nil}, // belongs to no patient: readable, as its data refers to it
			{"PUT", "/Practitioner/dr1", `{"resourceType":"Practitioner","id":"dr1"}`, 403, nil},
			{"POST", "/Task", task("p1"), 403, nil},
			{"DELETE", "/Observation/o1", "", 403, nil},
			{"GET", "/_history", "", 403, nil},
		}},
		{"member patient/Task.write with patient/*.read", member("p1", "patient/*.read", "patient/Task.write"), []step{
			{"POST", "/Task", task("p1"), 201, nil},
			{"POST", "/Task", task("p2"), 403, nil},
			{"POST", "/Observation", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`, 403, nil},
			{"GET", "/Task", "", 200, nil}, // its own Task (checked below by count)
		}},
		{"v2 rs on one type", member("p1", "patient/Observation.rs"), []step{
			{"GET", "/Observation", "", 200, []string{"Observation/o1"}},
			{"GET", "/Observation/o1", "", 200, nil},
			{"GET", "/Patient/p1", "", 403, nil},
			{"GET", "/Observation?_include=Observation:subject", "", 200, []string{"Observation/o1"}}, // the Patient is not included
		}},
		{"v2 read without search", member("p1", "patient/Observation.r"), []step{
			{"GET", "/Observation/o1", "", 200, nil},
			{"GET", "/Observation", "", 403, nil},
			{"POST", "/Observation/_search", "", 403, nil},
		}},
		{"v2 search without read", member("p1", "patient/Observation.s"), []step{
			{"GET", "/Observation", "", 200, []string{"Observation/o1"}},
			{"GET", "/Observation/o1", "", 403, nil},
		}},
		{"v2 create without update", member("p1", "patient/*.rs", "patient/Task.c"), []step{
			{"POST", "/Task", task("p1"), 201, nil},
			{"PUT", "/Task/t-x", `{"resourceType":"Task","id":"t-x","status":"requested","intent":"order","for":{"reference":"Patient/p1"}}`, 403, nil},
		}},
		{"user/*.* with a patient claim is still confined", member("p1", "user/*.*"), []step{
			{"GET", "/Patient/p2", "", 404, nil},
			{"GET", "/Observation", "", 200, []string{"Observation/o1"}},
			{"POST", "/Task", task("p1"), 201, nil},
			{"POST", "/Task", task("p2"), 403, nil},
		}},
		{"user/*.* without a patient", system("user/*.*"), []step{
			{"GET", "/Patient/p2", "", 200, nil},
			{"POST", "/Task", task("p2"), 201, nil},
		}},
		{"system/*.read reads everything, writes nothing", system("system/*.read"), []step{
			{"GET", "/Patient", "", 200, []string{"Patient/p1", "Patient/p2"}},
			{"GET", "/Observation/o2", "", 200, nil},
			{"GET", "/Practitioner/dr1", "", 200, nil},
			{"POST", "/Task", task("p1"), 403, nil},
			{"PUT", "/Patient/p1", fixtures[0], 403, nil},
			{"GET", "/metadata", "", 200, nil},
		}},
		{"system/*.cruds writes", system("system/*.cruds"), []step{
			{"POST", "/Task", task("p2"), 201, nil},
			{"DELETE", "/Observation/o2", "", 200, nil},
		}},
		{"patient scopes without a patient grant nothing", system("patient/*.read"), []step{
			{"GET", "/Patient/p1", "", 403, nil},
		}},
		{"scopes with search constraints grant nothing", member("p1", "patient/Observation.rs?category=laboratory"), []step{
			{"GET", "/Observation", "", 403, nil},
		}},
		{"only OpenID scopes", member("p1", "openid", "fhirUser"), []step{
			{"GET", "/Patient/p1", "", 403, nil},
		}},
		{"admin token has full access", adminToken, []step{
			{"GET", "/Patient", "", 200, []string{"Patient/p1", "Patient/p2"}},
			{"GET", "/_history", "", 200, nil},
		}},
	}
	for _, c := range cases {
		for _, s := range c.steps {
			a := e.do(s.method, s.path, c.token, s.body)
			if a.status != s.status {
				t.Errorf("%s: %s %s: %d, want %d: %.300s", c.name, s.method, s.path, a.status, s.status, a.body)
				continue
			}
			if a.status >= 400 && a.json["resourceType"] != "OperationOutcome" {
				t.Errorf("%s: %s %s: error is not an OperationOutcome: %s", c.name, s.method, s.path, a.body)
			}
			byGuard := strings.Contains(string(a.body), "token's scopes") || strings.Contains(string(a.body), "grants no access") ||
				strings.Contains(string(a.body), "only patient/ scopes")
			if a.status == 403 && byGuard && !strings.Contains(a.header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
				t.Errorf("%s: %s %s: 403 without an insufficient_scope challenge: %q", c.name, s.method, s.path, a.header.Get("WWW-Authenticate"))
			}
			if s.ids != nil && s.status == 200 {
				if got := a.ids(); !slices.Equal(got, s.ids) {
					t.Errorf("%s: %s %s: %v, want %v", c.name, s.method, s.path, got, s.ids)
				}
			}
		}
	}
	// The member's search of Tasks found its own Task and not the one
	// written for p2 by the system token.
	a := e.do("GET", "/Task", member("p1", "patient/*.read"), "")
	for _, en := range a.json["entry"].([]any) {
		res := en.(map[string]any)["resource"].(map[string]any)
		if ref := res["for"].(map[string]any)["reference"]; ref != "Patient/p1" {
			t.Errorf("member p1 sees a Task for %v", ref)
		}
	}
}

// TestTokensRefused: no token, a malformed one, an expired one, one signed
// with another key, one from an untrusted issuer, one for another
// audience, one not yet valid, an HMAC-signed one.
func TestTokensRefused(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "secret")
	other := oidctest.New(t) // an issuer nobody trusts
	other.AddClient("payer-b", "secret")
	e := newEnv(t, []smart.Issuer{{URL: idp.Issuer()}})
	e.load()
	aud := []string{e.base}
	now := time.Now().Unix()
	claims := func(over map[string]any) map[string]any {
		c := map[string]any{"iss": idp.Issuer(), "sub": "member-p1", "aud": e.base, "exp": now + 600, "iat": now,
			"patient": "p1", "scope": "patient/*.read"}
		for k, v := range over {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	sign := func(p *oidctest.Provider, c map[string]any) string {
		t.Helper()
		s, err := p.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	expired, err := idp.MintFor(aud, oidctest.Grant{ClientID: "payer-b", Patient: "p1", AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	untrusted, _ := other.MintFor(aud, oidctest.Grant{ClientID: "payer-b", Patient: "p1"})
	wrongAud, _ := idp.Mint(oidctest.Grant{ClientID: "payer-b", Patient: "p1"}) // aud is the client id
	good := sign(idp, claims(nil))

	hmacKey := []byte("0123456789abcdef0123456789abcdef")
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: hmacKey}, nil)
	payload, _ := json.Marshal(claims(nil))
	hsJWS, _ := hs.Sign(payload)
	hsToken, _ := hsJWS.CompactSerialize()
	unsigned := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + base64.RawURLEncoding.EncodeToString(payload) + "."
	tampered := func() string {
		parts := strings.Split(good, ".")
		p, _ := json.Marshal(claims(map[string]any{"patient": "p2"}))
		parts[1] = base64.RawURLEncoding.EncodeToString(p)
		return strings.Join(parts, ".")
	}()

	for _, c := range []struct {
		name, auth string
		status     int
		say        string // in the OperationOutcome
		challenge  string // in WWW-Authenticate
	}{
		{"no token", "", 401, "needs a bearer token", `Bearer realm="p2pserver"`},
		{"basic auth", "Basic dXNlcjpwdw==", 401, "needs a bearer token", `Bearer realm`},
		{"not a JWT", "Bearer not-a-jwt", 401, "not a JWT", `error="invalid_token"`},
		{"wrong admin token", "Bearer " + adminToken + "x", 401, "not a JWT", `error="invalid_token"`},
		{"expired", "Bearer " + expired.AccessToken, 401, "expired", `error="invalid_token"`},
		{"untrusted issuer", "Bearer " + untrusted.AccessToken, 401, "not accepted", `error="invalid_token"`},
		{"signed by another key with a trusted iss", "Bearer " + sign(other, claims(nil)), 401, "signature", `error="invalid_token"`},
		{"claims changed after signing", "Bearer " + tampered, 401, "signature", `error="invalid_token"`},
		{"for another audience", "Bearer " + wrongAud.AccessToken, 401, "audience", `error="invalid_token"`},
		{"no audience", "Bearer " + sign(idp, claims(map[string]any{"aud": nil})), 401, "audience", `error="invalid_token"`},
		{"no exp", "Bearer " + sign(idp, claims(map[string]any{"exp": nil})), 401, "expired", `error="invalid_token"`},
		{"not valid yet", "Bearer " + sign(idp, claims(map[string]any{"nbf": now + 3600})), 401, "not valid yet", `error="invalid_token"`},
		{"HMAC with a guessed secret", "Bearer " + hsToken, 401, "not a JWT", `error="invalid_token"`},
		{"alg none", "Bearer " + unsigned, 401, "not a JWT", `error="invalid_token"`},
		{"patient claim not an id", "Bearer " + sign(idp, claims(map[string]any{"patient": "a/b"})), 401, "not a FHIR id", `error="invalid_token"`},
	} {
		req, _ := http.NewRequest("GET", e.base+"/Patient/p1", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d: %s", c.name, resp.StatusCode, c.status, body)
			continue
		}
		if !strings.Contains(string(body), `"resourceType":"OperationOutcome"`) || !strings.Contains(string(body), c.say) {
			t.Errorf("%s: outcome %s does not say %q", c.name, body, c.say)
		}
		if h := resp.Header.Get("WWW-Authenticate"); !strings.Contains(h, c.challenge) {
			t.Errorf("%s: WWW-Authenticate %q, want %q in it", c.name, h, c.challenge)
		}
	}
	// The same claims, properly signed, pass: the refusals above are about
	// what each case changed.
	if a := e.do("GET", "/Patient/p1", good, ""); a.status != 200 {
		t.Fatalf("good token: %d %s", a.status, a.body)
	}
	if a := e.do("GET", "/Patient/p2", good, ""); a.status != 404 {
		t.Fatalf("good token for p1 reads p2: %d", a.status)
	}
	// A fhirUser that is a Patient confines like a patient claim.
	fu := sign(idp, claims(map[string]any{"patient": nil, "fhirUser": e.base + "/Patient/p2", "scope": "user/*.read"}))
	if a := e.do("GET", "/Observation", fu, ""); a.status != 200 || !slices.Equal(a.ids(), []string{"Observation/o2"}) {
		t.Errorf("fhirUser Patient/p2: %d %v", a.status, a.ids())
	}
	// Logs say why, without the token.
	if !strings.Contains(e.logs.String(), "bearer token refused") || strings.Contains(e.logs.String(), good[:40]) {
		t.Errorf("logs: %s", e.logs.String())
	}
}

// TestStaticKeysAndUnreachableIssuer: an issuer given with its key file
// needs no discovery; an issuer that cannot be reached gives 503, not 401.
func TestStaticKeysAndUnreachableIssuer(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "secret")
	file := filepath.Join(t.TempDir(), "idp.jwks")
	if err := os.WriteFile(file, []byte(idp.PublicJWKS()), 0o600); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	issuers, err := smart.ParseIssuers(idp.Issuer() + "=" + file + "," + dead)
	if err != nil {
		t.Fatal(err)
	}
	// The static issuer's discovery is made to fail too: the client
	// refuses every request, so verification must use the file's keys.
	noNet := &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
		return nil, io.ErrUnexpectedEOF
	})}
	e := newEnv(t, issuers, func(c *smart.Config) { c.HTTPClient = noNet })
	tok, _ := idp.MintFor([]string{e.base}, oidctest.Grant{ClientID: "payer-b", Patient: "p1"})
	e.do("PUT", "/Patient/p1", adminToken, fixtures[0])
	if a := e.do("GET", "/Patient/p1", tok.AccessToken, ""); a.status != 200 {
		t.Fatalf("static keys: %d %s", a.status, a.body)
	}
	deadTok := signWith(t, dead, e.base)
	a := e.do("GET", "/Patient/p1", deadTok, "")
	if a.status != 503 || a.header.Get("Retry-After") == "" || !strings.Contains(string(a.body), "cannot be fetched") {
		t.Fatalf("unreachable issuer: %d %q %s", a.status, a.header.Get("Retry-After"), a.body)
	}
	// The failure is remembered for a while: the next request does not
	// wait for another attempt, and still says 503.
	start := time.Now()
	if a := e.do("GET", "/Patient/p1", deadTok, ""); a.status != 503 || time.Since(start) > 5*time.Second {
		t.Errorf("second request to an unreachable issuer: %d after %v", a.status, time.Since(start))
	}
	if err := e.guard.Prepare(context.Background()); err == nil {
		t.Error("Prepare did not report the unreachable issuers")
	}
	// The SMART configuration depends on the first issuer's discovery.
	if a := e.do("GET", smart.WellKnownPath(), "", ""); a.status != 503 {
		t.Errorf("smart-configuration without discovery: %d", a.status)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// signWith makes an RS256 token claiming issuer iss with a fresh key.
func signWith(t *testing.T, iss, aud string) string {
	t.Helper()
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]any{"iss": iss, "aud": aud, "sub": "x", "exp": time.Now().Add(time.Hour).Unix(), "scope": "system/*.read"})
	jws, _ := signer.Sign(payload)
	s, _ := jws.CompactSerialize()
	return s
}

// TestSMARTConfigurationAndCapabilityStatement: the discovery documents
// need no token and tell the truth about the authorization server.
func TestSMARTConfigurationAndCapabilityStatement(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t, oidctest.WithIssuerPath("/realms/payer-a"))
	e := newEnv(t, []smart.Issuer{{URL: idp.Issuer()}}, func(c *smart.Config) { c.Audiences = []string{"https://payer-a.example/fhir"} })

	// Before any discovery the security section states the rules.
	cs := e.do("GET", "/metadata", "", "")
	if cs.status != 200 {
		t.Fatalf("metadata without a token: %d", cs.status)
	}
	sec := cs.json["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)
	desc := sec["description"].(string)
	for _, want := range []string{idp.Issuer(), "https://payer-a.example/fhir", "patient claim", "/.well-known/smart-configuration"} {
		if !strings.Contains(desc, want) {
			t.Errorf("security description lacks %q: %s", want, desc)
		}
	}
	if !strings.Contains(string(cs.body), `"code":"SMART-on-FHIR"`) {
		t.Errorf("no SMART-on-FHIR service: %v", sec)
	}

	a := e.do("GET", smart.WellKnownPath(), "", "")
	if a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
		t.Fatalf("smart-configuration: %d %s %s", a.status, a.header.Get("Content-Type"), a.body)
	}
	if a.json["token_endpoint"] != idp.TokenEndpoint() || a.json["issuer"] != idp.Issuer() || a.json["jwks_uri"] == nil {
		t.Errorf("endpoints: %s", a.body)
	}
	caps := strings.Join(toStrings(a.json["capabilities"]), " ")
	for _, want := range []string{"permission-v1", "permission-v2", "permission-patient", "permission-offline", "client-confidential-symmetric", "sso-openid-connect"} {
		if !strings.Contains(caps, want) {
			t.Errorf("capabilities lack %s: %s", want, caps)
		}
	}
	if strings.Contains(caps, "client-confidential-asymmetric") {
		t.Errorf("capabilities claim private_key_jwt, which the provider does not offer: %s", caps)
	}
	if !slices.Contains(toStrings(a.json["scopes_supported"]), "system/*.rs") {
		t.Errorf("scopes_supported: %v", a.json["scopes_supported"])
	}
	// Once discovered, the CapabilityStatement carries the oauth-uris.
	cs = e.do("GET", "/metadata", "", "")
	if !strings.Contains(string(cs.body), "oauth-uris") || !strings.Contains(string(cs.body), idp.TokenEndpoint()) {
		t.Errorf("no oauth-uris after discovery: %s", cs.body[:min(len(cs.body), 400)])
	}
	// Everything else still needs a token.
	if a := e.do("GET", "/Patient", "", ""); a.status != 401 {
		t.Errorf("search without a token: %d", a.status)
	}
}

// TestOpenMode: without trusted issuers nothing is checked, and the log,
// the CapabilityStatement and the SMART configuration say so.
func TestOpenMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	if !e.guard.Open() {
		t.Fatal("not open")
	}
	if a := e.do("POST", "/Task", "", task("p1")); a.status != 201 {
		t.Errorf("open server refused a write without a token: %d", a.status)
	}
	if a := e.do("GET", "/Task", "garbage-token", ""); a.status != 200 {
		t.Errorf("open server checked a token: %d", a.status)
	}
	if !strings.Contains(e.logs.String(), "OPEN") || !strings.Contains(e.logs.String(), "level=WARN") {
		t.Errorf("no warning in the log: %s", e.logs.String())
	}
	cs := e.do("GET", "/metadata", "", "")
	sec := cs.json["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)
	if !strings.Contains(sec["description"].(string), "OPEN SERVER") || sec["service"] != nil {
		t.Errorf("open security section: %v", sec)
	}
	if a := e.do("GET", smart.WellKnownPath(), "", ""); a.status != 404 || !strings.Contains(string(a.body), "runs open") {
		t.Errorf("smart-configuration in open mode: %d %s", a.status, a.body)
	}
}

func toStrings(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

// TestForgedKeyIDsDoNotFloodTheIssuer: tokens naming key ids the issuer
// does not publish make the server fetch the JWKS again at most once per
// interval, and a known key id with a bad signature never does.
func TestForgedKeyIDsDoNotFloodTheIssuer(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "secret")
	var mu sync.Mutex
	jwksFetches := 0
	counting := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if strings.Contains(r.URL.Path, "keys") {
			mu.Lock()
			jwksFetches++
			mu.Unlock()
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	e := newEnv(t, []smart.Issuer{{URL: idp.Issuer()}}, func(c *smart.Config) { c.HTTPClient = counting })
	e.do("PUT", "/Patient/p1", adminToken, fixtures[0])
	good, _ := idp.MintFor([]string{e.base}, oidctest.Grant{ClientID: "payer-b", Patient: "p1"})
	var jwks jose.JSONWebKeySet
	_ = json.Unmarshal([]byte(idp.PublicJWKS()), &jwks)
	knownKid := jwks.Keys[0].KeyID
	// The forged tokens are made before the clock starts: key generation is
	// slow under the race detector and must not eat the refetch interval.
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	forged := func(kid string) string {
		signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", kid))
		payload, _ := json.Marshal(map[string]any{"iss": idp.Issuer(), "aud": e.base, "sub": "x", "exp": time.Now().Add(time.Hour).Unix(), "scope": "system/*.read"})
		jws, _ := signer.Sign(payload)
		s, _ := jws.CompactSerialize()
		return s
	}
	var unknownKid, wrongKey []string
	for i := range 5 {
		unknownKid = append(unknownKid, forged("forged-"+string(rune('a'+i))))
		wrongKey = append(wrongKey, forged(knownKid))
	}
	start := time.Now()
	if a := e.do("GET", "/Patient/p1", good.AccessToken, ""); a.status != 200 {
		t.Fatalf("good token: %d %s", a.status, a.body)
	}
	fetches := func() int { mu.Lock(); defer mu.Unlock(); return jwksFetches }
	if fetches() != 1 {
		t.Fatalf("%d JWKS fetches for the first token", fetches())
	}
	for i := range 5 {
		if a := e.do("GET", "/Patient/p1", unknownKid[i], ""); a.status != 401 {
			t.Fatalf("forged kid: %d %s", a.status, a.body)
		}
		if a := e.do("GET", "/Patient/p1", wrongKey[i], ""); a.status != 401 {
			t.Fatalf("known kid, wrong key: %d %s", a.status, a.body)
		}
	}
	// At most one fetch per refetch interval (10 s) since the first: a slow
	// machine may legitimately span more than one interval.
	if n, most := fetches(), 1+int(time.Since(start)/(10*time.Second)); n > most {
		t.Errorf("%d JWKS fetches after ten forged tokens in %v, want at most %d", n, time.Since(start).Round(time.Millisecond), most)
	}
	if a := e.do("GET", "/Patient/p1", good.AccessToken, ""); a.status != 200 {
		t.Errorf("good token after the forgeries: %d", a.status)
	}
}

// An issuer that was not up when the server started (the usual order on
// one machine) is discovered by the first request that needs it; only
// failures after that are remembered for the retry interval.
func TestIssuerDownAtStartIsRetriedOnFirstUse(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "secret")
	var mu sync.Mutex
	down := true
	flaky := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		d := down
		mu.Unlock()
		if d {
			return nil, errors.New("connection refused")
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	e := newEnv(t, []smart.Issuer{{URL: idp.Issuer()}}, func(c *smart.Config) { c.HTTPClient = flaky })
	if err := e.guard.Prepare(context.Background()); err == nil {
		t.Fatal("Prepare succeeded while the issuer was down")
	}
	e.do("PUT", "/Patient/p1", adminToken, fixtures[0])
	mu.Lock()
	down = false
	mu.Unlock()
	good, _ := idp.MintFor([]string{e.base}, oidctest.Grant{ClientID: "payer-b", Patient: "p1"})
	if a := e.do("GET", "/Patient/p1", good.AccessToken, ""); a.status != 200 {
		t.Fatalf("first request after the issuer came up: %d %s", a.status, a.body)
	}
}
