// Package oidcservers keeps the OIDC server definitions of source payers: the
// authorization servers members log in to, and whose tokens this server uses
// to pull the members' data. It holds the definition type and its validation,
// the bbolt repository (client secrets encrypted at rest), the /api routes,
// and the token handling batch jobs use: a refreshing oauth2.TokenSource for a
// member's tokens and a verifier for JWTs from the issuer.
package oidcservers

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Server is an OIDC server definition. The JSON names are those of the P2P
// API's GET /api/oidc_servers/{id}. ClientSecret is never encoded to JSON: it
// is written only by the repository, encrypted.
type Server struct {
	PID               int64  `json:"pid"`
	Name              string `json:"name"`
	Issuer            string `json:"issuer"`
	ClientID          string `json:"clientId,omitempty"`
	ClientSecret      string `json:"-"`
	JWKText           string `json:"jwkText,omitempty"`
	AuthWellKnown     string `json:"authWellKnown,omitempty"`
	Scopes            string `json:"scopes,omitempty"`
	FHIREndpoint      string `json:"fhirEndpoint,omitempty"`
	TokenEndpoint     string `json:"tokenEndpoint,omitempty"`
	CustomTokenParams string `json:"customTokenParams,omitempty"`
	ResponseType      string `json:"responseType,omitempty"`
	OrganizationID    string `json:"organizationId,omitempty"`
	Notes             string `json:"notes,omitempty"`

	// SystemClientID is the client id this payer was given at the source
	// payer for system-to-system access (SMART App Launch 2, Backend
	// Services): the iss and sub of its client assertions, or the Basic
	// user name. Empty: the definition serves the member-token flow only.
	SystemClientID string `json:"systemClientId,omitempty"`
	// SystemAuth is how this payer authenticates as SystemClientID:
	// SystemAuthPrivateKeyJWT (the default when SystemClientID is set) or
	// SystemAuthClientSecretBasic with ClientSecret.
	SystemAuth string `json:"systemAuth,omitempty"`
	// SystemScopes are the scopes asked for with the client_credentials
	// grant, space-separated (system/*.rs, say).
	SystemScopes string `json:"systemScopes,omitempty"`
}

// The values of Server.SystemAuth: the client authentication methods of
// the client_credentials grant (RFC 8414 token_endpoint_auth_method names).
const (
	// SystemAuthPrivateKeyJWT signs a client assertion with this payer's
	// own keys, published at GET /api/jwks (SMART Backend Services).
	SystemAuthPrivateKeyJWT = "private_key_jwt"
	// SystemAuthClientSecretBasic sends SystemClientID and the
	// definition's clientSecret with HTTP Basic (RFC 6749 section 2.3.1).
	SystemAuthClientSecretBasic = "client_secret_basic"
)

// ResponseTypes are the accepted values of Server.ResponseType, as listed by
// the P2P module guide. An empty ResponseType is stored as "code".
var ResponseTypes = []string{"code", "token", "id_token", "id_token token", "code id_token", "code token", "code id_token token", "none"}

// reservedTokenParams may not appear in CustomTokenParams: they would change
// the grant or the client authentication the server performs.
var reservedTokenParams = []string{"grant_type", "refresh_token", "client_id", "client_secret", "client_assertion", "client_assertion_type", "code", "redirect_uri", "code_verifier"}

// Size limits, generous for real values and small enough to keep one
// definition well inside a bbolt page or two.
const (
	maxShort   = 256       // name, clientId, organizationId
	maxURL     = 2048      // every URL
	maxScopes  = 2048      // scopes, customTokenParams
	maxSecret  = 4096      // clientSecret
	maxNotes   = 16 << 10  // notes
	maxJWKText = 256 << 10 // jwkText
)

// Normalize trims surrounding white space from every field except the secret,
// and defaults ResponseType to "code".
func (s *Server) Normalize() {
	for _, f := range []*string{&s.Name, &s.Issuer, &s.ClientID, &s.JWKText, &s.AuthWellKnown, &s.Scopes,
		&s.FHIREndpoint, &s.TokenEndpoint, &s.CustomTokenParams, &s.ResponseType, &s.OrganizationID, &s.Notes,
		&s.SystemClientID, &s.SystemAuth, &s.SystemScopes} {
		*f = strings.TrimSpace(*f)
	}
	s.Scopes = strings.Join(strings.Fields(s.Scopes), " ")
	s.SystemScopes = strings.Join(strings.Fields(s.SystemScopes), " ")
	if s.ResponseType == "" {
		s.ResponseType = "code"
	}
	if s.SystemClientID != "" && s.SystemAuth == "" {
		s.SystemAuth = SystemAuthPrivateKeyJWT
	}
}

// Validate checks a normalized definition and returns one issue per field in
// error (Path is the JSON field name), or nil. Uniqueness of the issuer is the
// repository's to check.
func (s *Server) Validate() []errs.Issue {
	var issues []errs.Issue
	add := func(field, format string, args ...any) {
		issues = append(issues, errs.Issue{Code: "value", Path: field, Message: fmt.Sprintf(format, args...)})
	}
	required := func(field, v string) bool {
		if v == "" {
			issues = append(issues, errs.Issue{Code: "required", Path: field, Message: "is required"})
			return false
		}
		return true
	}
	line := func(field, v string, max int) {
		switch {
		case len(v) > max:
			add(field, "must be at most %d bytes", max)
		case !utf8.ValidString(v):
			add(field, "must be valid UTF-8")
		case strings.IndexFunc(v, unicode.IsControl) >= 0:
			add(field, "must be a single line without control characters")
		}
	}
	urlField := func(field, v string, isIssuer bool) {
		if v == "" {
			return
		}
		if msg := checkURL(v, isIssuer); msg != "" {
			add(field, "%s", msg)
		}
	}

	if required("name", s.Name) {
		line("name", s.Name, maxShort)
	}
	if required("issuer", s.Issuer) {
		urlField("issuer", s.Issuer, true)
	}
	if required("clientId", s.ClientID) {
		line("clientId", s.ClientID, maxShort)
	}
	if len(s.ClientSecret) > maxSecret {
		add("clientSecret", "must be at most %d bytes", maxSecret)
	}
	if required("fhirEndpoint", s.FHIREndpoint) {
		urlField("fhirEndpoint", s.FHIREndpoint, false)
	}
	urlField("authWellKnown", s.AuthWellKnown, false)
	urlField("tokenEndpoint", s.TokenEndpoint, false)
	line("organizationId", s.OrganizationID, maxShort)
	if len(s.Notes) > maxNotes || !utf8.ValidString(s.Notes) {
		add("notes", "must be valid UTF-8 of at most %d bytes", maxNotes)
	}
	scopes := func(field, v string) {
		if len(v) > maxScopes {
			add(field, "must be at most %d bytes", maxScopes)
		} else if i := strings.IndexFunc(v, func(r rune) bool { return r != ' ' && (r < 0x21 || r > 0x7e || r == '"' || r == '\\') }); i >= 0 {
			add(field, "must be space-separated OAuth2 scope tokens (printable ASCII without \" or \\)")
		}
	}
	scopes("scopes", s.Scopes)
	s.validateSystem(add, line, scopes)
	if len(s.CustomTokenParams) > maxScopes {
		add("customTokenParams", "must be at most %d bytes", maxScopes)
	} else if _, err := ParseTokenParams(s.CustomTokenParams); err != nil {
		add("customTokenParams", "%s", err.Error())
	}
	if !validResponseType(s.ResponseType) {
		add("responseType", "must be one of: %s", strings.Join(ResponseTypes, ", "))
	}
	if len(s.JWKText) > maxJWKText {
		add("jwkText", "must be at most %d bytes", maxJWKText)
	} else if s.JWKText != "" {
		if _, err := ParsePublicJWKs(s.JWKText); err != nil {
			add("jwkText", "%s", err.Error())
		}
	}
	return issues
}

// validateSystem checks the fields of system-to-system access: they go
// together (a systemAuth or systemScopes without systemClientId is a
// mistake), and client_secret_basic needs the clientSecret.
func (s *Server) validateSystem(add func(field, format string, args ...any), line func(field, v string, max int), scopes func(field, v string)) {
	if s.SystemClientID == "" {
		if s.SystemAuth != "" {
			add("systemAuth", "needs systemClientId: the client id this payer was given at the source payer")
		}
		if s.SystemScopes != "" {
			add("systemScopes", "needs systemClientId: the client id this payer was given at the source payer")
		}
		return
	}
	line("systemClientId", s.SystemClientID, maxShort)
	switch s.SystemAuth {
	case SystemAuthPrivateKeyJWT:
	case SystemAuthClientSecretBasic:
		if s.ClientSecret == "" {
			add("clientSecret", "is required with systemAuth %q: it is the secret sent with systemClientId", SystemAuthClientSecretBasic)
		}
	default:
		add("systemAuth", "must be %q (the default) or %q", SystemAuthPrivateKeyJWT, SystemAuthClientSecretBasic)
	}
	if s.SystemScopes == "" {
		add("systemScopes", "is required with systemClientId: the scopes to ask for, such as system/*.rs")
	} else {
		scopes("systemScopes", s.SystemScopes)
	}
}

func validResponseType(v string) bool {
	for _, rt := range ResponseTypes {
		if v == rt {
			return true
		}
	}
	return false
}

// checkURL returns what is wrong with an absolute http(s) URL, or "".
func checkURL(v string, isIssuer bool) string {
	if len(v) > maxURL {
		return fmt.Sprintf("must be at most %d bytes", maxURL)
	}
	u, err := url.Parse(v)
	switch {
	case err != nil || strings.ContainsAny(v, " \t\r\n"):
		return "must be an absolute http or https URL"
	case u.Scheme != "http" && u.Scheme != "https":
		return "must be an absolute http or https URL"
	case u.Host == "" || u.Hostname() == "":
		return "must be an absolute http or https URL with a host"
	case u.User != nil:
		return "must not contain credentials"
	case u.Fragment != "" || strings.Contains(v, "#"):
		return "must not contain a fragment"
	case isIssuer && u.RawQuery != "":
		return "must not contain a query (OpenID Connect Discovery 1.0, section 3)"
	}
	return ""
}

// issuerKey is the form of an issuer URL used for comparison: scheme and host
// lower-cased, trailing slashes removed. Two issuers are the same definition
// if their keys are equal.
func issuerKey(iss string) string {
	iss = strings.TrimRight(strings.TrimSpace(iss), "/")
	u, err := url.Parse(iss)
	if err != nil || u.Host == "" {
		return iss
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + u.EscapedPath() + query(u)
}

func query(u *url.URL) string {
	if u.RawQuery == "" {
		return ""
	}
	return "?" + u.RawQuery
}

// SameIssuer reports whether two issuer URLs name the same issuer, ignoring a
// trailing slash and the case of scheme and host. Use it to match a token's
// iss claim with a definition.
func SameIssuer(a, b string) bool { return issuerKey(a) == issuerKey(b) }

// ParseTokenParams parses customTokenParams ("key=value&key2=value2", URL
// form encoding; a bare "key" is sent with an empty value). It refuses empty
// keys and the parameters the refresh grant and client authentication set.
func ParseTokenParams(s string) (url.Values, error) {
	if s == "" {
		return url.Values{}, nil
	}
	v, err := url.ParseQuery(s)
	if err != nil {
		return nil, fmt.Errorf("must be URL form encoded: key=value&key2=value2")
	}
	for k := range v {
		if k == "" {
			return nil, fmt.Errorf("has a parameter without a name")
		}
		for _, r := range reservedTokenParams {
			if strings.EqualFold(k, r) {
				return nil, fmt.Errorf("must not set %q: the server sets it", k)
			}
		}
	}
	return v, nil
}

// ParsePublicJWKs parses a JWK or a JWK set and returns its keys. It refuses
// private and symmetric keys (they are secrets and must not be stored in a
// definition anyone can read), encryption keys, and key types that cannot
// verify a JWT signature. Error messages never quote key material.
func ParsePublicJWKs(text string) ([]jose.JSONWebKey, error) {
	var probe struct {
		Keys json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal([]byte(text), &probe); err != nil {
		return nil, fmt.Errorf("must be a JSON Web Key or a JSON Web Key Set")
	}
	var keys []jose.JSONWebKey
	if probe.Keys != nil {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal([]byte(text), &set); err != nil {
			return nil, fmt.Errorf("is not a valid JSON Web Key Set: a key is malformed or of an unsupported type")
		}
		keys = set.Keys
	} else {
		var k jose.JSONWebKey
		if err := json.Unmarshal([]byte(text), &k); err != nil {
			return nil, fmt.Errorf("is not a valid JSON Web Key: malformed or of an unsupported type")
		}
		keys = []jose.JSONWebKey{k}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("must contain at least one key")
	}
	for i, k := range keys {
		name := fmt.Sprintf("key %d", i+1)
		if k.KeyID != "" {
			name = fmt.Sprintf("key %q", k.KeyID)
		}
		if _, symmetric := k.Key.([]byte); symmetric {
			return nil, fmt.Errorf("%s is a symmetric key: only public keys may be stored", name)
		}
		if !k.IsPublic() {
			return nil, fmt.Errorf("%s is a private key: only public keys may be stored", name)
		}
		if !k.Valid() {
			return nil, fmt.Errorf("%s is not a valid public key", name)
		}
		if k.Use != "" && k.Use != "sig" {
			return nil, fmt.Errorf("%s has use %q: only signature keys (use \"sig\") can verify tokens", name, k.Use)
		}
	}
	return keys, nil
}
