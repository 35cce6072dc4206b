package oidcservers

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// AssertionSigner signs the claims of a client assertion (JSON) as a
// compact JWS, RS384 or ES384, whose header names the key (kid) published
// at this payer's GET /api/jwks. auth.ClientKeys is one.
type AssertionSigner interface {
	Sign(ctx context.Context, typ string, claims []byte) (string, error)
}

// ClientAssertionType is client_assertion_type of a JWT client assertion
// (RFC 7523 section 2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertionLifetime is how far ahead a client assertion's exp is: SMART
// Backend Services asks for no more than five minutes; a minute less
// leaves room for the two clocks to differ.
const assertionLifetime = 4 * time.Minute

// systemTokenMargin is how long before its expiry a cached system access
// token is replaced, so that a request sent with it does not arrive after
// it expired.
const systemTokenMargin = 30 * time.Second

// ErrNoSystemAccess is in the chain of the error NewSystemTokenSource
// returns for a definition without systemClientId.
var ErrNoSystemAccess = errors.New("oidcservers: the definition has no system access")

// SystemToken is an access token of this payer acting as a system at a
// source payer, and what was granted.
type SystemToken struct {
	AccessToken string
	// Scopes are the scopes granted: the answer's scope, else (RFC 6749
	// section 5.1) those asked for.
	Scopes []string
	// Expiry is when the token expires; zero when the answer did not say.
	Expiry time.Time
	// TokenEndpoint is where it was obtained, and TokenEndpointFrom where
	// that URL was found: "definition" or "smart-configuration".
	TokenEndpoint     string
	TokenEndpointFrom string
}

// SystemTokenSource obtains and caches the access token of one
// definition's system access: the client_credentials grant (RFC 6749
// section 4.4) at the source payer's token endpoint, authenticated with a
// client assertion signed by this payer's keys (SMART App Launch 2,
// Backend Services, "Request access token": iss = sub = systemClientId,
// aud = the token endpoint, a unique jti, exp at most five minutes ahead)
// or with client_secret_basic. The token is reused until shortly before
// it expires. It is safe for concurrent use; requests for a new token are
// serialized.
type SystemTokenSource struct {
	srv    Server
	signer AssertionSigner
	client *http.Client
	now    func() time.Time

	mu       sync.Mutex
	tok      *SystemToken
	endpoint *TokenEndpoint
}

// NewSystemTokenSource builds the token source of srv's system access.
// signer is required with private_key_jwt; client makes every request
// (the binary's is checked by its outbound policy); nil is the package's
// default client, checked by netguard.Default. Nothing is fetched here.
// Errors: Invalid when srv has no systemClientId (ErrNoSystemAccess in the
// chain) or no signer for private_key_jwt.
func NewSystemTokenSource(srv Server, signer AssertionSigner, client *http.Client) (*SystemTokenSource, error) {
	const op = "oidcservers.system_token"
	srv.Normalize()
	if srv.SystemClientID == "" {
		return nil, errs.E(op, errs.Invalid, "the OIDC server definition has no systemClientId: set it, with systemScopes, to the client id this payer was given at the source payer", ErrNoSystemAccess)
	}
	if srv.SystemAuth == SystemAuthPrivateKeyJWT && signer == nil {
		return nil, errs.E(op, errs.Invalid, "private_key_jwt needs this server's client keys, which need -secret-key (P2P_SECRET_KEY)")
	}
	if client == nil {
		client = defaultClient
	}
	return &SystemTokenSource{srv: srv, signer: signer, client: client, now: time.Now}, nil
}

// Token returns the cached access token while it is valid for more than
// a short margin, else obtains a new one (Fetch).
func (ts *SystemTokenSource) Token(ctx context.Context) (SystemToken, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t := ts.tok; t != nil && (t.Expiry.IsZero() || ts.now().Add(systemTokenMargin).Before(t.Expiry)) {
		return *t, nil
	}
	return ts.fetchLocked(ctx)
}

// Invalidate drops accessToken from the cache, for a caller whose request
// with it was answered 401: the next Token obtains a new one.
func (ts *SystemTokenSource) Invalidate(accessToken string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.tok != nil && ts.tok.AccessToken == accessToken {
		ts.tok = nil
	}
}

// Fetch obtains a new access token whatever is cached, and caches it.
// Errors are *errs.Error whose message names the cause in words for an
// administrator (and never holds a secret): Permission for invalid_client
// or unauthorized_client, Invalid for invalid_scope, Transient or Timeout
// when the token endpoint could not be reached or answered 5xx or 429,
// Unprocessable otherwise. The OAuth error is an *oauth2.RetrieveError in
// the chain.
func (ts *SystemTokenSource) Fetch(ctx context.Context) (SystemToken, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.fetchLocked(ctx)
}

func (ts *SystemTokenSource) fetchLocked(ctx context.Context) (SystemToken, error) {
	const op = "oidcservers.system_token"
	ctx = context.WithValue(ctx, oauth2.HTTPClient, ts.client)
	if ts.endpoint == nil {
		ep, err := FindSystemTokenEndpoint(ctx, ts.srv)
		if err != nil {
			return SystemToken{}, err
		}
		ts.endpoint = &ep
	}
	ep := *ts.endpoint
	asked := strings.Fields(ts.srv.SystemScopes)
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {ts.srv.SystemScopes}}
	basic := false
	// What the endpoint's answer may echo of the request: never shown.
	var secrets []string
	switch ts.srv.SystemAuth {
	case SystemAuthClientSecretBasic:
		basic = true
		secrets = append(secrets, ts.srv.ClientSecret, url.QueryEscape(ts.srv.ClientSecret),
			base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(ts.srv.SystemClientID)+":"+url.QueryEscape(ts.srv.ClientSecret))))
	default:
		assertion, err := ts.assertion(ctx, ep.URL)
		if err != nil {
			return SystemToken{}, err
		}
		form.Set("client_assertion_type", ClientAssertionType)
		form.Set("client_assertion", assertion)
		secrets = append(secrets, assertion)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return SystemToken{}, errs.E(op, errs.Unprocessable, "the token endpoint URL is not usable", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if basic {
		// RFC 6749 section 2.3.1: id and secret are form-encoded before Basic.
		req.SetBasicAuth(url.QueryEscape(ts.srv.SystemClientID), url.QueryEscape(ts.srv.ClientSecret))
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		return SystemToken{}, transportError(op, "system access token from "+ep.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument))
	if err != nil {
		return SystemToken{}, transportError(op, "system access token from "+ep.URL, err)
	}
	fields, perr := parseTokenResponse(resp.Header.Get("Content-Type"), body)
	if resp.StatusCode != http.StatusOK {
		return SystemToken{}, systemTokenError(op, ts.srv, resp, body, fields, secrets)
	}
	if perr != nil {
		return SystemToken{}, errs.E(op, errs.Unprocessable, "the token endpoint "+ep.URL+" answered with a body that is not a token response", perr)
	}
	tok, err := tokenFromFields(fields)
	if err != nil {
		return SystemToken{}, errs.E(op, errs.Unprocessable, "the token endpoint "+ep.URL+" answered with an unusable token: "+cleanDescription(RedactCredentials(err.Error(), secrets...)))
	}
	granted := asked
	if sc, _ := fields["scope"].(string); strings.TrimSpace(sc) != "" {
		granted = strings.Fields(sc)
	}
	st := SystemToken{AccessToken: tok.AccessToken, Scopes: granted, Expiry: tok.Expiry, TokenEndpoint: ep.URL, TokenEndpointFrom: ep.From}
	ts.tok = &st
	return st, nil
}

// assertion builds and signs the client assertion for the token endpoint
// aud (SMART App Launch 2, Backend Services, "Authenticating to the Token
// endpoint", and RFC 7523 section 3).
func (ts *SystemTokenSource) assertion(ctx context.Context, aud string) (string, error) {
	const op = "oidcservers.client_assertion"
	jti := make([]byte, 24)
	if _, err := rand.Read(jti); err != nil {
		return "", errs.E(op, errs.Internal, err)
	}
	now := ts.now()
	claims, err := json.Marshal(map[string]any{
		"iss": ts.srv.SystemClientID,
		"sub": ts.srv.SystemClientID,
		"aud": aud,
		"jti": base64.RawURLEncoding.EncodeToString(jti),
		"iat": now.Unix(),
		"exp": now.Add(assertionLifetime).Unix(),
	})
	if err != nil {
		return "", errs.E(op, errs.Internal, err)
	}
	jws, err := ts.signer.Sign(ctx, "JWT", claims)
	if err != nil {
		return "", errs.E(op, "this server's client key could not sign the assertion", err)
	}
	return jws, nil
}

// FindSystemTokenEndpoint finds where the system access token of s is
// obtained: the definition's tokenEndpoint, else token_endpoint of the
// SMART configuration of its fhirEndpoint
// (<fhirEndpoint>/.well-known/smart-configuration, where SMART App Launch
// 2, Backend Services, says a client discovers it). Basic in the answer
// is true. Errors: Transient or Timeout when the document could not be
// fetched, else Unprocessable with ErrNoTokenEndpoint in the chain.
func FindSystemTokenEndpoint(ctx context.Context, s Server) (TokenEndpoint, error) {
	const op = "oidcservers.system_token_endpoint"
	if s.TokenEndpoint != "" {
		return TokenEndpoint{URL: s.TokenEndpoint, From: "definition", Basic: true}, nil
	}
	u := SMARTConfigurationURL(s)
	var sc smartConfiguration
	if err := getJSON(ctx, op, u, "SMART configuration", &sc); err != nil {
		msg, _ := errs.Public(err)
		k := errs.KindOf(err)
		if k != errs.Transient && k != errs.Timeout {
			k = errs.Unprocessable
		}
		return TokenEndpoint{}, errs.E(op, k, "no token endpoint for system access was found ("+u+": "+msg+"); set tokenEndpoint in the OIDC server definition", ErrNoTokenEndpoint)
	}
	if sc.TokenEndpoint == "" {
		return TokenEndpoint{}, errs.E(op, errs.Unprocessable, "no token endpoint for system access was found ("+u+" lists no token_endpoint); set tokenEndpoint in the OIDC server definition", ErrNoTokenEndpoint)
	}
	if msg := checkURL(sc.TokenEndpoint, false); msg != "" {
		return TokenEndpoint{}, errs.E(op, errs.Unprocessable, "the token_endpoint in "+u+" "+msg, ErrNoTokenEndpoint)
	}
	return TokenEndpoint{URL: sc.TokenEndpoint, From: "smart-configuration", Basic: true, Methods: sc.TokenEndpointAuthMethods}, nil
}

// systemTokenError turns a refused client_credentials grant into an error
// that says what to do. The source's error_description is quoted (cut
// short, control characters removed): it is often the only clue. What it,
// the error code or the body kept in the chain (for logs) may quote of the
// request, the secrets sent (the client secret, the client assertion) and
// anything shaped like a credential, is replaced first
// (RedactCredentials), and the body is kept to its first 1,000 bytes.
func systemTokenError(op string, srv Server, resp *http.Response, body []byte, fields map[string]any, secrets []string) error {
	kept := RedactCredentials(strings.ToValidUTF8(string(body), ""), secrets...)
	if len(kept) > 1000 {
		kept = strings.ToValidUTF8(kept[:1000], "") + "…"
	}
	re := &oauth2.RetrieveError{Response: resp, Body: []byte(kept)}
	if fields != nil {
		field := func(k string) string {
			v, _ := fields[k].(string)
			v = RedactCredentials(v, secrets...)
			if len(v) > 1000 {
				v = strings.ToValidUTF8(v[:1000], "") + "…"
			}
			return v
		}
		// Redacted whole, before the description is cut short: a
		// credential quoted never shows, not even its start.
		re.ErrorCode, re.ErrorDescription, re.ErrorURI = field("error"), field("error_description"), field("error_uri")
	}
	why := codeOrStatus(re, resp)
	if d := cleanDescription(re.ErrorDescription); d != "" {
		why += ": " + d
	}
	switch {
	case re.ErrorCode == "invalid_client" || re.ErrorCode == "unauthorized_client" || (re.ErrorCode == "" && resp.StatusCode == http.StatusUnauthorized):
		what := "the client assertion signed with this server's keys (is GET /api/jwks registered there as the client's jwksUrl?)"
		if srv.SystemAuth == SystemAuthClientSecretBasic {
			what = "the clientSecret"
		}
		return errs.E(op, errs.Permission, fmt.Sprintf("the source payer refused this server as system client %q (%s); check systemClientId and %s", srv.SystemClientID, why, what), re)
	case re.ErrorCode == "invalid_scope":
		return errs.E(op, errs.Invalid, fmt.Sprintf("the source payer refused the systemScopes %q (%s); ask only for scopes the client is registered for there", srv.SystemScopes, why), re)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return errs.E(op, errs.Transient, "the source payer's token endpoint is unavailable ("+why+")", re)
	}
	return errs.E(op, errs.Unprocessable, "the source payer's token endpoint refused the client_credentials grant ("+why+")", re)
}

// cleanDescription makes an error_description fit for a message: one
// line of printable characters, at most 200 bytes.
func cleanDescription(d string) string {
	d = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, d)
	d = strings.Join(strings.Fields(d), " ")
	if len(d) > 200 {
		d = d[:200]
		for !utf8.ValidString(d) {
			d = d[:len(d)-1]
		}
		d += "…"
	}
	return d
}

// SystemTokenReport is the answer of POST
// /api/oidc_servers/{id}/system_token: whether this payer obtains a
// system access token at the source, and what was granted. The token
// itself is never in it.
type SystemTokenReport struct {
	OK                bool     `json:"ok"`
	SystemClientID    string   `json:"systemClientId,omitempty"`
	SystemAuth        string   `json:"systemAuth,omitempty"`
	TokenEndpoint     string   `json:"tokenEndpoint,omitempty"`
	TokenEndpointFrom string   `json:"tokenEndpointFrom,omitempty"`
	RequestedScopes   []string `json:"requestedScopes"`
	GrantedScopes     []string `json:"grantedScopes"`
	// NotGranted are the requested scopes the answer left out.
	NotGranted []string `json:"notGranted"`
	// ExpiresIn is the token's lifetime in seconds, ExpiresAt its expiry.
	ExpiresIn *int64     `json:"expiresIn,omitempty"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	Problems  []string   `json:"problems"`
	Warnings  []string   `json:"warnings"`
}

// CheckSystemToken obtains a new system access token for s and reports
// what was granted. It never fails: every problem is in the report, in
// words safe to show an administrator. Bound it with ctx.
func CheckSystemToken(ctx context.Context, s Server, signer AssertionSigner, client *http.Client) SystemTokenReport {
	s.Normalize()
	rep := SystemTokenReport{SystemClientID: s.SystemClientID, SystemAuth: s.SystemAuth, RequestedScopes: strings.Fields(s.SystemScopes),
		GrantedScopes: []string{}, NotGranted: []string{}, Problems: []string{}, Warnings: []string{}}
	if rep.RequestedScopes == nil {
		rep.RequestedScopes = []string{}
	}
	ts, err := NewSystemTokenSource(s, signer, client)
	if err != nil {
		msg, _ := errs.Public(err)
		rep.Problems = append(rep.Problems, msg)
		return rep
	}
	if client == nil {
		client = defaultClient
	}
	ep, err := FindSystemTokenEndpoint(context.WithValue(ctx, oauth2.HTTPClient, client), s)
	if err != nil {
		msg, _ := errs.Public(err)
		rep.Problems = append(rep.Problems, msg)
		return rep
	}
	rep.TokenEndpoint, rep.TokenEndpointFrom = ep.URL, ep.From
	if len(ep.Methods) > 0 && !slices.Contains(ep.Methods, s.SystemAuth) {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the source's SMART configuration lists token_endpoint_auth_methods_supported %v, not %s", ep.Methods, s.SystemAuth))
	}
	ts.endpoint = &ep
	tok, err := ts.Fetch(ctx)
	if err != nil {
		msg, _ := errs.Public(err)
		rep.Problems = append(rep.Problems, msg)
		return rep
	}
	rep.GrantedScopes = tok.Scopes
	for _, sc := range rep.RequestedScopes {
		if !slices.Contains(tok.Scopes, sc) {
			rep.NotGranted = append(rep.NotGranted, sc)
		}
	}
	if len(rep.NotGranted) > 0 {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the source payer granted fewer scopes than asked for: %s not granted", strings.Join(rep.NotGranted, " ")))
	}
	if !tok.Expiry.IsZero() {
		at := tok.Expiry.UTC().Truncate(time.Second)
		in := int64(time.Until(tok.Expiry).Round(time.Second) / time.Second)
		rep.ExpiresAt, rep.ExpiresIn = &at, &in
	} else {
		rep.Warnings = append(rep.Warnings, "the token answer has no expires_in")
	}
	rep.OK = true
	return rep
}
