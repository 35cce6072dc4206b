package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestBackendServicesWired: the binary serves SMART Backend Services as
// its flags say. With -secret-key the SMART configuration names this
// server's token endpoint (SMART App Launch 2, Backend Services, "Retrieve
// .well-known/smart-configuration"; client-confidential-asymmetric,
// discovery) whether or not issuers are trusted; the guarded server takes
// the tokens beside the issuer's; the open server stays open, and its log
// and CapabilityStatement keep saying so. Without -secret-key backend
// services are off and say why.
func TestBackendServicesWired(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	cases := []struct {
		name string
		args []string
		open bool
		on   bool
	}{
		{"trusted issuer", []string{"-trusted-issuers", idp.Issuer(), "-secret-key", testSecretKey}, false, true},
		{"open", []string{"-secret-key", testSecretKey}, true, true},
		{"no secret key", []string{"-trusted-issuers", idp.Issuer()}, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := startPayer(t, append([]string{"-admin-token", testAdmin}, c.args...)...)
			tokenURL := p.URL + "/auth/token"
			var conf map[string]any
			if st := p.call("GET", "/fhir/.well-known/smart-configuration", "", nil, &conf); st != 200 {
				t.Fatalf("smart-configuration: %d %v", st, conf)
			}
			var meta map[string]any
			p.call("GET", "/fhir/metadata", "", nil, &meta)
			sec := meta["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)
			if desc, _ := sec["description"].(string); c.open != strings.Contains(desc, "OPEN SERVER") {
				t.Errorf("security description: %s", desc)
			}
			k := authtest.NewKey(t, jose.ES384)
			status, out := authtest.Register(t, p.URL, testAdmin, map[string]any{"name": "Payer B", "jwks": authtest.JWKS(k), "scopes": []any{"system/Patient.rs"}})
			if !c.on {
				if conf["token_endpoint"] != idp.TokenEndpoint() {
					t.Errorf("smart-configuration without backend services: %v", conf)
				}
				msg, _ := out["error"].(map[string]any)["message"].(string)
				if status != 403 || !strings.Contains(msg, "-secret-key") {
					t.Errorf("registration without -secret-key: %d %v", status, out)
				}
				if r := authtest.RequestToken(t, tokenURL, authtest.Form("x", "system/*.rs")); r.Status != 404 || !strings.Contains(r.JSON["error_description"].(string), "-secret-key") {
					t.Errorf("token endpoint without -secret-key: %d %v", r.Status, r.JSON)
				}
				return
			}
			strs := func(v any) []string {
				var out []string
				for _, x := range v.([]any) {
					out = append(out, x.(string))
				}
				return out
			}
			if conf["token_endpoint"] != tokenURL || conf["jwks_uri"] != p.URL+"/auth/jwks" ||
				!slices.Equal(strs(conf["token_endpoint_auth_methods_supported"]), []string{"private_key_jwt"}) ||
				!slices.Equal(strs(conf["token_endpoint_auth_signing_alg_values_supported"]), []string{"RS384", "ES384"}) ||
				!slices.Contains(strs(conf["grant_types_supported"]), "client_credentials") ||
				!slices.Contains(strs(conf["scopes_supported"]), "system/*.rs") ||
				!slices.Contains(strs(conf["capabilities"]), "client-confidential-asymmetric") {
				t.Errorf("smart-configuration: %v", conf)
			}
			if !strings.Contains(toJSON(meta), tokenURL) {
				t.Errorf("CapabilityStatement does not name the token endpoint: %v", sec)
			}
			id, _ := out["clientId"].(string)
			if status != 201 || id == "" {
				t.Fatalf("register: %d %v", status, out)
			}
			p.call("PUT", "/fhir/Patient/p1", testAdmin, `{"resourceType":"Patient","id":"p1"}`, nil)
			p.call("PUT", "/fhir/Condition/c1", testAdmin, `{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}`, nil)
			tok := k.Token(t, id, tokenURL, "system/Patient.rs")
			if st := p.call("GET", "/fhir/Patient/p1", tok, nil, nil); st != 200 {
				t.Errorf("read with the backend token: %d", st)
			}
			if st := p.call("GET", "/fhir/Condition/c1", tok, nil, nil); st != 403 {
				t.Errorf("read beyond the token's scopes: %d", st)
			}
			var jwks map[string]any
			if st := p.call("GET", "/auth/jwks", "", nil, &jwks); st != 200 || len(jwks["keys"].([]any)) != 1 {
				t.Errorf("jwks: %d %v", st, jwks)
			}
			if st := p.call("DELETE", "/api/backend_clients/"+id, testAdmin, nil, nil); st != 204 {
				t.Fatalf("delete: %d", st)
			}
			if st := p.call("GET", "/fhir/Patient/p1", tok, nil, nil); st != 401 {
				t.Errorf("token of a deleted client: %d", st)
			}
			want := http.StatusUnauthorized
			if c.open {
				want = http.StatusOK
			}
			if st := p.call("GET", "/fhir/Patient/p1", "", nil, nil); st != want {
				t.Errorf("no token: %d, want %d", st, want)
			}
		})
	}
}

// TestBackendClientJWKSURLUnderTheOutboundPolicy: a client's jwksUrl is
// fetched through the outbound policy like every other connection: a
// loopback URL is refused under -outbound-allow none, and the client is
// told why (invalid_client).
func TestBackendClientJWKSURLUnderTheOutboundPolicy(t *testing.T) {
	t.Parallel()
	k := authtest.NewKey(t, jose.RS384)
	jwks := newJWKSServer(t, authtest.JWKS(k))
	for _, allow := range []string{"loopback", "none"} {
		t.Run(allow, func(t *testing.T) {
			p := startPayer(t, "-admin-token", testAdmin, "-secret-key", testSecretKey, "-outbound-allow", allow)
			status, out := authtest.Register(t, p.URL, testAdmin, map[string]any{"name": "Payer D", "jwksUrl": jwks.URL, "scopes": []any{"system/*.rs"}})
			id, _ := out["clientId"].(string)
			if status != 201 {
				t.Fatalf("register: %d %v", status, out)
			}
			r := authtest.RequestToken(t, p.URL+"/auth/token", authtest.Form(k.Assertion(t, id, p.URL+"/auth/token"), "system/*.rs"))
			if allow == "loopback" {
				if r.Status != 200 {
					t.Errorf("loopback allowed: %d %v", r.Status, r.JSON)
				}
				return
			}
			if d, _ := r.JSON["error_description"].(string); r.Status != 401 || r.Error() != "invalid_client" || !strings.Contains(d, "-outbound-allow") {
				t.Errorf("loopback refused: %d %v", r.Status, r.JSON)
			}
		})
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// newJWKSServer publishes a client's JWK Set on loopback.
func newJWKSServer(t *testing.T, set any) *httptest.Server {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(hs.Close)
	return hs
}

// TestREADMEBackendServicesWalkthrough runs the README's worked example of
// SMART Backend Services (the shell block of its section, with openssl
// and curl) against a real p2pserver, so that the example stays true: a
// key pair, its registration, a signed assertion, a token with the
// registered scope only, a FHIR read with it, and the revocation.
func TestREADMEBackendServicesWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "openssl", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the README example needs %s, which is not installed", tool)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## SMART Backend Services (other payers as clients)\n")
	if !ok {
		t.Fatal("README has no SMART Backend Services section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, script, ok := strings.Cut(section, "```sh\n")
	if !ok {
		t.Fatal("the section has no sh block")
	}
	script, _, _ = strings.Cut(script, "```")
	p := startPayer(t, "-admin-token", testAdmin, "-secret-key", testSecretKey)
	p.call("PUT", "/fhir/Patient/p1", testAdmin, `{"resourceType":"Patient","id":"p1"}`, nil)
	p.call("PUT", "/fhir/Coverage/cov1", testAdmin, `{"resourceType":"Coverage","id":"cov1","status":"active","beneficiary":{"reference":"Patient/p1"},"payor":[{"display":"Payer A"}]}`, nil)
	script = strings.ReplaceAll(script, "http://127.0.0.1:8080", p.URL)
	dir := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ADMIN="+testAdmin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README example failed: %v\n%s", err, out)
	}
	// What it writes goes under data/tryout/ (ignored by git), never into
	// the repository's top folder.
	if top, _ := os.ReadDir(dir); len(top) != 1 || top[0].Name() != "data" {
		t.Errorf("the example wrote into the top folder: %v", top)
	}
	token, _ := os.ReadFile(filepath.Join(dir, "data", "tryout", "token.json"))
	if !strings.Contains(string(token), `"scope":"system/*.rs"`) || !strings.Contains(string(token), `"access_token"`) {
		t.Errorf("token answer: %s", token)
	}
	if !strings.Contains(string(out), `"resourceType":"Bundle"`) || !strings.Contains(string(out), "cov1") {
		t.Errorf("the FHIR read with the token: %s", out)
	}
	var list map[string]any
	if p.call("GET", "/api/backend_clients", testAdmin, nil, &list); len(list["clients"].([]any)) != 0 {
		t.Errorf("the example's client was not revoked: %v", list)
	}
}
