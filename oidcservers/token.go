package oidcservers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// ErrRefreshRejected is in the chain of the error a TokenSource returns when
// the authorization server refuses the refresh token (invalid_grant): it has
// expired or been revoked, and only the member can authorize again.
var ErrRefreshRejected = errors.New("oidcservers: refresh token rejected")

// ErrNoRefreshToken is in the chain of the error a TokenSource returns when
// the access token has expired and there is no refresh token.
var ErrNoRefreshToken = errors.New("oidcservers: access token expired and there is no refresh token")

// TokenSource is an oauth2.TokenSource for one member's tokens at one source
// payer. It returns the current access token while it is valid and refreshes
// it otherwise, sending the definition's customTokenParams with the refresh.
// It is safe for concurrent use; refreshes are serialized, so a rotating
// refresh token is never sent twice.
type TokenSource struct {
	ctx       context.Context
	srv       Server // where the token endpoint is found, on the first refresh
	clientID  string
	secret    string
	params    url.Values
	onRefresh func(*oauth2.Token)

	mu       sync.Mutex
	tok      *oauth2.Token
	endpoint *TokenEndpoint // found on the first refresh
}

var _ oauth2.TokenSource = (*TokenSource)(nil)

// NewTokenSource builds the TokenSource for srv and a member's tokens tok
// (tok.AccessToken may be empty: the first Token call then refreshes).
//
// Nothing is fetched here: while the access token is valid, Token returns
// it without contacting the authorization server. The token endpoint is
// found on the first refresh (FindTokenEndpoint: srv.TokenEndpoint, or its
// OpenID discovery document, or the SMART configuration of its
// fhirEndpoint), and a failure to find it is tried again at the next. The
// client authenticates with srv.ClientID and srv.ClientSecret: HTTP Basic
// (client_secret_basic) unless the discovered document lists only
// client_secret_post, and client_id alone in the form when there is no
// secret.
//
// onRefresh, if not nil, is called with every refreshed token, before Token
// returns it, so the caller can persist it (encrypted); it must not call back
// into the TokenSource. A refreshed token keeps the previous refresh token
// when the server does not rotate it.
//
// ctx is used for discovery and for every refresh request, like
// oauth2.Config.TokenSource: it must live as long as the TokenSource. An
// *http.Client stored in ctx under oauth2.HTTPClient is used for the requests.
func NewTokenSource(ctx context.Context, srv Server, tok *oauth2.Token, onRefresh func(*oauth2.Token)) (*TokenSource, error) {
	const op = "oidcservers.token_source"
	if tok == nil {
		return nil, errs.E(op, errs.Invalid, "no member token given")
	}
	params, err := ParseTokenParams(srv.CustomTokenParams)
	if err != nil {
		return nil, errs.E(op, errs.Invalid, "customTokenParams "+err.Error())
	}
	return &TokenSource{
		ctx:       ctx,
		srv:       srv,
		clientID:  srv.ClientID,
		secret:    srv.ClientSecret,
		params:    params,
		onRefresh: onRefresh,
		tok:       copyToken(tok),
	}, nil
}

// CanRefresh reports whether the TokenSource holds a refresh token.
func (ts *TokenSource) CanRefresh() bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.tok.RefreshToken != ""
}

func copyToken(t *oauth2.Token) *oauth2.Token {
	c := *t
	return &c
}

// Token returns a valid access token, refreshing first if the current one has
// expired (or expires within oauth2's ten-second margin).
func (ts *TokenSource) Token() (*oauth2.Token, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.tok.AccessToken != "" && ts.tok.Valid() {
		return copyToken(ts.tok), nil
	}
	return ts.refreshLocked()
}

// Invalidate marks accessToken as no longer usable, for a caller whose request
// with it was answered 401: the next Token call refreshes. If the current
// token is already another one (a concurrent caller refreshed), it does nothing.
func (ts *TokenSource) Invalidate(accessToken string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.tok.AccessToken == accessToken {
		ts.tok.Expiry = time.Unix(1, 0)
	}
}

func (ts *TokenSource) refreshLocked() (*oauth2.Token, error) {
	const op = "oidcservers.refresh"
	if ts.tok.RefreshToken == "" {
		at := ""
		if e := ts.tok.Expiry; e.After(time.Unix(1, 0)) {
			at = " at " + e.UTC().Format(time.RFC3339)
		}
		return nil, errs.E(op, errs.Unauthorized, "the member's access token has expired"+at+" and there is no refresh token to renew it; the member must authorize again", ErrNoRefreshToken)
	}
	form := url.Values{}
	for k, v := range ts.params {
		form[k] = v
	}
	if ts.endpoint == nil {
		ep, err := FindTokenEndpoint(ts.ctx, ts.srv)
		if err != nil {
			return nil, err
		}
		ts.endpoint = &ep
	}
	inHeader := ts.endpoint.Basic
	form.Set("grant_type", "refresh_token")
	form.Set("refresh_token", ts.tok.RefreshToken)
	if !inHeader || ts.secret == "" {
		form.Set("client_id", ts.clientID)
		if ts.secret != "" {
			form.Set("client_secret", ts.secret)
		}
	}
	req, err := http.NewRequestWithContext(ts.ctx, http.MethodPost, ts.endpoint.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, errs.E(op, errs.Unprocessable, "the token endpoint URL is not usable", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if inHeader && ts.secret != "" {
		// RFC 6749 section 2.3.1: id and secret are form-encoded before Basic.
		req.SetBasicAuth(url.QueryEscape(ts.clientID), url.QueryEscape(ts.secret))
	}
	resp, err := httpClient(ts.ctx).Do(req)
	if err != nil {
		return nil, transportError(op, "token endpoint response", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument))
	if err != nil {
		return nil, transportError(op, "token endpoint response", err)
	}
	fields, err := parseTokenResponse(resp.Header.Get("Content-Type"), body)
	if resp.StatusCode != http.StatusOK {
		return nil, refreshError(op, resp, body, fields)
	}
	if err != nil {
		return nil, errs.E(op, errs.Unprocessable, "the token endpoint answered with a body that is not a token response", err)
	}
	tok, err := tokenFromFields(fields)
	if err != nil {
		return nil, errs.E(op, errs.Unprocessable, "the token endpoint answered with an unusable token: "+err.Error())
	}
	if tok.RefreshToken == "" {
		tok.RefreshToken = ts.tok.RefreshToken
	}
	ts.tok = tok
	if ts.onRefresh != nil {
		ts.onRefresh(copyToken(tok))
	}
	return copyToken(tok), nil
}

// parseTokenResponse reads a token endpoint body: JSON per RFC 6749, or the
// form encoding a few providers still send.
func parseTokenResponse(contentType string, body []byte) (map[string]any, error) {
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "application/x-www-form-urlencoded" || mt == "text/plain" {
		vals, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, err
		}
		m := map[string]any{}
		for k := range vals {
			m[k] = vals.Get(k)
		}
		return m, nil
	}
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

func tokenFromFields(m map[string]any) (*oauth2.Token, error) {
	str := func(k string) string { s, _ := m[k].(string); return s }
	tok := &oauth2.Token{
		AccessToken:  str("access_token"),
		TokenType:    str("token_type"),
		RefreshToken: str("refresh_token"),
	}
	if tok.AccessToken == "" {
		return nil, errors.New("no access_token")
	}
	if tok.TokenType != "" && !strings.EqualFold(tok.TokenType, "bearer") {
		return nil, fmt.Errorf("token_type %q is not Bearer", tok.TokenType)
	}
	var secs int64
	switch v := m["expires_in"].(type) {
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return nil, errors.New("expires_in is not a number")
		}
		secs = int64(f)
	case string: // some providers send it quoted
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, errors.New("expires_in is not a number")
		}
		secs = n
	}
	if secs > 0 {
		tok.Expiry = time.Now().Add(time.Duration(secs) * time.Second)
		tok.ExpiresIn = secs
	}
	return tok.WithExtra(m), nil
}

// refreshError turns a refused refresh into an error the batch job can act on.
// The authorization server's error code and description are kept in an
// *oauth2.RetrieveError in the chain; the client message names only the code.
func refreshError(op string, resp *http.Response, body []byte, fields map[string]any) error {
	re := &oauth2.RetrieveError{Response: resp, Body: body}
	if fields != nil {
		re.ErrorCode, _ = fields["error"].(string)
		re.ErrorDescription, _ = fields["error_description"].(string)
		re.ErrorURI, _ = fields["error_uri"].(string)
	}
	switch {
	case re.ErrorCode == "invalid_grant":
		return errs.E(op, errs.Unauthorized, "the source payer rejected the member's refresh token (invalid_grant); the member must authorize again",
			fmt.Errorf("%w: %w", ErrRefreshRejected, re))
	case re.ErrorCode == "invalid_client" || re.ErrorCode == "unauthorized_client" || resp.StatusCode == http.StatusUnauthorized:
		return errs.E(op, errs.Permission, "the source payer rejected this server's client credentials ("+codeOrStatus(re, resp)+"); check clientId and clientSecret", re)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return errs.E(op, errs.Transient, "the source payer's token endpoint is unavailable ("+codeOrStatus(re, resp)+")", re)
	}
	return errs.E(op, errs.Unprocessable, "the source payer's token endpoint refused the refresh ("+codeOrStatus(re, resp)+")", re)
}

func codeOrStatus(re *oauth2.RetrieveError, resp *http.Response) string {
	if re.ErrorCode != "" && len(re.ErrorCode) < 64 && !strings.ContainsAny(re.ErrorCode, "\r\n") {
		return re.ErrorCode
	}
	return fmt.Sprintf("HTTP status %d", resp.StatusCode)
}
