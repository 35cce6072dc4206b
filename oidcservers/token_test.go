package oidcservers

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

const (
	clientID     = "p2p-client"
	clientSecret = "p2p-client-secret"
)

// providerServer is a definition of p with discovery only: no tokenEndpoint.
func providerServer(p *oidctest.Provider) Server {
	s := Server{
		PID:          1,
		Name:         "Payer A",
		Issuer:       p.Issuer(),
		ClientID:     clientID,
		ClientSecret: clientSecret,
		FHIREndpoint: p.Issuer() + "/fhir",
		ResponseType: "code",
	}
	return s
}

func newProvider(t *testing.T, opts ...oidctest.Option) *oidctest.Provider {
	t.Helper()
	p := oidctest.New(t, opts...)
	p.AddClient(clientID, clientSecret)
	return p
}

// expired mints a member token whose access token has already expired.
func expired(t *testing.T, p *oidctest.Provider) *oauth2.Token {
	t.Helper()
	tok, err := p.Mint(oidctest.Grant{ClientID: clientID, Patient: "pat-1", AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenSourceDiscoversAndRefreshesWithCustomParams(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newProvider(t, oidctest.WithIssuerPath("/realms/a"))
	srv := providerServer(p)
	srv.Issuer += "/" // the definition's trailing slash must not matter
	srv.CustomTokenParams = "memberId=M-42&aud=https%3A%2F%2Ftarget.example"

	old := expired(t, p)
	var persisted []*oauth2.Token
	ts, err := NewTokenSource(ctx, srv, old, func(t *oauth2.Token) { persisted = append(persisted, t) })
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == old.AccessToken || tok.RefreshToken == old.RefreshToken || !tok.Valid() {
		t.Errorf("token was not refreshed and rotated: %+v", tok)
	}
	if len(persisted) != 1 || persisted[0].RefreshToken != tok.RefreshToken || persisted[0].AccessToken != tok.AccessToken {
		t.Errorf("onRefresh got %+v, want the new token", persisted)
	}
	if tok.Extra("id_token") == nil {
		t.Error("the id_token of the response is not kept in Extra")
	}

	reqs := p.RefreshRequests()
	if len(reqs) != 1 {
		t.Fatalf("provider saw %d refreshes, want 1", len(reqs))
	}
	form := reqs[0]
	if form.Get("memberId") != "M-42" || form.Get("aud") != "https://target.example" {
		t.Errorf("custom params not sent: %v", form)
	}
	if form.Get("refresh_token") != old.RefreshToken {
		t.Errorf("refresh_token = %q", form.Get("refresh_token"))
	}
	if form.Has("client_secret") {
		t.Error("client secret sent in the form though the provider supports client_secret_basic")
	}

	// A valid token is served without asking the provider again.
	again, err := ts.Token()
	if err != nil || again.AccessToken != tok.AccessToken {
		t.Errorf("second Token = %v, %v", again, err)
	}
	if n := len(p.RefreshRequests()); n != 1 {
		t.Errorf("provider saw %d refreshes, want still 1", n)
	}

	// After a 401 the caller invalidates the token: the next call refreshes
	// with the rotated refresh token.
	ts.Invalidate(tok.AccessToken)
	third, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if third.AccessToken == tok.AccessToken || len(persisted) != 2 {
		t.Errorf("Invalidate did not cause a refresh")
	}
	if got := p.RefreshRequests()[1].Get("refresh_token"); got != tok.RefreshToken {
		t.Errorf("second refresh used %q, want the rotated token", got)
	}
	// Invalidating a token that is no longer current does nothing.
	ts.Invalidate(tok.AccessToken)
	if fourth, _ := ts.Token(); fourth.AccessToken != third.AccessToken {
		t.Error("Invalidate of a stale token forced a refresh")
	}
}

func TestTokenSourceConcurrentCallersRefreshOnce(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	ts, err := NewTokenSource(context.Background(), providerServer(p), expired(t, p), nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	tokens := make([]string, 8)
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := ts.Token()
			if err != nil {
				t.Error(err)
				return
			}
			tokens[i] = tok.AccessToken
		}()
	}
	wg.Wait()
	if n := len(p.RefreshRequests()); n != 1 {
		t.Errorf("%d refreshes for concurrent callers, want 1 (a rotated refresh token would be reused)", n)
	}
	for _, a := range tokens {
		if a != tokens[0] {
			t.Error("callers got different access tokens")
		}
	}
}

func TestTokenSourceRejectedRefreshToken(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	tok := expired(t, p)
	p.RevokeRefreshToken(tok.RefreshToken)
	called := false
	ts, err := NewTokenSource(context.Background(), providerServer(p), tok, func(*oauth2.Token) { called = true })
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	if !errors.Is(err, ErrRefreshRejected) {
		t.Fatalf("Token = %v, want ErrRefreshRejected", err)
	}
	if !errs.Is(err, errs.Unauthorized) {
		t.Errorf("kind = %v, want Unauthorized", errs.KindOf(err))
	}
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
		t.Errorf("no RetrieveError with invalid_grant in %v", err)
	}
	if called {
		t.Error("onRefresh called for a failed refresh")
	}
}

func TestTokenSourceWrongClientSecret(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	srv := providerServer(p)
	srv.ClientSecret = "not-the-secret"
	ts, err := NewTokenSource(context.Background(), srv, expired(t, p), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ts.Token()
	if !errs.Is(err, errs.Permission) || errors.Is(err, ErrRefreshRejected) {
		t.Errorf("Token = %v (kind %v), want Permission", err, errs.KindOf(err))
	}
	if msg, _ := errs.Public(err); strings.Contains(msg, "not-the-secret") {
		t.Errorf("message leaks the secret: %s", msg)
	}
}

func TestTokenSourceExplicitTokenEndpoint(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	srv := providerServer(p)
	srv.TokenEndpoint = p.TokenEndpoint()
	srv.Issuer = "https://issuer.invalid/not-discoverable" // proves no discovery happens
	ts, err := NewTokenSource(context.Background(), srv, expired(t, p), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Token(); err != nil {
		t.Fatalf("refresh at the explicit endpoint: %v", err)
	}
}

func TestTokenSourceIssuerMismatch(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	srv := providerServer(p)
	srv.AuthWellKnown = p.WellKnownURL()
	srv.Issuer = p.Issuer() + "/another-tenant"
	ts, err := NewTokenSource(context.Background(), srv, expired(t, p), nil)
	if err != nil {
		t.Fatal(err) // nothing is fetched before a refresh is needed
	}
	_, err = ts.Token()
	if !errs.Is(err, errs.Unprocessable) {
		t.Fatalf("Token = %v, want Unprocessable", err)
	}
	if msg, _ := errs.Public(err); !strings.Contains(msg, "issuer mismatch") {
		t.Errorf("message = %q", msg)
	}
	if n := len(p.RefreshRequests()); n != 0 {
		t.Errorf("the token endpoint of a mismatched provider was used %d times", n)
	}
}

func TestTokenSourceNoRefreshToken(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	tok := expired(t, p)
	tok.RefreshToken = ""
	ts, err := NewTokenSource(context.Background(), providerServer(p), tok, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Token(); !errors.Is(err, ErrNoRefreshToken) {
		t.Errorf("Token = %v, want ErrNoRefreshToken", err)
	}
}

func TestDiscoverUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	srv := Server{Issuer: "http://" + addr}
	_, err = Discover(context.Background(), srv)
	if !errs.Is(err, errs.Transient) {
		t.Errorf("Discover = %v, want Transient", err)
	}
}

func TestTokenSourceClientSecretPost(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	// A discovery document of its own that lists only client_secret_post,
	// pointing at the real provider's token endpoint.
	var doc *httptest.Server
	doc = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                doc.URL,
			"token_endpoint":                        p.TokenEndpoint(),
			"token_endpoint_auth_methods_supported": []string{"client_secret_post"},
		})
	}))
	t.Cleanup(doc.Close)
	srv := providerServer(p)
	srv.Issuer = doc.URL
	ts, err := NewTokenSource(context.Background(), srv, expired(t, p), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Token(); err != nil {
		t.Fatalf("refresh with client_secret_post: %v", err)
	}
	form := p.RefreshRequests()[0]
	if form.Get("client_id") != clientID || form.Get("client_secret") != clientSecret {
		t.Errorf("client credentials not in the form: %v", form)
	}
}

func TestTokenResponseParsing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, contentType, body string
		ok                      bool
		expiresIn               int64
	}{
		{"json", "application/json", `{"access_token":"a","token_type":"Bearer","expires_in":3600}`, true, 3600},
		{"json quoted expiry", "application/json", `{"access_token":"a","token_type":"bearer","expires_in":"60"}`, true, 60},
		{"no type", "application/json", `{"access_token":"a"}`, true, 0},
		{"form", "application/x-www-form-urlencoded", `access_token=a&token_type=bearer&expires_in=30`, true, 30},
		{"no access token", "application/json", `{"token_type":"Bearer"}`, false, 0},
		{"other token type", "application/json", `{"access_token":"a","token_type":"DPoP"}`, false, 0},
		{"bad expiry", "application/json", `{"access_token":"a","expires_in":"soon"}`, false, 0},
	}
	for _, tc := range tests {
		fields, err := parseTokenResponse(tc.contentType, []byte(tc.body))
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.name, err)
		}
		tok, err := tokenFromFields(fields)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if tc.ok && (tok.AccessToken != "a" || tok.ExpiresIn != tc.expiresIn || (tc.expiresIn > 0) == tok.Expiry.IsZero()) {
			t.Errorf("%s: token = %+v", tc.name, tok)
		}
	}
}

func TestTokenSourceServerErrorIsTransient(t *testing.T) {
	t.Parallel()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"temporarily_unavailable"}`))
	}))
	t.Cleanup(down.Close)
	srv := Server{ClientID: "c", TokenEndpoint: down.URL}
	ts, err := NewTokenSource(context.Background(), srv, &oauth2.Token{RefreshToken: "r"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Token(); !errs.Is(err, errs.Transient) || errors.Is(err, ErrRefreshRejected) {
		t.Errorf("Token = %v, want Transient", err)
	}
}

func TestTokenSourcePublicClient(t *testing.T) {
	t.Parallel()
	var got url.Values
	var authz string
	tokenEP := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got, authz = r.PostForm, r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"new","token_type":"Bearer","expires_in":300}`))
	}))
	t.Cleanup(tokenEP.Close)
	srv := Server{ClientID: "public-app", TokenEndpoint: tokenEP.URL}
	ts, err := NewTokenSource(context.Background(), srv, &oauth2.Token{AccessToken: "old", RefreshToken: "r1", Expiry: time.Now().Add(-time.Hour)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	if got.Get("client_id") != "public-app" || got.Has("client_secret") || authz != "" {
		t.Errorf("public client sent form %v, Authorization %q", got, authz)
	}
	// The server did not rotate: the old refresh token is kept.
	if tok.AccessToken != "new" || tok.RefreshToken != "r1" {
		t.Errorf("token = %+v", tok)
	}
}

// TestFindTokenEndpoint is where a definition's member tokens are
// refreshed, in order: its tokenEndpoint, its OpenID discovery document
// (authWellKnown or the issuer's), else the SMART configuration of its
// fhirEndpoint (SMART App Launch 2.x, .well-known/smart-configuration,
// where token_endpoint is required); each row then refreshes there for
// real, or fails saying what was tried.
func TestFindTokenEndpoint(t *testing.T) {
	t.Parallel()
	p := newProvider(t)
	// A FHIR server publishing only a SMART configuration, for an issuer
	// that publishes no OpenID discovery document (p's, under a path it
	// does not serve).
	plainIssuer := p.Issuer() + "/oauth-only"
	smart := func(issuer string) *httptest.Server {
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/fhir/.well-known/smart-configuration" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]any{"issuer": issuer, "token_endpoint": p.TokenEndpoint(),
				"authorization_endpoint": p.Issuer() + "/authorize", "capabilities": []string{"launch-standalone"}})
		}))
		t.Cleanup(hs.Close)
		return hs
	}
	withSMART, otherIssuer, bare := smart(plainIssuer), smart("https://another-issuer.example"), httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(bare.Close)
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()

	for _, c := range []struct {
		name   string
		change func(*Server)
		from   string // "" when none is found
		kind   errs.Kind
		says   []string
	}{
		{"the definition's tokenEndpoint, nothing fetched", func(s *Server) {
			s.TokenEndpoint, s.Issuer, s.FHIREndpoint = p.TokenEndpoint(), "https://issuer.invalid", "https://fhir.invalid/fhir"
		}, "definition", 0, nil},
		{"the issuer's OpenID discovery", func(s *Server) {}, "openid-configuration", 0, nil},
		{"authWellKnown", func(s *Server) { s.AuthWellKnown = p.WellKnownURL() }, "openid-configuration", 0, nil},
		{"the source's SMART configuration", func(s *Server) { s.Issuer, s.FHIREndpoint = plainIssuer, withSMART.URL+"/fhir" },
			"smart-configuration", 0, nil},
		{"a SMART configuration of another issuer", func(s *Server) { s.Issuer, s.FHIREndpoint = plainIssuer, otherIssuer.URL+"/fhir" },
			"", errs.Unprocessable, []string{"another-issuer.example", "set tokenEndpoint"}},
		{"neither document", func(s *Server) { s.Issuer, s.FHIREndpoint = plainIssuer, bare.URL+"/fhir" },
			"", errs.Unprocessable, []string{plainIssuer + "/.well-known/openid-configuration", bare.URL + "/fhir/.well-known/smart-configuration", "set tokenEndpoint"}},
		{"an explicit authWellKnown is not second-guessed", func(s *Server) {
			s.Issuer, s.AuthWellKnown, s.FHIREndpoint = plainIssuer, plainIssuer+"/.well-known/openid-configuration", withSMART.URL+"/fhir"
		}, "", errs.Unprocessable, []string{"set tokenEndpoint"}},
		{"unreachable", func(s *Server) { s.Issuer, s.FHIREndpoint = dead.URL, dead.URL+"/fhir" },
			"", errs.Transient, []string{"set tokenEndpoint"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := providerServer(p)
			c.change(&srv)
			ep, err := FindTokenEndpoint(context.Background(), srv)
			if c.from == "" {
				msg, _ := errs.Public(err)
				if errs.KindOf(err) != c.kind || !errors.Is(err, ErrNoTokenEndpoint) {
					t.Fatalf("FindTokenEndpoint = %+v, %v (kind %v), want %v", ep, err, errs.KindOf(err), c.kind)
				}
				for _, s := range c.says {
					if !strings.Contains(msg, s) {
						t.Errorf("message %q does not say %q", msg, s)
					}
				}
				return
			}
			if err != nil || ep.From != c.from || ep.URL != p.TokenEndpoint() {
				t.Fatalf("FindTokenEndpoint = %+v, %v; want %s from %s", ep, err, p.TokenEndpoint(), c.from)
			}
			ts, err := NewTokenSource(context.Background(), srv, expired(t, p), nil)
			if err != nil {
				t.Fatal(err)
			}
			if tok, err := ts.Token(); err != nil || tok.AccessToken == "" {
				t.Errorf("refresh at %s: %v", ep.URL, err)
			}
		})
	}
}

// TestTokenSourceFetchesNothingWhileTheTokenIsValid: a definition whose
// token endpoint cannot be found still serves a valid access token; only
// a refresh needs the endpoint.
func TestTokenSourceFetchesNothingWhileTheTokenIsValid(t *testing.T) {
	t.Parallel()
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	srv := Server{Name: "A", Issuer: dead.URL, ClientID: "c", FHIREndpoint: dead.URL + "/fhir"}
	ts, err := NewTokenSource(context.Background(), srv, &oauth2.Token{AccessToken: "valid", Expiry: time.Now().Add(time.Hour), RefreshToken: "r"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := ts.Token(); err != nil || tok.AccessToken != "valid" {
		t.Fatalf("Token = %v, %v", tok, err)
	}
	ts.Invalidate("valid")
	if _, err := ts.Token(); !errors.Is(err, ErrNoTokenEndpoint) {
		t.Errorf("refresh without an endpoint: %v", err)
	}
}
