package oidcservers

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

func TestVerifierWithDiscoveredKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newProvider(t)
	srv := providerServer(p)
	srv.Issuer += "/"
	v, err := NewVerifier(ctx, srv)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.Mint(oidctest.Grant{ClientID: clientID, Patient: "pat-7"})
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string]string{"access token": tok.AccessToken, "id token": tok.Extra("id_token").(string)} {
		got, err := v.Verify(ctx, raw)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got.Subject != "member-pat-7" {
			t.Errorf("%s: sub = %q", name, got.Subject)
		}
	}
	var claims struct {
		Patient string `json:"patient"`
	}
	at, _ := v.Verify(ctx, tok.AccessToken)
	if err := at.Claims(&claims); err != nil || claims.Patient != "pat-7" {
		t.Errorf("patient claim = %q, %v", claims.Patient, err)
	}

	old, err := p.Mint(oidctest.Grant{ClientID: clientID, Patient: "pat-7", AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(ctx, old.AccessToken)
	var expiredErr *oidc.TokenExpiredError
	if !errs.Is(err, errs.Unauthorized) || !errors.As(err, &expiredErr) {
		t.Errorf("expired token: %v", err)
	}

	// Signed by another provider's key, with this issuer and audience.
	other := newProvider(t)
	forged, err := other.Sign(map[string]any{"iss": p.Issuer(), "aud": clientID, "sub": "x", "exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, forged); !errs.Is(err, errs.Unauthorized) {
		t.Errorf("token signed by another key: %v", err)
	}
	// This provider's key, another issuer.
	foreign, _ := p.Sign(map[string]any{"iss": "https://evil.example", "aud": clientID, "sub": "x", "exp": time.Now().Add(time.Hour).Unix()})
	if _, err := v.Verify(ctx, foreign); !errs.Is(err, errs.Unauthorized) {
		t.Errorf("token of another issuer: %v", err)
	}
	// Another audience.
	aud, _ := p.Sign(map[string]any{"iss": p.Issuer(), "aud": "someone-else", "sub": "x", "exp": time.Now().Add(time.Hour).Unix()})
	if _, err := v.Verify(ctx, aud); !errs.Is(err, errs.Unauthorized) {
		t.Errorf("token for another audience: %v", err)
	}
	va, err := NewVerifier(ctx, srv, WithAudience("someone-else"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := va.Verify(ctx, aud); err != nil {
		t.Errorf("WithAudience: %v", err)
	}
	vn, _ := NewVerifier(ctx, srv, WithoutAudienceCheck())
	if _, err := vn.Verify(ctx, aud); err != nil {
		t.Errorf("WithoutAudienceCheck: %v", err)
	}
}

func TestVerifierWithStaticJWK(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newProvider(t)
	now := time.Now()
	claims := map[string]any{"iss": p.Issuer() + "/", "aud": clientID, "sub": "org-1", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
	raw, err := p.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	for name, jwk := range map[string]string{"JWK": p.PublicJWK(), "JWKS": p.PublicJWKS()} {
		srv := providerServer(p)
		srv.JWKText = jwk
		// Point discovery nowhere: a static key set must not need it.
		srv.AuthWellKnown = "http://127.0.0.1:1/.well-known/openid-configuration"
		v, err := NewVerifier(ctx, srv)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tok, err := v.Verify(ctx, raw)
		if err != nil {
			t.Fatalf("%s: a JWT signed by the key does not verify: %v", name, err)
		}
		if tok.Subject != "org-1" {
			t.Errorf("%s: sub = %q", name, tok.Subject)
		}
	}

	// A JWT signed by a key not in jwkText is refused.
	other := newProvider(t)
	srv := providerServer(p)
	srv.JWKText = other.PublicJWK()
	v, err := NewVerifier(ctx, srv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, raw); !errs.Is(err, errs.Unauthorized) {
		t.Errorf("JWT not signed by the static key: %v", err)
	}
}
