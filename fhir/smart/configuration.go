package smart

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// wellKnownPath is where, below the FHIR base, SMART clients look for the
// authorization server's endpoints.
const wellKnownPath = "/.well-known/smart-configuration"

// WellKnownPath returns the path of the SMART configuration below the FHIR
// base, for mounting ConfigurationHandler next to the FHIR handler:
// r.Method("GET", "/fhir"+smart.WellKnownPath(), g.ConfigurationHandler()).
func WellKnownPath() string { return wellKnownPath }

// scopesSupported are the scope forms this server honours, for clients
// reading the SMART configuration.
var scopesSupported = []string{
	"openid", "fhirUser", "launch/patient", "offline_access", "online_access",
	"patient/*.read", "patient/*.write", "patient/*.*", "patient/*.rs", "patient/*.cruds",
	"user/*.read", "user/*.write", "user/*.*", "user/*.rs", "user/*.cruds",
	"system/*.read", "system/*.write", "system/*.*", "system/*.rs", "system/*.cruds",
}

// smartConfiguration is the SMART App Launch 2 discovery document.
type smartConfiguration struct {
	Issuer                string   `json:"issuer,omitempty"`
	JWKSURI               string   `json:"jwks_uri,omitempty"`
	AuthorizationEndpoint string   `json:"authorization_endpoint,omitempty"`
	TokenEndpoint         string   `json:"token_endpoint"`
	TokenAuthMethods      []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	TokenAuthAlgs         []string `json:"token_endpoint_auth_signing_alg_values_supported,omitempty"`
	GrantTypes            []string `json:"grant_types_supported"`
	RegistrationEndpoint  string   `json:"registration_endpoint,omitempty"`
	ScopesSupported       []string `json:"scopes_supported"`
	ResponseTypes         []string `json:"response_types_supported,omitempty"`
	IntrospectionEndpoint string   `json:"introspection_endpoint,omitempty"`
	RevocationEndpoint    string   `json:"revocation_endpoint,omitempty"`
	CodeChallengeMethods  []string `json:"code_challenge_methods_supported"`
	Capabilities          []string `json:"capabilities"`
}

// ConfigurationHandler serves the SMART configuration
// (.well-known/smart-configuration). It needs no token; mount it at the
// FHIR base + WellKnownPath().
//
// With Config.Backend set it describes this server's own authorization
// server for SMART Backend Services, whether or not issuers are trusted:
// token_endpoint, token_endpoint_auth_methods_supported ["private_key_jwt"],
// the assertion signing algorithms, grant_types_supported
// ["client_credentials"] and the system scopes (SMART App Launch 2,
// "Backend Services" and "client-confidential-asymmetric", discovery
// requirements). Member-facing apps find their identity provider through
// the OIDC server definitions, not here.
//
// Otherwise the endpoints are those of the first trusted issuer, read from
// its OpenID configuration: SMART names exactly one authorization server.
// Without a trusted issuer (open mode) it answers 404 with an
// OperationOutcome saying no authorization is needed; when the issuer
// cannot be reached, 503.
func (g *Guard) ConfigurationHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.backend != nil {
			writeConfiguration(w, r, backendConfiguration(g.backend.Endpoints()))
			return
		}
		if g.Open() {
			fhir.WriteError(w, r, errs.E("smart.configuration", errs.NotFound,
				"this server runs open, without an authorization server: no token is needed"))
			return
		}
		m, err := g.issuers[0].discovery(r.Context())
		if err != nil {
			w.Header().Set("Retry-After", "10")
			fhir.WriteError(w, r, errs.E("smart.configuration", errs.Transient,
				"the authorization server's configuration cannot be fetched right now; try again later", err))
			return
		}
		g.refreshSecurity()
		writeConfiguration(w, r, configurationFrom(m))
	})
}

func writeConfiguration(w http.ResponseWriter, r *http.Request, c *smartConfiguration) {
	body, err := json.Marshal(c)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	_, _ = w.Write(body)
}

// backendConfiguration is the SMART configuration of this server's own
// authorization server: client_credentials with private_key_jwt only. It
// names no issuer, since it offers no OpenID Connect sign-in (SMART App
// Launch 2, conformance: issuer is omitted without sso-openid-connect),
// and no authorization endpoint, since it offers no launch.
func backendConfiguration(e BackendEndpoints) *smartConfiguration {
	return &smartConfiguration{
		JWKSURI:              e.JWKSURI,
		TokenEndpoint:        e.TokenEndpoint,
		TokenAuthMethods:     []string{"private_key_jwt"},
		TokenAuthAlgs:        e.AssertionAlgs,
		GrantTypes:           []string{"client_credentials"},
		ScopesSupported:      e.Scopes,
		CodeChallengeMethods: []string{},
		Capabilities:         []string{"client-confidential-asymmetric", "permission-v1", "permission-v2"},
	}
}

func configurationFrom(m *metadata) *smartConfiguration {
	c := &smartConfiguration{
		Issuer: m.Issuer, JWKSURI: m.JWKSURI,
		AuthorizationEndpoint: m.AuthorizationEndpoint, TokenEndpoint: m.TokenEndpoint,
		TokenAuthMethods: m.TokenEndpointAuthMethods, TokenAuthAlgs: m.TokenEndpointAuthAlgs,
		GrantTypes:           m.GrantTypes,
		RegistrationEndpoint: m.RegistrationEndpoint, ResponseTypes: m.ResponseTypes,
		IntrospectionEndpoint: m.IntrospectionEndpoint, RevocationEndpoint: m.RevocationEndpoint,
		CodeChallengeMethods: m.CodeChallengeMethods,
		ScopesSupported:      scopesSupported,
	}
	if len(c.GrantTypes) == 0 {
		// OpenID Connect Discovery's default.
		c.GrantTypes = []string{"authorization_code", "implicit"}
	}
	if c.CodeChallengeMethods == nil {
		c.CodeChallengeMethods = []string{}
	}
	c.Capabilities = capabilities(m)
	return c
}

// capabilities lists the SMART capabilities that are true of this server
// together with its authorization server: the permission ones are this
// server's own; the others follow from what the issuer advertises.
func capabilities(m *metadata) []string {
	caps := []string{"permission-patient", "permission-user", "permission-v1", "permission-v2"}
	has := func(list []string, v string) bool { return slices.Contains(list, v) }
	grants := m.GrantTypes
	if len(grants) == 0 {
		grants = []string{"authorization_code", "implicit"}
	}
	if has(grants, "authorization_code") && m.AuthorizationEndpoint != "" {
		caps = append(caps, "launch-standalone", "context-standalone-patient")
	}
	if has(grants, "refresh_token") {
		caps = append(caps, "permission-offline")
	}
	methods := m.TokenEndpointAuthMethods
	if len(methods) == 0 {
		methods = []string{"client_secret_basic"} // the OAuth 2 default
	}
	if has(methods, "client_secret_basic") || has(methods, "client_secret_post") {
		caps = append(caps, "client-confidential-symmetric")
	}
	if has(methods, "private_key_jwt") {
		caps = append(caps, "client-confidential-asymmetric")
	}
	if has(methods, "none") {
		caps = append(caps, "client-public")
	}
	if has(m.ScopesSupported, "openid") {
		caps = append(caps, "sso-openid-connect")
	}
	slices.Sort(caps)
	return caps
}

// security is the CapabilityStatement.rest.security section: in open mode
// a warning; otherwise SMART-on-FHIR, the rules in words, and (m known)
// the oauth-uris extension with the authorization server's endpoints.
func (g *Guard) security(m *metadata) *fhir.CapSecurity {
	if g.Open() {
		sec := &fhir.CapSecurity{
			Description: "OPEN SERVER: no token issuer is trusted (-trusted-issuers is empty), so no access control applies: " +
				"every client may read and write all data without a token. For local use only.",
		}
		if g.backend != nil {
			e := g.backend.Endpoints()
			sec.Description += fmt.Sprintf(" An access token of this server's token endpoint (%s, SMART Backend Services) is verified when presented, "+
				"and the request is then held to its system/ scopes.", e.TokenEndpoint)
			sec.Extension = oauthURIs(e.TokenEndpoint, "", "", "")
		}
		return sec
	}
	var names []string
	for _, is := range g.issuers {
		names = append(names, is.URL)
	}
	if g.backend != nil {
		names = append(names, g.backend.Endpoints().Issuer+" (this server's token endpoint, SMART Backend Services)")
	}
	sec := &fhir.CapSecurity{
		Service: []map[string]any{{
			"coding": []map[string]any{{
				"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
				"code":   "SMART-on-FHIR", "display": "SMART-on-FHIR",
			}},
			"text": "OAuth2 bearer tokens (JWT) with SMART scopes",
		}},
		Description: fmt.Sprintf("Every request but GET /metadata needs a bearer token: a JWT access token from a trusted issuer (%s) "+
			"whose aud includes %s, verified for signature, exp and nbf. SMART scopes v1 and v2 decide what it may do "+
			"(patient/, user/ and system/ levels; search constraints in v2 scopes are not supported). "+
			"A patient claim confines the token to that member's compartment. "+
			"Endpoints of the authorization server: %s%s.",
			strings.Join(names, ", "), strings.Join(g.audience, " or "), g.cfg.BaseURL, wellKnownPath),
	}
	switch {
	case g.backend != nil:
		// The SMART configuration names this server's token endpoint; the
		// CapabilityStatement says the same.
		sec.Extension = oauthURIs(g.backend.Endpoints().TokenEndpoint, "", "", "")
	case m != nil && m.TokenEndpoint != "":
		sec.Extension = oauthURIs(m.TokenEndpoint, m.AuthorizationEndpoint, m.RevocationEndpoint, m.IntrospectionEndpoint)
	}
	return sec
}

// oauthURIs is the SMART oauth-uris extension of the CapabilityStatement's
// security section.
func oauthURIs(token, authorize, revoke, introspect string) []map[string]any {
	ext := []map[string]any{{"url": "token", "valueUri": token}}
	if authorize != "" {
		ext = append(ext, map[string]any{"url": "authorize", "valueUri": authorize})
	}
	if revoke != "" {
		ext = append(ext, map[string]any{"url": "revoke", "valueUri": revoke})
	}
	if introspect != "" {
		ext = append(ext, map[string]any{"url": "introspect", "valueUri": introspect})
	}
	return []map[string]any{{
		"url":       "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
		"extension": ext,
	}}
}

// refreshSecurity adds the authorization server's endpoints to the
// CapabilityStatement once they are known: discovery happens on first use
// or in Prepare, never here, so a request never waits for it.
func (g *Guard) refreshSecurity() {
	if g.Open() || g.backend != nil {
		return
	}
	g.mu.Lock()
	s, done := g.server, g.uris
	g.mu.Unlock()
	if s == nil || done {
		return
	}
	m := g.issuers[0].cachedMeta()
	if m == nil {
		return
	}
	s.SetSecurity(g.security(m))
	g.mu.Lock()
	g.uris = true
	g.mu.Unlock()
}
