// Package oidctest runs a real OpenID Connect provider in-process on
// 127.0.0.1, for tests of code that talks to a source payer's authorization
// server: discovery, JWKS, the authorization-code flow with a login page,
// the refresh_token grant with client authentication, and signed JWT
// access and ID tokens.
//
// The provider is internal/devidp's (the development OpenID provider that
// cmd/p2p-devidp runs, built on github.com/zitadel/oidc's op package); this
// package starts it for a test and stops it when the test ends:
//
//	p := oidctest.New(t)                              // stopped by t.Cleanup
//	p.AddClient("p2p-client", "client-secret")
//	tok, _ := p.Mint(oidctest.Grant{ClientID: "p2p-client", Patient: "123"})
//	// tok.AccessToken is a JWT with a patient claim and SMART scopes,
//	// tok.RefreshToken works at p.TokenEndpoint().
//	p.RevokeRefreshToken(tok.RefreshToken)            // the next refresh gets invalid_grant
//	p.RefreshRequests()                               // every refresh form the provider received
//
// Mint issues a member's first tokens as if the member had just logged in;
// tests of the login itself register a client with redirect URIs
// (AddWebClient) and a member (AddMember) and drive /authorize and the
// login page over HTTP.
package oidctest

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/devidp"
)

// DefaultScopes are the scopes Mint grants when Grant.Scopes is empty: what a
// member's P2P authorization typically carries.
var DefaultScopes = devidp.DefaultScopes

// SystemScopes are the scopes MintSystem grants when SystemGrant.Scopes is
// empty: read access to everything, as a payer's backend service asks for.
var SystemScopes = devidp.SystemScopes

// Grant describes the member authorization Mint issues tokens for (see
// devidp.Grant).
type Grant = devidp.Grant

// SystemGrant describes a SMART Backend Services (client credentials)
// authorization MintSystem issues a token for (see devidp.SystemGrant).
type SystemGrant = devidp.SystemGrant

// Provider is a running OpenID provider. Its methods are safe for concurrent use.
type Provider struct {
	*devidp.Provider
	t testing.TB
}

// Option configures New.
type Option func(*devidp.Options)

// WithIssuerPath serves the provider under a path, so its issuer is
// http://127.0.0.1:port/path rather than the bare origin.
func WithIssuerPath(path string) Option {
	return func(o *devidp.Options) { o.Path = "/" + strings.Trim(path, "/") }
}

// WithAccessTokenLifetime sets how long access tokens issued on refresh are
// valid (default 1 hour). It must be positive.
func WithAccessTokenLifetime(d time.Duration) Option {
	return func(o *devidp.Options) {
		o.AccessTokenLifetime = d
		if d <= 0 {
			o.AccessTokenLifetime = -1 // refused by devidp.Start
		}
	}
}

// WithLogger sends the provider library's logs to l (default: discarded).
func WithLogger(l *slog.Logger) Option {
	return func(o *devidp.Options) { o.Logger = l }
}

// New starts a provider on 127.0.0.1 with a fresh RSA signing key and stops it
// when the test ends.
func New(t testing.TB, opts ...Option) *Provider {
	t.Helper()
	var o devidp.Options
	for _, opt := range opts {
		opt(&o)
	}
	p, err := devidp.Start(o)
	if err != nil {
		t.Fatalf("oidctest: %v", err)
	}
	t.Cleanup(p.Close)
	return &Provider{Provider: p, t: t}
}

// AddClient registers a confidential client that may use the refresh_token
// grant, authenticating with client_secret_basic or client_secret_post.
// Registering an existing id replaces its secret.
func (p *Provider) AddClient(id, secret string) {
	p.AddWebClient(devidp.Client{ID: id, Secret: secret})
}

// AddWebClient registers a client that may also use the
// authorization-code flow with its redirect URIs; a bad URI fails the test.
func (p *Provider) AddWebClient(c devidp.Client) {
	p.t.Helper()
	if err := p.Provider.AddClient(c); err != nil {
		p.t.Fatalf("oidctest: %v", err)
	}
}

// AddMember registers a member account for the login page; a member
// without username, password or patient fails the test.
func (p *Provider) AddMember(m devidp.Member) {
	p.t.Helper()
	if err := p.Provider.AddMember(m); err != nil {
		p.t.Fatalf("oidctest: %v", err)
	}
}
