package oidctest

import (
	"context"
	"crypto"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

type tokenResponse struct {
	AccessToken      string `json:"access_token"`
	RefreshToken     string `json:"refresh_token"`
	IDToken          string `json:"id_token"`
	ExpiresIn        int    `json:"expires_in"`
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
}

func refresh(t *testing.T, p *Provider, clientID, secret, rt string, extra url.Values) (int, tokenResponse) {
	t.Helper()
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	for k, v := range extra {
		form[k] = v
	}
	req, _ := http.NewRequest(http.MethodPost, p.TokenEndpoint(), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tr tokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, tr
}

func TestProviderDiscoveryMintRefreshRevoke(t *testing.T) {
	t.Parallel()
	p := New(t, WithIssuerPath("/realms/payer-a"))
	p.AddClient("p2p", "client-secret")
	ctx := context.Background()

	prov, err := oidc.NewProvider(ctx, p.Issuer())
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	if prov.Endpoint().TokenURL != p.TokenEndpoint() {
		t.Errorf("discovered token endpoint %q, want %q", prov.Endpoint().TokenURL, p.TokenEndpoint())
	}

	tok, err := p.Mint(Grant{ClientID: "p2p", Patient: "pat-1"})
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.AccessToken == "" || !tok.Valid() {
		t.Fatalf("minted token incomplete: %+v", tok)
	}
	// The access token is a JWT from this issuer carrying the SMART context.
	v := prov.Verifier(&oidc.Config{ClientID: "p2p"})
	at, err := v.Verify(ctx, tok.AccessToken)
	if err != nil {
		t.Fatalf("access token does not verify against the discovered JWKS: %v", err)
	}
	var claims struct {
		Patient string `json:"patient"`
		Scope   string `json:"scope"`
	}
	if err := at.Claims(&claims); err != nil {
		t.Fatal(err)
	}
	if claims.Patient != "pat-1" || !strings.Contains(claims.Scope, "patient/*.read") || at.Subject != "member-pat-1" {
		t.Errorf("claims = %+v sub %q", claims, at.Subject)
	}
	if id, err := v.Verify(ctx, tok.Extra("id_token").(string)); err != nil {
		t.Errorf("id token: %v", err)
	} else if id.Subject != "member-pat-1" {
		t.Errorf("id token sub = %q", id.Subject)
	}

	// Refresh rotates the refresh token and records the form.
	status, tr := refresh(t, p, "p2p", "client-secret", tok.RefreshToken, url.Values{"memberId": {"M-1"}})
	if status != 200 || tr.AccessToken == "" || tr.RefreshToken == "" || tr.RefreshToken == tok.RefreshToken {
		t.Fatalf("refresh: %d %+v", status, tr)
	}
	if tr.ExpiresIn < 3500 || tr.ExpiresIn > 3600 {
		t.Errorf("expires_in = %d, want about an hour", tr.ExpiresIn)
	}
	if reqs := p.RefreshRequests(); len(reqs) != 1 || reqs[0].Get("memberId") != "M-1" {
		t.Errorf("recorded refresh requests = %v", reqs)
	}
	status, tr2 := refresh(t, p, "p2p", "client-secret", tok.RefreshToken, nil)
	if status != 400 || tr2.Error != "invalid_grant" {
		t.Errorf("reusing a rotated refresh token: %d %+v", status, tr2)
	}
	status, tr3 := refresh(t, p, "p2p", "wrong", tr.RefreshToken, nil)
	if status != 401 || tr3.Error != "invalid_client" {
		t.Errorf("wrong client secret: %d %+v", status, tr3)
	}

	p.RevokeRefreshToken(tr.RefreshToken)
	status, tr4 := refresh(t, p, "p2p", "client-secret", tr.RefreshToken, nil)
	if status != 400 || tr4.Error != "invalid_grant" {
		t.Errorf("revoked refresh token: %d %+v", status, tr4)
	}
	if n := len(p.RefreshRequests()); n != 4 {
		t.Errorf("recorded %d refresh requests, want 4", n)
	}
}

func TestProviderExpiredMintAndSign(t *testing.T) {
	t.Parallel()
	p := New(t)
	p.AddClient("c", "s")
	tok, err := p.Mint(Grant{ClientID: "c", Patient: "x", AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Valid() {
		t.Error("token minted with a negative lifetime is valid")
	}
	ctx := context.Background()
	prov, err := oidc.NewProvider(ctx, p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prov.Verifier(&oidc.Config{ClientID: "c"}).Verify(ctx, tok.AccessToken); err == nil {
		t.Error("expired access token verified")
	}

	raw, err := p.Sign(map[string]any{"iss": p.Issuer(), "aud": "c", "sub": "s", "exp": time.Now().Add(time.Minute).Unix()})
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(p.PublicJWKS()), &set); err != nil || len(set.Keys) != 1 || !set.Keys[0].IsPublic() {
		t.Fatalf("PublicJWKS = %s (%v)", p.PublicJWKS(), err)
	}
	ks := &oidc.StaticKeySet{PublicKeys: []crypto.PublicKey{set.Keys[0].Key}}
	if _, err := oidc.NewVerifier(p.Issuer(), ks, &oidc.Config{ClientID: "c"}).Verify(ctx, raw); err != nil {
		t.Errorf("signed JWT does not verify with the public JWKS: %v", err)
	}
	var one jose.JSONWebKey
	if err := json.Unmarshal([]byte(p.PublicJWK()), &one); err != nil || one.KeyID != set.Keys[0].KeyID {
		t.Errorf("PublicJWK = %s", p.PublicJWK())
	}
	if _, err := p.Mint(Grant{ClientID: "nobody", Patient: "x"}); err == nil {
		t.Error("Mint for an unknown client succeeded")
	}
}
