package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/bulk"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// systemReport is the answer of POST /api/oidc_servers/{id}/system_token.
type systemReport struct {
	OK                bool     `json:"ok"`
	TokenEndpoint     string   `json:"tokenEndpoint"`
	TokenEndpointFrom string   `json:"tokenEndpointFrom"`
	GrantedScopes     []string `json:"grantedScopes"`
	ExpiresIn         *int64   `json:"expiresIn"`
	Problems          []string `json:"problems"`
}

// checkSystemToken runs the admin check and makes sure the answer holds
// no token: nothing that looks like a JWS, and no access_token field.
func checkSystemToken(t *testing.T, p *payer, pid int64) systemReport {
	t.Helper()
	var raw json.RawMessage
	if st := p.call("POST", fmt.Sprintf("/api/oidc_servers/%d/system_token", pid), testAdmin, nil, &raw); st != 200 {
		t.Fatalf("system_token: %d %s", st, raw)
	}
	if s := string(raw); strings.Contains(s, "eyJ") || strings.Contains(s, "access_token") {
		t.Fatalf("the report holds a token: %s", s)
	}
	var rep systemReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestSystemAccessToAnotherPayer: this payer (target) connects to another
// p2pserver (source) as a system, SMART App Launch 2 "Backend Services":
// the source registers it as a backend client with jwksUrl = the target's
// GET /api/jwks; the target finds the token endpoint in the source's
// .well-known/smart-configuration, signs its client assertion with its own
// keys, and gets a token that reads at the source only what its system
// scopes allow. Rotating the target's keys keeps the registration
// working; the refusals (unknown client id, scopes beyond registration,
// client revoked at the source) come back as clear reasons.
func TestSystemAccessToAnotherPayer(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	source := startPayer(t, "-admin-token", testAdmin, "-secret-key", testSecretKey, "-trusted-issuers", idp.Issuer())
	target := startPayer(t, "-admin-token", testAdmin, "-secret-key", "0000000000000000000000000000000000000000000000000000000000000003")
	for path, body := range map[string]string{
		"/fhir/Patient/p1":   `{"resourceType":"Patient","id":"p1"}`,
		"/fhir/Condition/c1": `{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}`,
	} {
		if st := source.call("PUT", path, testAdmin, body, nil); st != 201 && st != 200 {
			t.Fatalf("seed %s: %d", path, st)
		}
	}

	// The target publishes its client keys without a token.
	var jwks jose.JSONWebKeySet
	resp, err := http.Get(target.URL + "/api/jwks")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&jwks); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(jwks.Keys) != 1 || !jwks.Keys[0].IsPublic() || resp.Header.Get("Cache-Control") != "max-age=300" {
		t.Fatalf("GET /api/jwks: %d %s %+v", resp.StatusCode, resp.Header.Get("Cache-Control"), jwks)
	}

	status, out := authtest.Register(t, source.URL, testAdmin, map[string]any{"name": "Target payer",
		"jwksUrl": target.URL + "/api/jwks", "scopes": []any{"system/Patient.rs"}})
	clientID, _ := out["clientId"].(string)
	if status != 201 || clientID == "" {
		t.Fatalf("register at the source: %d %v", status, out)
	}
	def := map[string]any{"name": "Source payer", "issuer": idp.Issuer(), "clientId": "member-app", "fhirEndpoint": source.URL + "/fhir",
		"systemClientId": clientID, "systemScopes": "system/Patient.rs"}
	var created map[string]any
	if st := target.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
		t.Fatalf("create definition: %d %v", st, created)
	}
	pid := int64(created["pid"].(float64))
	if created["systemAuth"] != "private_key_jwt" {
		t.Errorf("systemAuth default: %v", created["systemAuth"])
	}

	rep := checkSystemToken(t, target, pid)
	if !rep.OK || rep.TokenEndpoint != source.URL+"/auth/token" || rep.TokenEndpointFrom != "smart-configuration" ||
		!slices.Equal(rep.GrantedScopes, []string{"system/Patient.rs"}) || rep.ExpiresIn == nil || *rep.ExpiresIn <= 0 || *rep.ExpiresIn > 300 {
		t.Fatalf("system token check: %+v", rep)
	}

	// The token the target's token source gets, with the target's keys,
	// reads at the source what system/Patient.rs allows, nothing more.
	srv := oidcservers.Server{Name: "Source payer", Issuer: idp.Issuer(), ClientID: "member-app", FHIREndpoint: source.URL + "/fhir",
		SystemClientID: clientID, SystemScopes: "system/Patient.rs"}
	ts, err := oidcservers.NewSystemTokenSource(srv, target.app.clientKeys, &http.Client{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ts.Token(ctx); err != nil || again.AccessToken != tok.AccessToken {
		t.Errorf("the token was not reused while valid: %v", err)
	}
	if st := source.call("GET", "/fhir/Patient/p1", tok.AccessToken, nil, nil); st != 200 {
		t.Errorf("read within system/Patient.rs: %d", st)
	}
	if st := source.call("GET", "/fhir/Condition/c1", tok.AccessToken, nil, nil); st != 403 {
		t.Errorf("read beyond system/Patient.rs: %d, want 403", st)
	}

	// Rotation at the target: both keys are published, and the source,
	// which holds the old set in its cache, still accepts the target.
	if err := target.app.clientKeys.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	var after jose.JSONWebKeySet
	if st := target.call("GET", "/api/jwks", "", nil, &after); st != 200 || len(after.Keys) != 2 || after.Keys[1].KeyID != jwks.Keys[0].KeyID {
		t.Fatalf("keys after rotation: %d %+v", st, after)
	}
	for i := range 2 {
		if rep := checkSystemToken(t, target, pid); !rep.OK {
			t.Fatalf("system token after rotation (%d): %+v", i, rep)
		}
	}
	if _, err := ts.Fetch(ctx); err != nil {
		t.Fatalf("token source after rotation: %v", err)
	}

	// Refusals, each with its reason.
	put := func(change map[string]any) {
		t.Helper()
		body := map[string]any{}
		for k, v := range def {
			body[k] = v
		}
		for k, v := range change {
			body[k] = v
		}
		var out map[string]any
		if st := target.call("PUT", fmt.Sprintf("/api/oidc_servers/%d", pid), testAdmin, body, &out); st != 200 {
			t.Fatalf("PUT definition: %d %v", st, out)
		}
	}
	cases := []struct {
		name   string
		change map[string]any
		revoke bool
		want   []string
	}{
		{"unknown client id", map[string]any{"systemClientId": "not-registered"}, false,
			[]string{`refused this server as system client "not-registered"`, "invalid_client", "/api/jwks"}},
		{"scopes beyond the registration", map[string]any{"systemScopes": "system/Condition.rs"}, false,
			[]string{`refused the systemScopes "system/Condition.rs"`, "invalid_scope"}},
		{"token endpoint not found", map[string]any{"fhirEndpoint": source.URL + "/nothing-here"}, false,
			[]string{"no token endpoint for system access was found", "tokenEndpoint"}},
		{"member-token definition", map[string]any{"systemClientId": "", "systemScopes": ""}, false,
			[]string{"has no systemClientId"}},
		{"revoked at the source", nil, true,
			[]string{fmt.Sprintf(`refused this server as system client %q`, clientID), "invalid_client"}},
	}
	for _, c := range cases {
		put(c.change)
		if c.revoke {
			if st := source.call("DELETE", "/api/backend_clients/"+clientID, testAdmin, nil, nil); st != 204 {
				t.Fatalf("revoke: %d", st)
			}
		}
		rep := checkSystemToken(t, target, pid)
		msg := strings.Join(rep.Problems, "; ")
		if rep.OK || len(rep.Problems) == 0 {
			t.Errorf("%s: accepted: %+v", c.name, rep)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: problems %q do not say %q", c.name, msg, w)
			}
		}
	}
	if _, err := ts.Fetch(ctx); err == nil {
		t.Error("a revoked client still got a token")
	}
}

// TestSystemAccessClientSecretBasic: system access with
// client_secret_basic (RFC 6749 section 2.3.1) at an OpenID provider that
// supports the client_credentials grant; a wrong secret is named as the
// cause.
func TestSystemAccessClientSecretBasic(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "s3cret/with+odd&chars")
	target := startPayer(t, "-admin-token", testAdmin, "-secret-key", testSecretKey)
	def := map[string]any{"name": "Source payer", "issuer": idp.Issuer(), "clientId": "payer-b", "clientSecret": "s3cret/with+odd&chars",
		"fhirEndpoint": "http://127.0.0.1:9/fhir", "tokenEndpoint": idp.TokenEndpoint(),
		"systemClientId": "payer-b", "systemAuth": "client_secret_basic", "systemScopes": "system/Patient.rs system/Coverage.rs"}
	var created map[string]any
	if st := target.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
		t.Fatalf("create: %d %v", st, created)
	}
	pid := int64(created["pid"].(float64))
	rep := checkSystemToken(t, target, pid)
	if !rep.OK || rep.TokenEndpointFrom != "definition" || !slices.Equal(rep.GrantedScopes, []string{"system/Patient.rs", "system/Coverage.rs"}) || rep.ExpiresIn == nil {
		t.Fatalf("client_secret_basic: %+v", rep)
	}
	def["clientSecret"] = "wrong"
	if st := target.call("PUT", fmt.Sprintf("/api/oidc_servers/%d", pid), testAdmin, def, nil); st != 200 {
		t.Fatalf("PUT: %d", st)
	}
	rep = checkSystemToken(t, target, pid)
	if msg := strings.Join(rep.Problems, "; "); rep.OK || !strings.Contains(msg, "invalid_client") || !strings.Contains(msg, "clientSecret") {
		t.Errorf("wrong secret: %+v", rep)
	}
}

// flakyFirstToken hands out a token the source does not know once, then
// the real ones: the first request is answered 401, as with a token that
// expired or was revoked mid-exchange.
type flakyFirstToken struct {
	*oidcservers.SystemTokenSource
	used        bool
	invalidated []string
}

func (f *flakyFirstToken) Token(ctx context.Context) (oidcservers.SystemToken, error) {
	if !f.used {
		f.used = true
		return oidcservers.SystemToken{AccessToken: "expired-or-revoked"}, nil
	}
	return f.SystemTokenSource.Token(ctx)
}

func (f *flakyFirstToken) Invalidate(tok string) {
	f.invalidated = append(f.invalidated, tok)
	f.SystemTokenSource.Invalidate(tok)
}

// TestBulkClientExportFromAnotherPayer: the requesting side of Bulk Data
// Access STU 2 against a second p2pserver, with this payer's system token
// (SMART Backend Services, jwksUrl = GET /api/jwks): kick-off with Prefer:
// respond-async (202 + Content-Location), polling as the status answers
// ask (Retry-After), the manifest (requiresAccessToken), the files
// streamed line by line with the token, a resume at a line offset, a 401
// answered by getting a new token, a file that is gone named as such,
// and DELETE cancelling.
func TestBulkClientExportFromAnotherPayer(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	source := startPayer(t, "-admin-token", testAdmin, "-secret-key", testSecretKey, "-trusted-issuers", idp.Issuer())
	target := startPayer(t, "-admin-token", testAdmin, "-secret-key", "0000000000000000000000000000000000000000000000000000000000000004")
	seed := map[string]string{"/fhir/Patient/p1": `{"resourceType":"Patient","id":"p1"}`}
	for i := range 3 {
		seed[fmt.Sprintf("/fhir/Condition/c%d", i)] = fmt.Sprintf(`{"resourceType":"Condition","id":"c%d","subject":{"reference":"Patient/p1"}}`, i)
	}
	for path, body := range seed {
		if st := source.call("PUT", path, testAdmin, body, nil); st != 201 && st != 200 {
			t.Fatalf("seed %s: %d", path, st)
		}
	}
	status, out := authtest.Register(t, source.URL, testAdmin, map[string]any{"name": "Target payer",
		"jwksUrl": target.URL + "/api/jwks", "scopes": []any{"system/*.rs"}})
	clientID, _ := out["clientId"].(string)
	if status != 201 {
		t.Fatalf("register: %d %v", status, out)
	}
	srv := oidcservers.Server{Name: "Source", Issuer: idp.Issuer(), ClientID: "m", FHIREndpoint: source.URL + "/fhir",
		SystemClientID: clientID, SystemScopes: "system/*.rs"}
	ts, err := oidcservers.NewSystemTokenSource(srv, target.app.clientKeys, &http.Client{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tokens := &flakyFirstToken{SystemTokenSource: ts}
	c := &bulk.Client{Tokens: tokens, MinPoll: 50 * time.Millisecond} // netguard.Default: loopback allowed
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	statusURL, err := c.KickOff(ctx, http.MethodGet, source.URL+"/fhir/Patient/$export?_type=Patient,Condition", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens.invalidated) != 1 || tokens.invalidated[0] != "expired-or-revoked" {
		t.Errorf("the 401 did not drop the token: %v", tokens.invalidated)
	}
	m, err := c.Wait(ctx, statusURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !m.RequiresAccessToken || len(m.Output) != 2 {
		t.Fatalf("manifest: %+v", m)
	}
	lines := map[string][]string{}
	for _, f := range m.Output {
		n, err := c.Download(ctx, f.URL, m.RequiresAccessToken, 0, func(line []byte) error {
			var r struct{ ResourceType, ID string }
			if err := json.Unmarshal(line, &r); err != nil {
				return err
			}
			if r.ResourceType != f.Type {
				t.Errorf("a %s in the %s file", r.ResourceType, f.Type)
			}
			lines[f.Type] = append(lines[f.Type], r.ID)
			return nil
		})
		if err != nil || n != f.Count || int64(len(lines[f.Type])) != f.Count {
			t.Fatalf("download %s: %d lines of %d, %v", f.Type, n, f.Count, err)
		}
	}
	if len(lines["Condition"]) != 3 || len(lines["Patient"]) != 1 {
		t.Fatalf("downloaded %v", lines)
	}

	// Resume after the first line: the rest, in the same order.
	var cond bulk.ManifestOutput
	for _, f := range m.Output {
		if f.Type == "Condition" {
			cond = f
		}
	}
	var rest []string
	n, err := c.Download(ctx, cond.URL, true, 1, func(line []byte) error {
		var r struct{ ID string }
		_ = json.Unmarshal(line, &r)
		rest = append(rest, r.ID)
		return nil
	})
	if err != nil || n != 3 || !slices.Equal(rest, lines["Condition"][1:]) {
		t.Errorf("resume at line 1: %d %v %v, want %v", n, rest, err, lines["Condition"][1:])
	}

	// Without the token the file is not served; a file that is not there
	// is named as gone.
	if _, err := c.Download(ctx, cond.URL, false, 0, func([]byte) error { return nil }); err == nil {
		t.Error("the file was served without a token")
	}
	if _, err := c.Download(ctx, cond.URL+"-nothing", true, 0, func([]byte) error { return nil }); errs.KindOf(err) != errs.NotFound || !strings.Contains(err.Error(), "is gone") {
		t.Errorf("missing file: %v", err)
	}

	// Cancel: the status URL and the files go.
	if err := c.Cancel(ctx, statusURL); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Poll(ctx, statusURL); errs.KindOf(err) != errs.NotFound {
		t.Errorf("status after cancel: %v", err)
	}
	if _, err := c.Download(ctx, cond.URL, true, 0, func([]byte) error { return nil }); errs.KindOf(err) != errs.NotFound {
		t.Errorf("file after cancel: %v", err)
	}

	// A kick-off the source refuses comes back with its reason.
	if _, err := c.KickOff(ctx, http.MethodGet, source.URL+"/fhir/Patient/$export?_typeFilter=Condition%3Fnope%3D1", nil); err == nil || errs.KindOf(err) != errs.Invalid {
		t.Errorf("refused kick-off: %v", err)
	}
}

// TestSystemTokenRenewedBeforeExpiry: a cached system token is reused
// only while it stays valid for more than a margin of 30 seconds; one that
// expires sooner (here the source's tokens live 30 seconds) is replaced
// before it is handed out, so no request leaves with a token about to
// lapse.
func TestSystemTokenRenewedBeforeExpiry(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	source := startPayer(t, "-admin-token", testAdmin, "-secret-key", testSecretKey, "-trusted-issuers", idp.Issuer(), "-token-lifetime", "30s")
	target := startPayer(t, "-admin-token", testAdmin, "-secret-key", "0000000000000000000000000000000000000000000000000000000000000005")
	status, out := authtest.Register(t, source.URL, testAdmin, map[string]any{"name": "Target payer",
		"jwksUrl": target.URL + "/api/jwks", "scopes": []any{"system/Patient.rs"}})
	if status != 201 {
		t.Fatalf("register: %d %v", status, out)
	}
	srv := oidcservers.Server{Name: "Source", Issuer: idp.Issuer(), ClientID: "m", FHIREndpoint: source.URL + "/fhir",
		SystemClientID: out["clientId"].(string), SystemScopes: "system/Patient.rs"}
	ts, err := oidcservers.NewSystemTokenSource(srv, target.app.clientKeys, &http.Client{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	first, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if first.AccessToken == second.AccessToken {
		t.Error("a token valid for 30 seconds or less was handed out again")
	}
	if first.Expiry.IsZero() || first.Expiry.After(time.Now().Add(31*time.Second)) {
		t.Errorf("expiry %v, want within 30 seconds", first.Expiry)
	}
}
