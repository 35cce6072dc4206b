package oidctest

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
)

// SystemScopes are the scopes MintSystem grants when SystemGrant.Scopes is
// empty: read access to everything, as a payer's backend service asks for.
var SystemScopes = []string{"system/*.read"}

// SystemGrant describes a SMART Backend Services (client credentials)
// authorization: a client acting for itself, with no member and no patient
// claim, as another payer's back office calls $member-match or a type-level
// $everything.
type SystemGrant struct {
	ClientID string   // a client registered with AddClient
	Subject  string   // sub; default the client id
	Scopes   []string // default SystemScopes
	// Audience is the token's aud, typically the FHIR base URL of the
	// server the token is for; default the client id.
	Audience []string
	// AccessTokenLifetime overrides the provider's lifetime for this token.
	// Negative mints a token that has already expired.
	AccessTokenLifetime time.Duration
}

// MintSystem issues a signed JWT access token for g, as the provider's
// token endpoint would answer a client_credentials grant: no refresh token,
// no ID token, no patient claim. The scopes are in the token's scope claim
// and in tok.Extra("scope").
func (p *Provider) MintSystem(g SystemGrant) (*oauth2.Token, error) {
	client, err := p.store.client(g.ClientID)
	if err != nil {
		return nil, err
	}
	if g.Subject == "" {
		g.Subject = g.ClientID
	}
	if len(g.Scopes) == 0 {
		g.Scopes = SystemScopes
	}
	req := &tokenRequest{grant: grant{
		clientID:  g.ClientID,
		subject:   g.Subject,
		scopes:    append([]string(nil), g.Scopes...),
		audience:  append([]string(nil), g.Audience...),
		authTime:  time.Now().UTC(),
		accessTTL: g.AccessTokenLifetime,
	}}
	ctx := op.ContextWithIssuer(context.Background(), p.issuer)
	at, rt, _, err := op.CreateAccessToken(ctx, req, op.AccessTokenTypeJWT, p.op, client, "")
	if err != nil {
		return nil, err
	}
	// The op library keeps a refresh grant for any request it could
	// refresh; a client credentials grant has none, so drop it.
	if rt != "" {
		p.store.revokeRefresh(rt)
	}
	tok := &oauth2.Token{AccessToken: at, TokenType: "Bearer", Expiry: req.accessExpiry}
	return tok.WithExtra(map[string]any{"scope": strings.Join(g.Scopes, " ")}), nil
}

// MintFor is Mint with the access token's audience (aud) set to audience
// instead of the client id: a member token meant for a resource server that
// checks it is the intended audience, such as a p2pserver's FHIR base.
func (p *Provider) MintFor(audience []string, g Grant) (*oauth2.Token, error) {
	if len(audience) == 0 {
		return nil, errors.New("oidctest: MintFor needs an audience")
	}
	return p.mint(audience, g)
}
