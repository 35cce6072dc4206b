package oidcservers

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// validServer is a definition that passes validation; tests change one field.
func validServer() Server {
	return Server{
		Name:          "P2P Source Payer A",
		Issuer:        "https://sourcepayerA.example/issuer",
		ClientID:      "p2pexchangeclientId",
		ClientSecret:  "s3cr3t-value",
		Scopes:        "openid profile offline_access",
		AuthWellKnown: "https://sourcepayerA.example/.well-known/openid-configuration",
		FHIREndpoint:  "https://sourcepayerA.example/fhir",
		TokenEndpoint: "https://sourcepayerA.example/token",
		ResponseType:  "code",
	}
}

func jwkJSON(t *testing.T, k jose.JSONWebKey) string {
	t.Helper()
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestValidateFields(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	pubRSA := jwkJSON(t, jose.JSONWebKey{Key: rsaKey.Public(), KeyID: "r1", Use: "sig"})
	pubEC := jwkJSON(t, jose.JSONWebKey{Key: ecKey.Public(), KeyID: "e1"})
	privRSA := jwkJSON(t, jose.JSONWebKey{Key: rsaKey, KeyID: "r1"})
	privEd := jwkJSON(t, jose.JSONWebKey{Key: edPriv, KeyID: "d1"})
	encRSA := jwkJSON(t, jose.JSONWebKey{Key: rsaKey.Public(), KeyID: "x", Use: "enc"})
	oct := `{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"}`

	tests := []struct {
		name   string
		change func(*Server)
		field  string // "" = valid
	}{
		{"valid", func(*Server) {}, ""},
		{"minimal", func(s *Server) {
			*s = Server{Name: "n", Issuer: "http://127.0.0.1:8080", ClientID: "c", FHIREndpoint: "http://127.0.0.1:8080/fhir"}
		}, ""},
		{"issuer trailing slash", func(s *Server) { s.Issuer += "/" }, ""},
		{"public RSA JWK", func(s *Server) { s.JWKText = pubRSA }, ""},
		{"public JWKS", func(s *Server) { s.JWKText = `{"keys":[` + pubRSA + `,` + pubEC + `]}` }, ""},
		{"every response type", func(s *Server) { s.ResponseType = "code id_token token" }, ""},
		{"token params", func(s *Server) { s.CustomTokenParams = "memberId=123&aud=x" }, ""},
		{"bare token param", func(s *Server) { s.CustomTokenParams = "memberId" }, ""},
		{"scopes smart", func(s *Server) { s.Scopes = "launch/patient patient/*.read openid" }, ""},
		{"system access, private_key_jwt by default", func(s *Server) { s.SystemClientID = "c-1"; s.SystemScopes = "system/*.rs" }, ""},
		{"system access, client_secret_basic", func(s *Server) {
			s.SystemClientID, s.SystemAuth, s.SystemScopes = "c-1", "client_secret_basic", "system/Patient.rs system/Coverage.rs"
		}, ""},
		{"system access without tokenEndpoint (SMART configuration)", func(s *Server) {
			s.TokenEndpoint, s.SystemClientID, s.SystemScopes = "", "c-1", "system/*.rs"
		}, ""},

		{"name missing", func(s *Server) { s.Name = "" }, "name"},
		{"name too long", func(s *Server) { s.Name = strings.Repeat("n", 257) }, "name"},
		{"name control char", func(s *Server) { s.Name = "a\nb" }, "name"},
		{"name bad utf8", func(s *Server) { s.Name = "a\xffb" }, "name"},
		{"issuer missing", func(s *Server) { s.Issuer = "" }, "issuer"},
		{"issuer relative", func(s *Server) { s.Issuer = "/issuer" }, "issuer"},
		{"issuer ftp", func(s *Server) { s.Issuer = "ftp://x.example" }, "issuer"},
		{"issuer no host", func(s *Server) { s.Issuer = "https:///path" }, "issuer"},
		{"issuer query", func(s *Server) { s.Issuer = "https://x.example/?tenant=1" }, "issuer"},
		{"issuer fragment", func(s *Server) { s.Issuer = "https://x.example/#f" }, "issuer"},
		{"issuer credentials", func(s *Server) { s.Issuer = "https://u:p@x.example" }, "issuer"},
		{"issuer space", func(s *Server) { s.Issuer = "https://x.example/a b" }, "issuer"},
		{"issuer too long", func(s *Server) { s.Issuer = "https://x.example/" + strings.Repeat("a", 2048) }, "issuer"},
		{"clientId missing", func(s *Server) { s.ClientID = "" }, "clientId"},
		{"clientSecret too long", func(s *Server) { s.ClientSecret = strings.Repeat("s", 4097) }, "clientSecret"},
		{"fhirEndpoint missing", func(s *Server) { s.FHIREndpoint = "" }, "fhirEndpoint"},
		{"fhirEndpoint not url", func(s *Server) { s.FHIREndpoint = "not a url" }, "fhirEndpoint"},
		{"authWellKnown relative", func(s *Server) { s.AuthWellKnown = "/.well-known/openid-configuration" }, "authWellKnown"},
		{"tokenEndpoint scheme", func(s *Server) { s.TokenEndpoint = "javascript:alert(1)" }, "tokenEndpoint"},
		{"responseType unknown", func(s *Server) { s.ResponseType = "code+token" }, "responseType"},
		{"responseType order", func(s *Server) { s.ResponseType = "token code" }, "responseType"},
		{"scopes quote", func(s *Server) { s.Scopes = `openid "x"` }, "scopes"},
		{"scopes too long", func(s *Server) { s.Scopes = strings.Repeat("s", 2049) }, "scopes"},
		{"token params reserved", func(s *Server) { s.CustomTokenParams = "a=1&grant_type=password" }, "customTokenParams"},
		{"token params reserved case", func(s *Server) { s.CustomTokenParams = "Client_Secret=x" }, "customTokenParams"},
		{"token params bad escape", func(s *Server) { s.CustomTokenParams = "a=%zz" }, "customTokenParams"},
		{"token params empty key", func(s *Server) { s.CustomTokenParams = "=1" }, "customTokenParams"},
		{"organizationId too long", func(s *Server) { s.OrganizationID = strings.Repeat("o", 257) }, "organizationId"},
		{"notes too long", func(s *Server) { s.Notes = strings.Repeat("n", 16<<10+1) }, "notes"},
		{"systemAuth without systemClientId", func(s *Server) { s.SystemAuth = "private_key_jwt" }, "systemAuth"},
		{"systemScopes without systemClientId", func(s *Server) { s.SystemScopes = "system/*.rs" }, "systemScopes"},
		{"systemAuth unknown", func(s *Server) {
			s.SystemClientID, s.SystemAuth, s.SystemScopes = "c", "client_secret_post", "system/*.rs"
		}, "systemAuth"},
		{"systemScopes missing", func(s *Server) { s.SystemClientID = "c" }, "systemScopes"},
		{"systemScopes quote", func(s *Server) { s.SystemClientID, s.SystemScopes = "c", `system/*.rs "x"` }, "systemScopes"},
		{"systemClientId too long", func(s *Server) { s.SystemClientID, s.SystemScopes = strings.Repeat("c", 257), "system/*.rs" }, "systemClientId"},
		{"client_secret_basic without clientSecret", func(s *Server) {
			s.ClientSecret, s.SystemClientID, s.SystemAuth, s.SystemScopes = "", "c", "client_secret_basic", "system/*.rs"
		}, "clientSecret"},
		{"jwk not json", func(s *Server) { s.JWKText = "-----BEGIN PUBLIC KEY-----" }, "jwkText"},
		{"jwk private RSA", func(s *Server) { s.JWKText = privRSA }, "jwkText"},
		{"jwk private in set", func(s *Server) { s.JWKText = `{"keys":[` + pubRSA + `,` + privEd + `]}` }, "jwkText"},
		{"jwk symmetric", func(s *Server) { s.JWKText = oct }, "jwkText"},
		{"jwk encryption key", func(s *Server) { s.JWKText = encRSA }, "jwkText"},
		{"jwk empty set", func(s *Server) { s.JWKText = `{"keys":[]}` }, "jwkText"},
		{"jwk unknown kty", func(s *Server) { s.JWKText = `{"kty":"XYZ","n":"1"}` }, "jwkText"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := validServer()
			tc.change(&s)
			s.Normalize()
			issues := s.Validate()
			if tc.field == "" {
				if len(issues) != 0 {
					t.Fatalf("valid definition refused: %+v", issues)
				}
				return
			}
			if len(issues) != 1 || issues[0].Path != tc.field || issues[0].Message == "" {
				t.Fatalf("issues = %+v, want exactly one for %q", issues, tc.field)
			}
			// Messages about keys must not repeat key material.
			if tc.field == "jwkText" && (strings.Contains(issues[0].Message, `"d"`) || strings.Contains(issues[0].Message, "c2VjcmV0")) {
				t.Errorf("message quotes key material: %s", issues[0].Message)
			}
		})
	}
}

func TestValidateReportsEveryField(t *testing.T) {
	t.Parallel()
	s := Server{Issuer: "nope", FHIREndpoint: "x", ResponseType: "bogus", CustomTokenParams: "refresh_token=1", JWKText: "{",
		SystemClientID: "c", SystemAuth: "client_secret_basic"}
	s.Normalize()
	got := map[string]bool{}
	for _, is := range s.Validate() {
		got[is.Path] = true
	}
	for _, f := range []string{"name", "issuer", "clientId", "fhirEndpoint", "responseType", "customTokenParams", "jwkText", "systemScopes", "clientSecret"} {
		if !got[f] {
			t.Errorf("no issue for %s; got %v", f, got)
		}
	}
}

func TestNormalize(t *testing.T) {
	t.Parallel()
	s := Server{Name: "  A  ", Scopes: " openid   profile\toffline_access ", ClientSecret: " keep spaces "}
	s.Normalize()
	if s.Name != "A" || s.Scopes != "openid profile offline_access" || s.ResponseType != "code" || s.ClientSecret != " keep spaces " {
		t.Errorf("Normalize = %+v", s)
	}
}

func TestSameIssuer(t *testing.T) {
	t.Parallel()
	same := [][2]string{
		{"https://payer.example/issuer", "https://payer.example/issuer/"},
		{"https://payer.example", "https://payer.example/"},
		{"HTTPS://Payer.Example/issuer", "https://payer.example/issuer"},
	}
	for _, p := range same {
		if !SameIssuer(p[0], p[1]) {
			t.Errorf("SameIssuer(%q, %q) = false", p[0], p[1])
		}
	}
	different := [][2]string{
		{"https://payer.example/issuer", "https://payer.example/Issuer"},
		{"https://payer.example/issuer", "http://payer.example/issuer"},
		{"https://payer.example/issuer", "https://payer.example/issuer/x"},
		{"https://payer.example:8443", "https://payer.example"},
	}
	for _, p := range different {
		if SameIssuer(p[0], p[1]) {
			t.Errorf("SameIssuer(%q, %q) = true", p[0], p[1])
		}
	}
}

func TestJSONNeverCarriesSecret(t *testing.T) {
	t.Parallel()
	s := validServer()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), s.ClientSecret) || strings.Contains(string(b), "clientSecret") {
		t.Errorf("Server JSON carries the secret: %s", b)
	}
	// The seed's field names.
	for _, name := range []string{`"pid"`, `"name"`, `"issuer"`, `"clientId"`, `"scopes"`, `"authWellKnown"`, `"tokenEndpoint"`, `"fhirEndpoint"`, `"responseType"`} {
		if !strings.Contains(string(b), name) {
			t.Errorf("JSON lacks %s: %s", name, b)
		}
	}
}
