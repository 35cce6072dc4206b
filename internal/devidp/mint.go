package devidp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
)

// Grant describes the member authorization Mint issues tokens for.
type Grant struct {
	ClientID string   // a registered client
	Patient  string   // the patient claim: the member's Patient id at this payer
	Subject  string   // sub; default "member-" + Patient
	Scopes   []string // default DefaultScopes
	// AccessTokenLifetime overrides the provider's lifetime for the minted
	// access token only. Negative mints an access token that has already
	// expired, to make the caller refresh.
	AccessTokenLifetime time.Duration
}

// Mint issues an access token (a signed JWT carrying the patient claim and
// the scopes), a refresh token and an ID token for g, as if the member had
// just completed the authorization-code flow. The ID token is in
// tok.Extra("id_token").
func (p *Provider) Mint(g Grant) (*oauth2.Token, error) { return p.mint(nil, g) }

// mint issues g's tokens; the access token's aud is audience, or the
// client id when audience is empty.
func (p *Provider) mint(audience []string, g Grant) (*oauth2.Token, error) {
	client, err := p.store.client(g.ClientID)
	if err != nil {
		return nil, err
	}
	if g.Patient == "" {
		return nil, errors.New("devidp: Grant.Patient is required")
	}
	if g.Subject == "" {
		g.Subject = "member-" + g.Patient
	}
	if len(g.Scopes) == 0 {
		g.Scopes = DefaultScopes
	}
	req := &tokenRequest{grant: grant{
		clientID:  g.ClientID,
		subject:   g.Subject,
		patient:   g.Patient,
		scopes:    append([]string(nil), g.Scopes...),
		audience:  append([]string(nil), audience...),
		authTime:  time.Now().UTC(),
		accessTTL: g.AccessTokenLifetime,
	}}
	ctx := op.ContextWithIssuer(context.Background(), p.issuer)
	resp, err := op.CreateTokenResponse(ctx, req, client, p.op, true, "", "")
	if err != nil {
		return nil, err
	}
	tok := &oauth2.Token{
		AccessToken:  resp.AccessToken,
		TokenType:    resp.TokenType,
		RefreshToken: resp.RefreshToken,
		Expiry:       req.accessExpiry,
	}
	return tok.WithExtra(map[string]any{"id_token": resp.IDToken, "patient": g.Patient, "scope": strings.Join(g.Scopes, " ")}), nil
}

// RevokeRefreshToken makes rt unusable: the next refresh with it is answered
// with invalid_grant.
func (p *Provider) RevokeRefreshToken(rt string) { p.store.revokeRefresh(rt) }

// Sign signs claims with the provider's current key (RS256, with its kid), as
// any token from this issuer would be. The claims are sent as given: set iss,
// exp and aud yourself.
func (p *Provider) Sign(claims map[string]any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signer, err := op.SignerFromKey(p.store.signingKey())
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// PublicJWKS returns the provider's public keys as a JWK set in JSON, the same
// content its jwks_uri serves.
func (p *Provider) PublicJWKS() string {
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{p.store.publicJWK()}})
	if err != nil {
		panic(fmt.Sprintf("devidp: marshal JWKS: %v", err))
	}
	return string(b)
}

// PublicJWK returns the provider's current public key as a single JWK in JSON.
func (p *Provider) PublicJWK() string {
	b, err := json.Marshal(p.store.publicJWK())
	if err != nil {
		panic(fmt.Sprintf("devidp: marshal JWK: %v", err))
	}
	return string(b)
}

// SystemScopes are the scopes MintSystem grants when SystemGrant.Scopes is
// empty: read access to everything, as a payer's backend service asks for.
var SystemScopes = []string{"system/*.read"}

// SystemGrant describes a SMART Backend Services (client credentials)
// authorization: a client acting for itself, with no member and no patient
// claim, as another payer's back office calls $member-match or a type-level
// $everything.
type SystemGrant struct {
	ClientID string   // a registered client
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
		return nil, errors.New("devidp: MintFor needs an audience")
	}
	return p.mint(audience, g)
}
