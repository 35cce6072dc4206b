package oidcservers

import (
	"context"
	"errors"
	"net"
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
	_, err := NewTokenSource(context.Background(), srv, expired(t, p), nil)
	if !errs.Is(err, errs.Unprocessable) {
		t.Fatalf("NewTokenSource = %v, want Unprocessable", err)
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
