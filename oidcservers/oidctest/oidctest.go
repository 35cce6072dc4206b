// Package oidctest runs a real OpenID Connect provider in-process on
// 127.0.0.1, for tests of code that talks to a source payer's authorization
// server: discovery, JWKS, the refresh_token grant with client
// authentication, and signed JWT access and ID tokens.
//
// The protocol work is done by github.com/zitadel/oidc's op package (a
// certified OpenID provider library); this package supplies the in-memory
// storage behind it and test controls:
//
//	p := oidctest.New(t)                              // stopped by t.Cleanup
//	p.AddClient("p2p-client", "client-secret")
//	tok, _ := p.Mint(oidctest.Grant{ClientID: "p2p-client", Patient: "123"})
//	// tok.AccessToken is a JWT with a patient claim and SMART scopes,
//	// tok.RefreshToken works at p.TokenEndpoint().
//	p.RevokeRefreshToken(tok.RefreshToken)            // the next refresh gets invalid_grant
//	p.RefreshRequests()                               // every refresh form the provider received
//
// The authorization-code flow is not offered: there is no login page. Tests
// obtain a member's first tokens with Mint, as if the member had just logged in.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
)

// DefaultScopes are the scopes Mint grants when Grant.Scopes is empty: what a
// member's P2P authorization typically carries.
var DefaultScopes = []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"}

// Provider is a running OpenID provider. Its methods are safe for concurrent use.
type Provider struct {
	issuer   string
	server   *http.Server
	listener net.Listener
	op       *op.Provider
	store    *storage
	done     chan struct{}

	mu       sync.Mutex
	refreshs []url.Values
}

// Option configures New.
type Option func(*config)

type config struct {
	path      string
	accessTTL time.Duration
	logger    *slog.Logger
}

// WithIssuerPath serves the provider under a path, so its issuer is
// http://127.0.0.1:port/path rather than the bare origin.
func WithIssuerPath(path string) Option {
	return func(c *config) { c.path = "/" + strings.Trim(path, "/") }
}

// WithAccessTokenLifetime sets how long access tokens issued on refresh are
// valid (default 1 hour). It must be positive.
func WithAccessTokenLifetime(d time.Duration) Option {
	return func(c *config) { c.accessTTL = d }
}

// WithLogger sends the provider library's logs to l (default: discarded).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// New starts a provider on 127.0.0.1 with a fresh RSA signing key and stops it
// when the test ends.
func New(t testing.TB, opts ...Option) *Provider {
	t.Helper()
	p, err := start(opts...)
	if err != nil {
		t.Fatalf("oidctest: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

func start(opts ...Option) (*Provider, error) {
	cfg := config{accessTTL: time.Hour, logger: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.accessTTL <= 0 {
		return nil, errors.New("access token lifetime must be positive")
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	issuer := "http://" + ln.Addr().String() + cfg.path

	store := newStorage(key, cfg.accessTTL)
	var cryptoKey [32]byte
	if _, err := rand.Read(cryptoKey[:]); err != nil {
		ln.Close()
		return nil, err
	}
	provider, err := op.NewProvider(&op.Config{
		CryptoKey:             cryptoKey,
		CodeMethodS256:        true,
		AuthMethodPost:        true,
		GrantTypeRefreshToken: true,
		SupportedScopes:       append([]string{"openid", "profile", "offline_access"}, DefaultScopes...),
	}, store, op.StaticIssuer(issuer), op.WithAllowInsecure(), op.WithLogger(cfg.logger))
	if err != nil {
		ln.Close()
		return nil, err
	}

	p := &Provider{issuer: issuer, listener: ln, op: provider, store: store, done: make(chan struct{})}
	var handler http.Handler = provider
	if cfg.path != "" {
		handler = http.StripPrefix(cfg.path, provider)
	}
	p.server = &http.Server{Handler: p.record(handler), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.done)
		_ = p.server.Serve(ln)
	}()
	return p, nil
}

// record keeps a copy of every refresh_token grant request's form before the
// provider handles it.
func (p *Provider) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/oauth/token") {
			// ParseForm caches the form, so the provider reads the same values.
			if err := r.ParseForm(); err == nil && r.PostForm.Get("grant_type") == "refresh_token" {
				form := url.Values{}
				for k, v := range r.PostForm {
					form[k] = append([]string(nil), v...)
				}
				p.mu.Lock()
				p.refreshs = append(p.refreshs, form)
				p.mu.Unlock()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Close stops the provider and waits for its server goroutine.
func (p *Provider) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.server.Shutdown(ctx)
	<-p.done
}

// Issuer is the provider's issuer URL, without a trailing slash.
func (p *Provider) Issuer() string { return p.issuer }

// WellKnownURL is the discovery document's URL.
func (p *Provider) WellKnownURL() string { return p.issuer + "/.well-known/openid-configuration" }

// TokenEndpoint is the token endpoint's URL.
func (p *Provider) TokenEndpoint() string { return p.issuer + "/oauth/token" }

// AddClient registers a confidential client that may use the refresh_token
// grant, authenticating with client_secret_basic or client_secret_post.
// Registering an existing id replaces its secret.
func (p *Provider) AddClient(id, secret string) {
	p.store.addClient(id, secret)
}

// Grant describes the member authorization Mint issues tokens for.
type Grant struct {
	ClientID string   // a client registered with AddClient
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
		return nil, errors.New("oidctest: Grant.Patient is required")
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

// RefreshRequests returns the forms of all refresh_token grant requests
// received so far, in order, including ones the provider rejected. Custom
// token parameters appear as extra keys.
func (p *Provider) RefreshRequests() []url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]url.Values(nil), p.refreshs...)
}

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
		panic(fmt.Sprintf("oidctest: marshal JWKS: %v", err))
	}
	return string(b)
}

// PublicJWK returns the provider's current public key as a single JWK in JSON.
func (p *Provider) PublicJWK() string {
	b, err := json.Marshal(p.store.publicJWK())
	if err != nil {
		panic(fmt.Sprintf("oidctest: marshal JWK: %v", err))
	}
	return string(b)
}
