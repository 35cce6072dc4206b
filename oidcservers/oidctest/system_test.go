package oidctest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

func TestMintSystemAndAudience(t *testing.T) {
	t.Parallel()
	p := New(t)
	p.AddClient("payer-b", "secret")
	ctx := context.Background()
	prov, err := oidc.NewProvider(ctx, p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	const fhirBase = "http://127.0.0.1:9/fhir"
	verify := func(raw, aud string) map[string]any {
		t.Helper()
		tok, err := prov.Verifier(&oidc.Config{ClientID: aud}).Verify(ctx, raw)
		if err != nil {
			t.Fatalf("token does not verify for audience %s: %v", aud, err)
		}
		var claims map[string]any
		if err := tok.Claims(&claims); err != nil {
			t.Fatal(err)
		}
		return claims
	}

	sys, err := p.MintSystem(SystemGrant{ClientID: "payer-b", Scopes: []string{"system/Patient.rs", "system/Coverage.rs"}, Audience: []string{fhirBase}})
	if err != nil {
		t.Fatal(err)
	}
	if sys.RefreshToken != "" || sys.Extra("id_token") != nil {
		t.Errorf("a client credentials token came with a refresh or ID token: %+v", sys)
	}
	c := verify(sys.AccessToken, fhirBase)
	if c["scope"] != "system/Patient.rs system/Coverage.rs" || c["sub"] != "payer-b" || c["client_id"] != "payer-b" {
		t.Errorf("system token claims %v", c)
	}
	if _, ok := c["patient"]; ok {
		t.Errorf("system token has a patient claim: %v", c)
	}
	if _, err := prov.Verifier(&oidc.Config{ClientID: "payer-b"}).Verify(ctx, sys.AccessToken); err == nil {
		t.Error("audience was not set: the token verifies for the client id")
	}

	def, err := p.MintSystem(SystemGrant{ClientID: "payer-b"})
	if err != nil {
		t.Fatal(err)
	}
	if c := verify(def.AccessToken, "payer-b"); c["scope"] != "system/*.read" {
		t.Errorf("default system scopes %v", c["scope"])
	}

	old, err := p.MintSystem(SystemGrant{ClientID: "payer-b", AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, err = prov.Verifier(&oidc.Config{ClientID: "payer-b"}).Verify(ctx, old.AccessToken)
	var expired *oidc.TokenExpiredError
	if !errors.As(err, &expired) {
		t.Errorf("negative lifetime: %v, want an expired token", err)
	}

	member, err := p.MintFor([]string{fhirBase}, Grant{ClientID: "payer-b", Patient: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if c := verify(member.AccessToken, fhirBase); c["patient"] != "m1" || c["sub"] != "member-m1" {
		t.Errorf("member token claims %v", c)
	}
	if member.RefreshToken == "" {
		t.Error("MintFor gave no refresh token")
	}
	if _, err := p.MintFor(nil, Grant{ClientID: "payer-b", Patient: "m1"}); err == nil {
		t.Error("MintFor without an audience was accepted")
	}
	if _, err := p.MintSystem(SystemGrant{ClientID: "nobody"}); err == nil {
		t.Error("MintSystem for an unknown client was accepted")
	}
}
