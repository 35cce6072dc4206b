package auth_test

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestRegistrationRefusesWhatSMARTForbids: a backend client registers its
// public keys only, each with kty and kid, RSA or EC usable with RS384 or
// ES384, given as a JWK Set or a TLS-protected jwksUrl (SMART App Launch 2,
// client-confidential-asymmetric, "Registering a client"), and system/
// scopes. Every refusal names the field and says what is wrong.
func TestRegistrationRefusesWhatSMARTForbids(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	rsaKey := authtest.NewKey(t, jose.RS384)
	ecKey := authtest.NewKey(t, jose.ES384)
	p256 := authtest.NewKey(t, jose.ES256)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallJWK := (&authtest.Key{Alg: jose.RS384, KID: "small", Priv: small}).PublicJWK()
	noKID := rsaKey.PublicJWK()
	delete(noKID, "kid")
	oct := map[string]any{"kty": "oct", "kid": "s", "k": base64.RawURLEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))}
	good := func(change func(m map[string]any)) map[string]any {
		m := map[string]any{"name": "Payer B", "jwks": authtest.JWKS(rsaKey), "scopes": []any{"system/*.rs"}}
		change(m)
		return m
	}
	keys := func(list ...any) map[string]any { return map[string]any{"keys": list} }
	cases := []struct {
		name  string
		body  map[string]any
		field string
		says  string
	}{
		{"RSA private key", good(func(m map[string]any) { m["jwks"] = keys(rsaKey.PrivateJWK()) }), "jwks", `private key material ("d")`},
		{"EC private key", good(func(m map[string]any) { m["jwks"] = keys(ecKey.PublicJWK(), ecKey.PrivateJWK()) }), "jwks", `key 2: holds private key material ("d")`},
		{"symmetric key", good(func(m map[string]any) { m["jwks"] = keys(oct) }), "jwks", "symmetric key"},
		{"no kid", good(func(m map[string]any) { m["jwks"] = keys(noKID) }), "jwks", "has no kid"},
		{"P-256 key", good(func(m map[string]any) { m["jwks"] = keys(p256.PublicJWK()) }), "jwks", "alg \"ES256\" does not fit"},
		{"RSA 1024", good(func(m map[string]any) { m["jwks"] = keys(smallJWK) }), "jwks", "at least 2048"},
		{"duplicate kid", good(func(m map[string]any) { m["jwks"] = keys(rsaKey.PublicJWK(), rsaKey.PublicJWK()) }), "jwks", "unique"},
		{"not a set", good(func(m map[string]any) { m["jwks"] = rsaKey.PublicJWK() }), "jwks", "JWK Set"},
		{"no keys at all", good(func(m map[string]any) { delete(m, "jwks") }), "jwks", "is required"},
		{"both jwks and jwksUrl", good(func(m map[string]any) { m["jwksUrl"] = "https://payer-b.example/jwks" }), "jwks", "not both"},
		{"plain http jwksUrl", good(func(m map[string]any) { delete(m, "jwks"); m["jwksUrl"] = "http://payer-b.example/jwks" }), "jwksUrl", "https"},
		{"user scope", good(func(m map[string]any) { m["scopes"] = []any{"user/*.rs"} }), "scopes[0]", "system/ scopes only"},
		{"not a scope", good(func(m map[string]any) { m["scopes"] = []any{"system/Nothing.rs"} }), "scopes[0]", "not a FHIR R4 resource type"},
		{"no scopes", good(func(m map[string]any) { delete(m, "scopes") }), "scopes", "is required"},
		{"no name", good(func(m map[string]any) { m["name"] = " " }), "name", "is required"},
		{"clientId chosen by the caller", good(func(m map[string]any) { m["clientId"] = "mine" }), "clientId", "assigned by the server"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, out := authtest.Register(t, e.base, adminToken, c.body)
			fields, _ := out["error"].(map[string]any)["fields"].(map[string]any)
			msg, _ := fields[c.field].(string)
			if status != 400 || !strings.Contains(msg, c.says) {
				t.Errorf("%d %v; want 400 with %s saying %q", status, out, c.field, c.says)
			}
		})
	}
	if a := e.do("GET", "/api/backend_clients", adminToken, nil); a.status != 200 || len(a.json["clients"].([]any)) != 0 {
		t.Errorf("refused registrations were stored: %s", a.body)
	}
	// Without the admin token nothing is registered.
	if status, _ := authtest.Register(t, e.base, "not-the-admin-token-000", good(func(map[string]any) {})); status != 401 {
		t.Errorf("registration without the admin token: %d", status)
	}
}

// TestBackendClientsAPI: register, read, list, replace and delete; the
// answer of GET can be sent back with PUT.
func TestBackendClientsAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	k := authtest.NewKey(t, jose.ES384)
	status, out := authtest.Register(t, e.base, adminToken, map[string]any{"name": "Payer B", "jwks": authtest.JWKS(k),
		"scopes": []any{"system/*.rs"}, "organizationId": "payer-b-0042"})
	id, _ := out["clientId"].(string)
	if status != 201 || id == "" || out["organizationId"] != "payer-b-0042" || out["created"] == nil {
		t.Fatalf("register: %d %v", status, out)
	}
	got := e.do("GET", "/api/backend_clients/"+id, adminToken, nil)
	if got.status != 200 || got.json["name"] != "Payer B" {
		t.Fatalf("get: %d %s", got.status, got.body)
	}
	if a := e.do("GET", "/api/backend_clients/"+id, "", nil); a.status != 401 {
		t.Errorf("get without a token: %d", a.status)
	}
	got.json["scopes"] = []any{"system/Patient.rs", "system/Observation.rs"}
	if a := e.do("PUT", "/api/backend_clients/"+id, adminToken, got.json); a.status != 200 || len(a.json["scopes"].([]any)) != 2 || a.json["created"] != got.json["created"] {
		t.Errorf("put back: %d %s", a.status, a.body)
	}
	if a := e.do("PUT", "/api/backend_clients/"+id, adminToken, map[string]any{"clientId": "other", "name": "x", "jwks": authtest.JWKS(k), "scopes": []any{"system/*.rs"}}); a.status != 400 {
		t.Errorf("put with another clientId: %d %s", a.status, a.body)
	}
	if a := e.do("GET", "/api/backend_clients", adminToken, nil); a.status != 200 || len(a.json["clients"].([]any)) != 1 {
		t.Errorf("list: %d %s", a.status, a.body)
	}
	if a := e.do("DELETE", "/api/backend_clients/"+id, adminToken, nil); a.status != 204 {
		t.Errorf("delete: %d %s", a.status, a.body)
	}
	apidoc.CheckRoutes(t, e.api)
	if a := e.do("GET", "/api/backend_clients/"+id, adminToken, nil); a.status != 404 {
		t.Errorf("get after delete: %d", a.status)
	}
	if a := e.do("DELETE", "/api/backend_clients/"+id, adminToken, nil); a.status != 404 {
		t.Errorf("delete again: %d", a.status)
	}
}

// hs256 signs claims with HMAC-SHA256, key bytes as the secret: the
// algorithm-confusion attack on a server that would take a public key as
// an HMAC secret.
func hs256(claims authtest.Claims, kid string, secret []byte) string {
	h, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid})
	p, _ := json.Marshal(claims)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// unsigned is an alg "none" JWT.
func unsigned(claims authtest.Claims, kid string) string {
	h, _ := json.Marshal(map[string]any{"alg": "none", "typ": "JWT", "kid": kid})
	p, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(p) + "."
}

// TestTokenEndpointRefusals: every way a token request can be wrong, each
// answered with the RFC 6749 section 5.2 error SMART App Launch 2 asks for
// (Backend Services, "Issue Access Token"; client-confidential-asymmetric,
// "Signature Verification": any authentication failure is invalid_client),
// with Cache-Control: no-store, and no token. The assertion checks are
// those of RFC 7523 section 3 and SMART: signature by the registered key
// (kid, kty fitting alg, RS384 or ES384 only), iss = sub = clientId, aud =
// the token URL, exp present and at most five minutes ahead, jti never
// used twice, jku only the registered jwksUrl; the scope granted is within
// the registered scope, else invalid_scope.
func TestTokenEndpointRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	k := authtest.NewKey(t, jose.RS384)
	id := authtest.MustRegister(t, e.base, adminToken, "Payer B", []string{"system/Observation.rs", "system/Patient.rs"}, k)
	gone := authtest.NewKey(t, jose.ES384)
	goneID := authtest.MustRegister(t, e.base, adminToken, "Payer C", []string{"system/*.rs"}, gone)
	if a := e.do("DELETE", "/api/backend_clients/"+goneID, adminToken, nil); a.status != 204 {
		t.Fatalf("delete: %d", a.status)
	}
	tokenURL := e.tokenURL()
	claims := func(change func(authtest.Claims)) authtest.Claims {
		c := authtest.NewClaims(id, tokenURL)
		if change != nil {
			change(c)
		}
		return c
	}
	form := func(assertion string) url.Values { return authtest.Form(assertion, "system/Observation.rs") }
	other := authtest.NewKey(t, jose.RS384)
	other.KID = k.KID // the client's kid, another key
	es := authtest.NewKey(t, jose.ES384)
	es.KID = k.KID // the client's kid on an EC key: kty does not fit
	rs256 := &authtest.Key{Alg: jose.RS256, KID: k.KID, Priv: k.Priv}
	pubDER, _ := json.Marshal(k.PublicJWK())
	replayed := k.Assertion(t, id, tokenURL)
	if r := authtest.RequestToken(t, tokenURL, form(replayed)); r.Status != 200 {
		t.Fatalf("first use of the assertion: %d %v", r.Status, r.JSON)
	}
	cases := []struct {
		name   string
		form   url.Values
		status int
		code   string
	}{
		{"wrong key", form(other.Assertion(t, id, tokenURL)), 401, "invalid_client"},
		{"kid of another key type", form(es.Assertion(t, id, tokenURL)), 401, "invalid_client"},
		{"unknown kid", form((&authtest.Key{Alg: jose.RS384, KID: "nope", Priv: k.Priv}).Assertion(t, id, tokenURL)), 401, "invalid_client"},
		{"expired assertion", form(k.Sign(t, claims(func(c authtest.Claims) { c["exp"] = time.Now().Add(-10 * time.Minute).Unix() }), nil)), 401, "invalid_client"},
		{"exp too far ahead", form(k.Sign(t, claims(func(c authtest.Claims) { c["exp"] = time.Now().Add(10 * time.Minute).Unix() }), nil)), 401, "invalid_client"},
		{"no exp", form(k.Sign(t, claims(func(c authtest.Claims) { delete(c, "exp") }), nil)), 401, "invalid_client"},
		{"replayed jti", form(replayed), 401, "invalid_client"},
		{"no jti", form(k.Sign(t, claims(func(c authtest.Claims) { delete(c, "jti") }), nil)), 401, "invalid_client"},
		{"unknown client", form(k.Assertion(t, "no-such-client", tokenURL)), 401, "invalid_client"},
		{"revoked client", form(gone.Assertion(t, goneID, tokenURL)), 401, "invalid_client"},
		{"iss is not sub", form(k.Sign(t, claims(func(c authtest.Claims) { c["sub"] = "someone-else" }), nil)), 401, "invalid_client"},
		{"aud is the FHIR base", form(k.Sign(t, claims(func(c authtest.Claims) { c["aud"] = e.fhirBase() }), nil)), 401, "invalid_client"},
		{"no aud", form(k.Sign(t, claims(func(c authtest.Claims) { delete(c, "aud") }), nil)), 401, "invalid_client"},
		{"nbf in the future", form(k.Sign(t, claims(func(c authtest.Claims) { c["nbf"] = time.Now().Add(3 * time.Minute).Unix() }), nil)), 401, "invalid_client"},
		{"alg none", form(unsigned(claims(nil), k.KID)), 401, "invalid_client"},
		{"alg HS256 with the public key as secret", form(hs256(claims(nil), k.KID, pubDER)), 401, "invalid_client"},
		{"alg RS256", form(rs256.Assertion(t, id, tokenURL)), 401, "invalid_client"},
		{"no typ", form(k.Sign(t, claims(nil), map[string]any{"typ": nil})), 401, "invalid_client"},
		{"no kid", form(k.Sign(t, claims(nil), map[string]any{"kid": nil})), 401, "invalid_client"},
		{"jku not registered", form(k.Sign(t, claims(nil), map[string]any{"jku": "https://attacker.example/jwks"})), 401, "invalid_client"},
		{"client_id is not iss", func() url.Values {
			f := form(k.Assertion(t, id, tokenURL))
			f.Set("client_id", goneID)
			return f
		}(), 401, "invalid_client"},
		{"not a JWT", form("not-a-jwt"), 401, "invalid_client"},
		{"scope beyond registration", authtest.Form(k.Assertion(t, id, tokenURL), "system/Condition.rs"), 400, "invalid_scope"},
		{"patient scope", authtest.Form(k.Assertion(t, id, tokenURL), "patient/Observation.rs"), 400, "invalid_scope"},
		{"no scope", authtest.Form(k.Assertion(t, id, tokenURL), ""), 400, "invalid_request"},
		{"password grant", func() url.Values {
			f := form(k.Assertion(t, id, tokenURL))
			f.Set("grant_type", "password")
			return f
		}(), 400, "unsupported_grant_type"},
		{"no grant_type", func() url.Values {
			f := form(k.Assertion(t, id, tokenURL))
			f.Del("grant_type")
			return f
		}(), 400, "invalid_request"},
		{"no assertion", func() url.Values {
			f := form("")
			f.Del("client_assertion")
			return f
		}(), 400, "invalid_request"},
		{"other assertion type", func() url.Values {
			f := form(k.Assertion(t, id, tokenURL))
			f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
			return f
		}(), 401, "invalid_client"},
		{"parameter twice", func() url.Values {
			f := form(k.Assertion(t, id, tokenURL))
			f.Add("scope", "system/Patient.rs")
			return f
		}(), 400, "invalid_request"},
		{"assertion too large", form(strings.Repeat("a", 20<<10)), 400, "invalid_request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := authtest.RequestToken(t, tokenURL, c.form)
			if r.Status != c.status || r.Error() != c.code || r.AccessToken() != "" {
				t.Errorf("%d %v; want %d %s", r.Status, r.JSON, c.status, c.code)
			}
			if d, _ := r.JSON["error_description"].(string); d == "" {
				t.Errorf("no error_description: %v", r.JSON)
			}
			if r.Header.Get("Cache-Control") != "no-store" || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
				t.Errorf("headers: %v", r.Header)
			}
		})
	}
	// Not a form at all, and a body over the limit.
	req, _ := http.NewRequest("POST", tokenURL, strings.NewReader(`{"grant_type":"client_credentials"}`))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Errorf("JSON body: %v %v", resp, err)
	}
	huge := url.Values{"grant_type": {"client_credentials"}, "pad": {strings.Repeat("x", 64<<10)}}
	if r := authtest.RequestToken(t, tokenURL, huge); r.Status != 413 || r.Error() != "invalid_request" {
		t.Errorf("huge body: %d %v", r.Status, r.JSON)
	}
	if a := e.do("GET", auth.TokenPath, "", nil); a.status != 405 {
		t.Errorf("GET on the token endpoint: %d", a.status)
	}
}

// TestBackendServicesHappyPath: with an RS384 and with an ES384 key (the
// two algorithms SMART App Launch 2 names; clients SHALL support both) a
// registered client gets an access token, as the Backend Services
// "Obtain access token" steps describe, and with it reads what its system/
// scopes allow on /fhir, and nothing else. The server is guarded by a
// trusted issuer too: backend tokens work beside it.
func TestBackendServicesHappyPath(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	e := newEnv(t, []smart.Issuer{{URL: idp.Issuer()}})
	e.load()
	for _, alg := range []jose.SignatureAlgorithm{jose.RS384, jose.ES384} {
		t.Run(string(alg), func(t *testing.T) {
			k := authtest.NewKey(t, alg)
			id := authtest.MustRegister(t, e.base, adminToken, "Payer "+string(alg), []string{"system/Observation.rs", "system/Patient.r"}, k)
			// SMART discovery tells the client where to go.
			conf := e.do("GET", "/fhir"+smart.WellKnownPath(), "", nil)
			if conf.json["token_endpoint"] != e.tokenURL() {
				t.Fatalf("smart-configuration: %s", conf.body)
			}
			// Asking wider than registered: the intersection is granted.
			r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(k.Assertion(t, id, e.tokenURL()), "system/*.rs system/Condition.read openid"))
			if r.Status != 200 {
				t.Fatalf("token: %d %v", r.Status, r.JSON)
			}
			if r.JSON["token_type"] != "bearer" || r.JSON["expires_in"] != float64(300) || r.JSON["scope"] != "system/Observation.rs system/Patient.r" {
				t.Errorf("token response: %v", r.JSON)
			}
			if r.Header.Get("Cache-Control") != "no-store" || r.Header.Get("Pragma") != "no-cache" {
				t.Errorf("token response headers: %v", r.Header)
			}
			tok := r.AccessToken()
			claims := payload(t, tok)
			if claims["client_id"] != id || claims["sub"] != id || claims["iss"] != e.base+"/auth" || claims["aud"] != e.fhirBase() {
				t.Errorf("access token claims: %v", claims)
			}
			steps := []struct {
				method, path string
				status       int
				ids          []string
			}{
				{"GET", "/fhir/Observation", 200, []string{"Observation/o1", "Observation/o2"}}, // system level: every member's
				{"GET", "/fhir/Observation/o2", 200, nil},
				{"GET", "/fhir/Patient/p1", 200, nil},
				{"GET", "/fhir/Patient", 403, nil}, // r without s
				{"GET", "/fhir/Condition/c1", 403, nil},
				{"GET", "/fhir/Condition", 403, nil},
				{"GET", "/fhir/Practitioner/dr1", 403, nil},
				{"PUT", "/fhir/Observation/o1", 403, nil},
				{"DELETE", "/fhir/Observation/o1", 403, nil},
			}
			for _, s := range steps {
				var body any
				if s.method == "PUT" {
					body = fixtures[2]
				}
				a := e.do(s.method, s.path, tok, body)
				if a.status != s.status {
					t.Errorf("%s %s: %d, want %d: %s", s.method, s.path, a.status, s.status, a.body)
					continue
				}
				if s.ids != nil {
					got := a.ids()
					slices.Sort(got)
					if !slices.Equal(got, s.ids) {
						t.Errorf("%s %s: %v, want %v", s.method, s.path, got, s.ids)
					}
				}
			}
		})
	}
	// Without a token the guarded server still says no.
	if a := e.do("GET", "/fhir/Observation", "", nil); a.status != 401 {
		t.Errorf("no token: %d", a.status)
	}
}

func payload(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWS: %s", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return m
}

// TestReplayedJTIRefusedAfterRestart: the jti of an accepted assertion is
// kept in the database until the assertion expires, so a replay is
// refused after a restart too (SMART: "check that the jti value has not
// been previously encountered for the given iss within the maximum
// allowed authentication JWT lifetime"). Tokens issued before the restart
// keep working: the signing keys are in the database.
func TestReplayedJTIRefusedAfterRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.load()
	k := authtest.NewKey(t, jose.ES384)
	id := authtest.MustRegister(t, e.base, adminToken, "Payer B", []string{"system/*.rs"}, k)
	assertion := k.Assertion(t, id, e.tokenURL())
	r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(assertion, "system/*.rs"))
	if r.Status != 200 {
		t.Fatalf("first: %d %v", r.Status, r.JSON)
	}
	e.restart()
	if r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(assertion, "system/*.rs")); r.Status != 401 || r.Error() != "invalid_client" ||
		!strings.Contains(r.JSON["error_description"].(string), "jti") {
		t.Errorf("replay after restart: %d %v", r.Status, r.JSON)
	}
	if a := e.do("GET", "/fhir/Observation/o1", r.AccessToken(), nil); a.status != 200 {
		t.Errorf("token issued before the restart: %d %s", a.status, a.body)
	}
	// A new assertion still works.
	if tok := k.Token(t, id, e.tokenURL(), "system/*.rs"); tok == "" {
		t.Error("no token after restart")
	}
}

// TestRevocationAndNarrowingTakeEffectAtOnce: deleting a client ends its
// tokens at once (the guard answers 401 invalid_token); replacing its
// scopes with narrower ones narrows the tokens already issued.
func TestRevocationAndNarrowingTakeEffectAtOnce(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	for _, open := range []bool{false, true} {
		t.Run(fmt.Sprintf("open=%v", open), func(t *testing.T) {
			var issuers []smart.Issuer
			if !open {
				issuers = []smart.Issuer{{URL: idp.Issuer()}}
			}
			e := newEnv(t, issuers)
			e.load()
			k := authtest.NewKey(t, jose.RS384)
			id := authtest.MustRegister(t, e.base, adminToken, "Payer B", []string{"system/*.rs"}, k)
			tok := k.Token(t, id, e.tokenURL(), "system/*.rs")
			if a := e.do("GET", "/fhir/Condition/c1", tok, nil); a.status != 200 {
				t.Fatalf("before: %d %s", a.status, a.body)
			}
			reg := map[string]any{"name": "Payer B", "jwks": authtest.JWKS(k), "scopes": []any{"system/Observation.rs"}}
			if a := e.do("PUT", "/api/backend_clients/"+id, adminToken, reg); a.status != 200 {
				t.Fatalf("narrow: %d %s", a.status, a.body)
			}
			if a := e.do("GET", "/fhir/Condition/c1", tok, nil); a.status != 403 {
				t.Errorf("narrowed token on Condition: %d", a.status)
			}
			if a := e.do("GET", "/fhir/Observation/o1", tok, nil); a.status != 200 {
				t.Errorf("narrowed token on Observation: %d", a.status)
			}
			if a := e.do("DELETE", "/api/backend_clients/"+id, adminToken, nil); a.status != 204 {
				t.Fatalf("delete: %d", a.status)
			}
			a := e.do("GET", "/fhir/Observation/o1", tok, nil)
			if a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), "invalid_token") {
				t.Errorf("token of a deleted client: %d %v", a.status, a.header)
			}
			// The open server stays open to a request without a token.
			want := 401
			if open {
				want = 200
			}
			if a := e.do("GET", "/fhir/Observation/o1", "", nil); a.status != want {
				t.Errorf("no token: %d, want %d", a.status, want)
			}
		})
	}
}

// TestRateLimitOnAssertions: a client asking for tokens much faster than
// it needs them is told to slow down (429 with Retry-After) before its
// assertions cost a signature check each.
func TestRateLimitOnAssertions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	k := authtest.NewKey(t, jose.ES384)
	id := authtest.MustRegister(t, e.base, adminToken, "Payer B", []string{"system/*.rs"}, k)
	limited := 0
	for range 25 {
		r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(k.Assertion(t, id, e.tokenURL()), "system/*.rs"))
		if r.Status == http.StatusTooManyRequests {
			limited++
			if r.Header.Get("Retry-After") == "" || r.AccessToken() != "" {
				t.Errorf("429 without Retry-After: %v %v", r.Header, r.JSON)
			}
		}
	}
	if limited == 0 {
		t.Error("25 token requests in a row were all served")
	}
}

// TestAccessTokensExpire: an access token lives -token-lifetime (five
// minutes by default, SMART Backend Services: expires_in SHOULD NOT
// exceed 300) and is refused after, even though it was accepted before.
func TestAccessTokensExpire(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Now()}
	e := newEnv(t, nil, func(cfg *auth.Config) { cfg.Now = c.now })
	e.load()
	k := authtest.NewKey(t, jose.ES384)
	id := authtest.MustRegister(t, e.base, adminToken, "Payer B", []string{"system/*.rs"}, k)
	tok := k.Token(t, id, e.tokenURL(), "system/*.rs")
	for range 2 {
		if a := e.do("GET", "/fhir/Observation/o1", tok, nil); a.status != 200 {
			t.Fatalf("fresh token: %d %s", a.status, a.body)
		}
	}
	c.add(auth.DefaultTokenLifetime + time.Second)
	if a := e.do("GET", "/fhir/Observation/o1", tok, nil); a.status != 401 || !strings.Contains(string(a.body), "expired") {
		t.Errorf("expired token: %d %s", a.status, a.body)
	}
}
