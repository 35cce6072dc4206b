package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// refreshTTL is how long a refresh token stays valid.
const refreshTTL = 30 * 24 * time.Hour

var errNoLogin = errors.New("oidctest: the authorization-code flow is not supported; use Provider.Mint")

// storage is the in-memory op.Storage behind a Provider.
type storage struct {
	key       *rsa.PrivateKey
	keyID     string
	accessTTL time.Duration

	mu      sync.Mutex
	clients map[string]*client
	refresh map[string]*grant // by refresh token
}

// grant is one member authorization: what a refresh token stands for.
type grant struct {
	clientID  string
	subject   string
	patient   string
	scopes    []string
	audience  []string
	authTime  time.Time
	expires   time.Time     // of the refresh token
	accessTTL time.Duration // for the next access token only; 0 means the provider's
}

func newStorage(key *rsa.PrivateKey, accessTTL time.Duration) *storage {
	pub := key.Public().(*rsa.PublicKey)
	sum := sha256.Sum256(pub.N.Bytes())
	return &storage{
		key:       key,
		keyID:     hex.EncodeToString(sum[:8]),
		accessTTL: accessTTL,
		clients:   map[string]*client{},
		refresh:   map[string]*grant{},
	}
}

func (s *storage) addClient(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = &client{id: id, secret: secret}
}

func (s *storage) client(id string) (*client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, fmt.Errorf("oidctest: unknown client %q", id)
	}
	return c, nil
}

func (s *storage) revokeRefresh(rt string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.refresh, rt)
}

func (s *storage) signingKey() op.SigningKey {
	return signingKey{id: s.keyID, key: s.key}
}

func (s *storage) publicJWK() jose.JSONWebKey {
	return jose.JSONWebKey{Key: s.key.Public(), KeyID: s.keyID, Algorithm: string(jose.RS256), Use: "sig"}
}

// tokenRequest is the op.TokenRequest, op.RefreshTokenRequest and
// op.IDTokenRequest for a grant, minted or looked up by refresh token.
type tokenRequest struct {
	grant
	refreshToken string    // the token it was looked up by; "" when minted
	accessExpiry time.Time // set when the access token is created
}

func (r *tokenRequest) GetAMR() []string             { return []string{"pwd"} }
func (r *tokenRequest) GetAudience() []string        { return r.audienceOrClient() }
func (r *tokenRequest) GetAuthTime() time.Time       { return r.authTime }
func (r *tokenRequest) GetClientID() string          { return r.clientID }
func (r *tokenRequest) GetScopes() []string          { return r.scopes }
func (r *tokenRequest) GetSubject() string           { return r.subject }
func (r *tokenRequest) SetCurrentScopes(sc []string) { r.scopes = sc }

func (r *tokenRequest) audienceOrClient() []string {
	if len(r.audience) > 0 {
		return r.audience
	}
	return []string{r.clientID}
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// --- op.AuthStorage ---

func (s *storage) CreateAuthRequest(context.Context, *oidc.AuthRequest, string) (op.AuthRequest, error) {
	return nil, errNoLogin
}
func (s *storage) AuthRequestByID(context.Context, string) (op.AuthRequest, error) {
	return nil, errNoLogin
}
func (s *storage) AuthRequestByCode(context.Context, string) (op.AuthRequest, error) {
	return nil, errNoLogin
}
func (s *storage) SaveAuthCode(context.Context, string, string) error { return errNoLogin }
func (s *storage) DeleteAuthRequest(context.Context, string) error    { return nil }

func (s *storage) accessExpiry(req op.TokenRequest) time.Time {
	ttl := s.accessTTL
	if r, ok := req.(*tokenRequest); ok && r.accessTTL != 0 {
		ttl = r.accessTTL
	}
	exp := time.Now().UTC().Add(ttl)
	if r, ok := req.(*tokenRequest); ok {
		r.accessExpiry = exp
	}
	return exp
}

func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	id, err := randomToken()
	if err != nil {
		return "", time.Time{}, err
	}
	return id, s.accessExpiry(req), nil
}

// CreateAccessAndRefreshTokens issues a new refresh token for req. When
// currentRefreshToken is set (a refresh grant) that token is rotated out: it
// stops working, as with most production providers.
func (s *storage) CreateAccessAndRefreshTokens(_ context.Context, req op.TokenRequest, currentRefreshToken string) (string, string, time.Time, error) {
	tr, ok := req.(*tokenRequest)
	if !ok {
		return "", "", time.Time{}, fmt.Errorf("oidctest: unsupported token request %T", req)
	}
	id, err := randomToken()
	if err != nil {
		return "", "", time.Time{}, err
	}
	rt, err := randomToken()
	if err != nil {
		return "", "", time.Time{}, err
	}
	exp := s.accessExpiry(req)
	g := tr.grant
	g.scopes = slices.Clone(tr.scopes)
	g.expires = time.Now().Add(refreshTTL)
	g.accessTTL = 0

	s.mu.Lock()
	defer s.mu.Unlock()
	if currentRefreshToken != "" {
		if _, ok := s.refresh[currentRefreshToken]; !ok {
			return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("refresh token revoked")
		}
		delete(s.refresh, currentRefreshToken)
	}
	s.refresh[rt] = &g
	return id, rt, exp, nil
}

func (s *storage) TokenRequestByRefreshToken(_ context.Context, rt string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.refresh[rt]
	if !ok {
		return nil, errors.New("oidctest: unknown or revoked refresh token")
	}
	if time.Now().After(g.expires) {
		delete(s.refresh, rt)
		return nil, errors.New("oidctest: refresh token expired")
	}
	cp := *g
	cp.scopes = slices.Clone(g.scopes)
	return &tokenRequest{grant: cp, refreshToken: rt}, nil
}

func (s *storage) TerminateSession(context.Context, string, string) error { return nil }

func (s *storage) RevokeToken(_ context.Context, tokenOrID, _ string, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, ok := s.refresh[tokenOrID]; ok {
		if g.clientID != clientID {
			return oidc.ErrInvalidClient().WithDescription("token was issued to another client")
		}
		delete(s.refresh, tokenOrID)
	}
	// Access tokens are self-contained JWTs; they stay valid until they expire.
	return nil
}

func (s *storage) GetRefreshTokenInfo(_ context.Context, clientID, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.refresh[token]
	if !ok || g.clientID != clientID {
		return "", "", op.ErrInvalidRefreshToken
	}
	return g.subject, token, nil
}

func (s *storage) SigningKey(context.Context) (op.SigningKey, error) { return s.signingKey(), nil }

func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{id: s.keyID, key: s.key.Public()}}, nil
}

// --- op.OPStorage ---

func (s *storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	return s.client(id)
}

func (s *storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	c, err := s.client(id)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(c.secret), []byte(secret)) != 1 {
		return errors.New("oidctest: wrong client secret")
	}
	return nil
}

// SetUserinfoFromScopes sets the subject: op copies the userinfo over the ID
// token's claims, sub included.
func (s *storage) SetUserinfoFromScopes(_ context.Context, ui *oidc.UserInfo, userID, _ string, _ []string) error {
	ui.Subject = userID
	return nil
}

func (s *storage) SetUserinfoFromToken(_ context.Context, ui *oidc.UserInfo, _, subject, _ string) error {
	ui.Subject = subject
	return nil
}

func (s *storage) SetIntrospectionFromToken(_ context.Context, in *oidc.IntrospectionResponse, _, subject, clientID string) error {
	in.Active = true
	in.Subject = subject
	in.ClientID = clientID
	return nil
}

func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

// GetPrivateClaimsFromRequest puts the SMART launch context and scopes into
// JWT access tokens.
func (s *storage) GetPrivateClaimsFromRequest(_ context.Context, req op.TokenRequest, _ []string) (map[string]any, error) {
	tr, ok := req.(*tokenRequest)
	if !ok {
		return nil, nil
	}
	claims := map[string]any{"scope": strings.Join(tr.scopes, " ")}
	if tr.patient != "" { // system (client credentials) tokens have no patient
		claims["patient"] = tr.patient
	}
	return claims, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("oidctest: JWT client authentication is not supported")
}

func (s *storage) ValidateJWTProfileScopes(_ context.Context, _ string, scopes []string) ([]string, error) {
	return scopes, nil
}

func (s *storage) Health(context.Context) error { return nil }

// --- keys ---

type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct {
	id  string
	key any
}

func (k publicKey) ID() string                         { return k.id }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return k.key }

// --- op.Client ---

// client is a confidential web client allowed the refresh_token grant.
type client struct {
	id     string
	secret string
}

func (c *client) GetID() string                       { return c.id }
func (c *client) RedirectURIs() []string              { return nil }
func (c *client) PostLogoutRedirectURIs() []string    { return nil }
func (c *client) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c *client) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodBasic }
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
}
func (c *client) LoginURL(string) string               { return "" }
func (c *client) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeJWT }
func (c *client) IDTokenLifetime() time.Duration       { return time.Hour }
func (c *client) DevMode() bool                        { return true }
func (c *client) IsScopeAllowed(string) bool           { return true }
func (c *client) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c *client) ClockSkew() time.Duration             { return 0 }
func (c *client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c *client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
