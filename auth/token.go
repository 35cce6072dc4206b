package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// The fixed values of a Backend Services token request (SMART App Launch
// 2, Backend Services, "Obtain access token"; RFC 7523 section 2.2).
const (
	grantClientCredentials = "client_credentials"
	assertionTypeJWTBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// Size limits of a token request.
const (
	maxTokenRequest = 32 << 10
	maxAssertion    = 16 << 10
	maxJTI          = 256
)

// accessTokenType is the typ of the access tokens (RFC 9068 section
// 2.1), which tells them from any other JWT signed with the same keys.
const accessTokenType = "at+jwt"

// oauthErr is a token endpoint error (RFC 6749 section 5.2).
type oauthErr struct {
	status      int
	code        string
	description string
	cause       error // for the log
	retryAfter  time.Duration
}

func (e *oauthErr) Error() string { return e.code + ": " + e.description }

func invalidRequest(format string, args ...any) *oauthErr {
	return &oauthErr{status: http.StatusBadRequest, code: "invalid_request", description: fmt.Sprintf(format, args...)}
}

// invalidClient is a failed client authentication: 401 (RFC 6749 section
// 5.2; SMART: "If an error is encountered during the authentication
// process, the server SHALL respond with an invalid_client error").
func invalidClient(format string, args ...any) *oauthErr {
	return &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", description: fmt.Sprintf(format, args...)}
}

// tokenResponse is the access token response (SMART Backend Services,
// "Issue Access Token"; RFC 6749 section 5.1).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
}

// token is the token endpoint: client_credentials with a private_key_jwt
// client assertion.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	resp, err := s.issue(r)
	if err != nil {
		var oe *oauthErr
		if !errors.As(err, &oe) {
			s.log.Error("auth: token request failed", "err", err)
			oe = &oauthErr{status: http.StatusInternalServerError, code: "server_error", description: "the token could not be issued; the cause is in the server log"}
			if errs.KindOf(err) == errs.Transient {
				oe.status, oe.code, oe.description = http.StatusServiceUnavailable, "temporarily_unavailable", "the server cannot issue tokens right now; try again later"
			}
		} else {
			s.log.Info("auth: token request refused", "error", oe.code, "description", oe.description, "cause", oe.cause, "remote", r.RemoteAddr)
		}
		if oe.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(oe.retryAfter.Seconds())+1))
		}
		if oe.status == http.StatusUnauthorized {
			// RFC 7235: a 401 names a scheme; the client authenticates in
			// the body here, and nothing else would be understood.
			w.Header().Set("WWW-Authenticate", `Bearer realm="p2pserver", error="invalid_client"`)
		}
		oauthError(w, oe.status, oe.code, oe.description)
		return
	}
	writeJSON(w, http.StatusOK, resp, "no-store")
}

// issue checks a token request and makes the token.
func (s *Server) issue(r *http.Request) (*tokenResponse, error) {
	now := s.cfg.Now()
	if ok, wait := s.byAddr.allow(remoteHost(r), now); !ok {
		return nil, &oauthErr{status: http.StatusTooManyRequests, code: "temporarily_unavailable", retryAfter: wait,
			description: "too many token requests from this address; try again later"}
	}
	form, err := readForm(r)
	if err != nil {
		return nil, err
	}
	one := func(name string) (string, error) {
		switch v := form[name]; len(v) {
		case 0:
			return "", nil
		case 1:
			return v[0], nil
		}
		// RFC 6749 section 3.2: request parameters MUST NOT be repeated.
		return "", invalidRequest("parameter %s is given more than once", name)
	}
	var p struct{ grant, assertionType, assertion, scope, clientID string }
	for _, f := range []struct {
		name string
		dst  *string
	}{{"grant_type", &p.grant}, {"client_assertion_type", &p.assertionType}, {"client_assertion", &p.assertion},
		{"scope", &p.scope}, {"client_id", &p.clientID}} {
		if *f.dst, err = one(f.name); err != nil {
			return nil, err
		}
	}
	switch {
	case p.grant == "":
		return nil, invalidRequest("grant_type is required: client_credentials")
	case p.grant != grantClientCredentials:
		return nil, &oauthErr{status: http.StatusBadRequest, code: "unsupported_grant_type",
			description: fmt.Sprintf("grant_type %q is not supported: this token endpoint serves SMART Backend Services, grant_type=client_credentials", p.grant)}
	case p.assertionType == "" || p.assertion == "":
		return nil, invalidRequest("client_assertion_type (%s) and client_assertion (a signed JWT) are required", assertionTypeJWTBearer)
	case p.assertionType != assertionTypeJWTBearer:
		return nil, invalidClient("client_assertion_type %q is not supported; use %s (private_key_jwt)", p.assertionType, assertionTypeJWTBearer)
	case len(p.assertion) > maxAssertion:
		return nil, invalidRequest("client_assertion is longer than %d bytes", maxAssertion)
	case strings.TrimSpace(p.scope) == "":
		return nil, invalidRequest("scope is required (SMART Backend Services): the system/ scopes asked for, such as system/*.rs")
	}
	client, claims, err := s.authenticate(r.Context(), p.assertion, now)
	if err != nil {
		return nil, err
	}
	if p.clientID != "" && p.clientID != client.ClientID {
		return nil, invalidClient("client_id %q is not the assertion's iss", p.clientID)
	}
	if ok, wait := s.byIss.allow(client.ClientID, now); !ok {
		return nil, &oauthErr{status: http.StatusTooManyRequests, code: "temporarily_unavailable", retryAfter: wait,
			description: "too many token requests for this client; try again later"}
	}
	// The assertion is good: its jti may now be spent. Recorded only
	// after the signature holds, so nobody can spend a client's jti for it.
	if err := useJTI(r.Context(), s.st, client.ClientID, claims.ID, claims.Expiry.Time().Add(ClockSkew), now); err != nil {
		if errors.Is(err, errReplay) {
			return nil, invalidClient("the assertion's jti %q was already used; make a new assertion with a new jti for every token request", claims.ID)
		}
		return nil, err
	}
	granted, dropped := Intersect(p.scope, client.Scopes)
	if len(granted) == 0 {
		return nil, &oauthErr{status: http.StatusBadRequest, code: "invalid_scope",
			description: fmt.Sprintf("none of the scopes asked for (%s) is within the client's registered scopes (%s)", p.scope, strings.Join(client.Scopes, " ")),
			cause:       fmt.Errorf("dropped: %s", strings.Join(dropped, ", "))}
	}
	scope := strings.Join(granted, " ")
	tok, err := s.mint(r.Context(), client.ClientID, scope, now)
	if err != nil {
		return nil, err
	}
	s.log.Info("auth: access token issued", "client_id", client.ClientID, "client", client.Name, "scope", scope, "expires_in", int64(s.cfg.TokenLifetime.Seconds()))
	return &tokenResponse{AccessToken: tok, TokenType: "bearer", ExpiresIn: int64(s.cfg.TokenLifetime.Seconds()), Scope: scope}, nil
}

// readForm reads the application/x-www-form-urlencoded body, at most
// maxTokenRequest bytes; parameters in the URL's query do not count.
func readForm(r *http.Request) (url.Values, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("the body must be application/x-www-form-urlencoded")
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxTokenRequest)
	if err := r.ParseForm(); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, &oauthErr{status: http.StatusRequestEntityTooLarge, code: "invalid_request",
				description: fmt.Sprintf("the request body is larger than %d bytes", maxTokenRequest)}
		}
		return nil, invalidRequest("the body is not a valid form")
	}
	return r.PostForm, nil
}

// assertionClaims are the claims of a client assertion (RFC 7523 section
// 3).
type assertionClaims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub"`
	Audience  jwt.Audience     `json:"aud"`
	Expiry    *jwt.NumericDate `json:"exp"`
	NotBefore *jwt.NumericDate `json:"nbf"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	ID        string           `json:"jti"`
}

// authenticate checks a client assertion as SMART App Launch 2
// (client-confidential-asymmetric, "Signature Verification") and RFC 7523
// section 3 require: a JWS signed RS384 or ES384 (typ JWT, kid naming one
// key of the client's set of the algorithm's key type), iss = sub = a
// registered clientId, aud = the token URL, exp present, not passed and at
// most five minutes ahead, nbf and iat not in the future, a jti. Every
// failure is invalid_client. The jti is not spent here.
func (s *Server) authenticate(ctx context.Context, assertion string, now time.Time) (Client, *assertionClaims, error) {
	jws, err := jose.ParseSigned(assertion, SigningAlgs)
	if err != nil {
		return Client{}, nil, &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", cause: err,
			description: "client_assertion is not a JWS signed with RS384 or ES384 (compact serialization)"}
	}
	if len(jws.Signatures) != 1 {
		return Client{}, nil, invalidClient("client_assertion must carry exactly one signature")
	}
	h := jws.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); !strings.EqualFold(typ, "JWT") {
		return Client{}, nil, invalidClient(`client_assertion's header must have typ "JWT"`)
	}
	if h.KeyID == "" {
		return Client{}, nil, invalidClient("client_assertion's header must name its key (kid)")
	}
	var c assertionClaims
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c); err != nil {
		return Client{}, nil, &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", cause: err,
			description: "client_assertion's claims are not a JSON object of JWT claims"}
	}
	switch {
	case c.Issuer == "" || c.Subject == "":
		return Client{}, nil, invalidClient("client_assertion must have iss and sub, both the clientId")
	case c.Issuer != c.Subject:
		return Client{}, nil, invalidClient("client_assertion's iss and sub must both be the clientId")
	}
	client, err := s.clients.get(ctx, c.Issuer)
	if errs.Is(err, errs.NotFound) {
		return Client{}, nil, invalidClient("no backend client is registered with clientId %q", c.Issuer)
	}
	if err != nil {
		return Client{}, nil, err
	}
	keys, err := s.clientKeys(ctx, client, h)
	if err != nil {
		return Client{}, nil, err
	}
	payload, err := jws.Verify(keys)
	if err != nil {
		return Client{}, nil, &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", cause: err,
			description: fmt.Sprintf("client_assertion's signature does not verify with the client's key %q", h.KeyID)}
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return Client{}, nil, invalidClient("client_assertion's claims cannot be read")
	}
	tokenURL := s.TokenURL()
	switch {
	case !slices.ContainsFunc(c.Audience, func(a string) bool { return strings.TrimRight(a, "/") == tokenURL }):
		return Client{}, nil, invalidClient("client_assertion's aud must be the token URL, %s", tokenURL)
	case c.Expiry == nil:
		return Client{}, nil, invalidClient("client_assertion must have exp")
	case !now.Before(c.Expiry.Time().Add(ClockSkew)):
		return Client{}, nil, invalidClient("client_assertion has expired")
	case c.Expiry.Time().After(now.Add(MaxAssertionLifetime + ClockSkew)):
		return Client{}, nil, invalidClient("client_assertion's exp is more than five minutes in the future; SMART allows no more")
	case c.NotBefore != nil && c.NotBefore.Time().After(now.Add(ClockSkew)):
		return Client{}, nil, invalidClient("client_assertion is not valid yet (nbf)")
	case c.IssuedAt != nil && c.IssuedAt.Time().After(now.Add(ClockSkew)):
		return Client{}, nil, invalidClient("client_assertion was issued in the future (iat)")
	case c.ID == "":
		return Client{}, nil, invalidClient("client_assertion must have a jti, new for every assertion")
	case len(c.ID) > maxJTI:
		return Client{}, nil, invalidClient("client_assertion's jti is longer than %d bytes", maxJTI)
	}
	return client, &c, nil
}

// clientKeys is the one key of the client that may have signed an
// assertion with header h (SMART, client-confidential-asymmetric,
// "Signature Verification"): from the jku when it is the registered
// jwksUrl (any other jku fails), else from the registered set or URL; the
// key whose kid is the header's and whose kty fits its alg. None, or more
// than one, fails.
func (s *Server) clientKeys(ctx context.Context, c Client, h jose.Header) (jose.JSONWebKey, error) {
	var set []jose.JSONWebKey
	jku, _ := h.ExtraHeaders["jku"].(string)
	switch {
	case jku != "" && (c.JWKSURL == "" || jku != c.JWKSURL):
		return jose.JSONWebKey{}, invalidClient("client_assertion's jku is not the client's registered jwksUrl")
	case c.JWKSURL != "":
		keys, err := s.jwks.keys(ctx, c.JWKSURL, h.KeyID)
		if err != nil {
			return jose.JSONWebKey{}, &oauthErr{status: http.StatusUnauthorized, code: "invalid_client", cause: err,
				description: "the client's JWK Set could not be had from its jwksUrl: " + err.Error()}
		}
		set = keys
	default:
		keys, problem := parsePublicJWKS(c.JWKS)
		if problem != "" {
			return jose.JSONWebKey{}, fmt.Errorf("auth: registered keys of client %s: %s", c.ClientID, problem)
		}
		set = keys
	}
	var match []jose.JSONWebKey
	for _, k := range set {
		if k.KeyID == h.KeyID && keyFits(k, h.Algorithm) {
			match = append(match, k)
		}
	}
	switch len(match) {
	case 0:
		return jose.JSONWebKey{}, invalidClient("the client has no %s key with kid %q", keyTypeOf(h.Algorithm), h.KeyID)
	case 1:
		return match[0], nil
	}
	return jose.JSONWebKey{}, invalidClient("the client has several keys with kid %q", h.KeyID)
}

// keyFits reports whether a key's type is the one alg signs with.
func keyFits(k jose.JSONWebKey, alg string) bool {
	switch k.Key.(type) {
	case *rsa.PublicKey:
		return alg == string(jose.RS384)
	case *ecdsa.PublicKey:
		return alg == string(jose.ES384)
	}
	return false
}

func keyTypeOf(alg string) string {
	if strings.HasPrefix(alg, "ES") {
		return "EC"
	}
	return "RSA"
}

// mint makes an access token for client with scope.
func (s *Server) mint(ctx context.Context, client, scope string, now time.Time) (string, error) {
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", errs.E("auth.mint", errs.Internal, err)
	}
	claims := map[string]any{
		"iss": s.Issuer(), "sub": client, "client_id": client, "aud": s.cfg.FHIRBase,
		"iat": now.Unix(), "exp": now.Add(s.cfg.TokenLifetime).Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti), "scope": scope,
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", errs.E("auth.mint", errs.Internal, err)
	}
	return s.keys.Sign(ctx, accessTokenType, payload)
}

// remoteHost is the address a request came from, without the port.
func remoteHost(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

// oauthError writes an RFC 6749 section 5.2 error.
func oauthError(w http.ResponseWriter, status int, code, description string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": description}, "no-store")
}

// writeJSON answers with v as JSON and the given Cache-Control.
func writeJSON(w http.ResponseWriter, status int, v any, cacheControl string) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":"server_error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", cacheControl)
	if cacheControl == "no-store" {
		h.Set("Pragma", "no-cache")
	}
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
