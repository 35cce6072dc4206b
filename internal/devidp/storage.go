package devidp

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
	"net/url"
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

// authRequestTTL is how long a member has to log in, and a client to
// redeem the code, after the authorization request.
const authRequestTTL = 10 * time.Minute

// storage is the in-memory op.Storage behind a Provider.
type storage struct {
	key       *rsa.PrivateKey
	keyID     string
	accessTTL time.Duration
	issuer    string // set once the provider listens; LoginURL needs it

	mu       sync.Mutex
	clients  map[string]*client
	members  map[string]*Member      // by username
	refresh  map[string]*grant       // by refresh token
	requests map[string]*authRequest // by id
	codes    map[string]string       // code -> auth request id
	// used are the codes already redeemed, kept for authRequestTTL so
	// that a second use revokes what the first obtained.
	used map[string]usedCode
}

// usedCode is a redeemed authorization code: the request it answered, and
// when.
type usedCode struct {
	request string
	at      time.Time
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
	// request is the authorization request whose code started this
	// grant; its refresh tokens are revoked if that code is used again.
	request string
}

func newStorage(key *rsa.PrivateKey, accessTTL time.Duration) *storage {
	pub := key.Public().(*rsa.PublicKey)
	sum := sha256.Sum256(pub.N.Bytes())
	return &storage{
		key:       key,
		keyID:     hex.EncodeToString(sum[:8]),
		accessTTL: accessTTL,
		clients:   map[string]*client{},
		members:   map[string]*Member{},
		refresh:   map[string]*grant{},
		requests:  map[string]*authRequest{},
		codes:     map[string]string{},
		used:      map[string]usedCode{},
	}
}

func (s *storage) addClient(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c.loginURL = s.issuer + loginPath
	s.clients[c.id] = c
}

func (s *storage) addMember(m Member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members[m.Username] = &m
}

func (s *storage) client(id string) (*client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, fmt.Errorf("devidp: unknown client %q", id)
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

func (g *grant) audienceOrClient() []string {
	if len(g.audience) > 0 {
		return g.audience
	}
	return []string{g.clientID}
}

// grantOf is the member authorization a token request stands for: a
// minted or refreshed grant, or an authorization request the member
// completed by logging in.
func grantOf(req op.TokenRequest) (*grant, bool) {
	switch r := req.(type) {
	case *tokenRequest:
		return &r.grant, true
	case *authRequest:
		return &r.grant, true
	}
	return nil, false
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// --- op.AuthStorage ---

// audienceKey carries the SMART aud parameter of an authorization request
// from the HTTP layer to CreateAuthRequest.
type audienceKey struct{}

// CreateAuthRequest keeps an authorization request until the member logs
// in. SMART App Launch 2.0 (Authorization code flow, "Request
// authorization code") makes PKCE with S256 required, so a request without
// code_challenge or with the plain method is refused; the aud parameter
// becomes the access token's audience.
func (s *storage) CreateAuthRequest(ctx context.Context, req *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	if slices.Contains(req.Prompt, oidc.PromptNone) {
		return nil, oidc.ErrLoginRequired().WithDescription("prompt=none: the member has no session here and must log in")
	}
	if req.CodeChallenge == "" || req.CodeChallengeMethod != oidc.CodeChallengeMethodS256 {
		return nil, oidc.ErrInvalidRequest().WithDescription("PKCE is required: send code_challenge with code_challenge_method=S256")
	}
	id, err := randomToken()
	if err != nil {
		return nil, err
	}
	aud, _ := ctx.Value(audienceKey{}).([]string)
	ar := &authRequest{
		id:        id,
		created:   time.Now(),
		redirect:  req.RedirectURI,
		state:     req.State,
		nonce:     req.Nonce,
		response:  req.ResponseType,
		mode:      req.ResponseMode,
		loginHint: req.LoginHint,
		challenge: &oidc.CodeChallenge{Challenge: req.CodeChallenge, Method: req.CodeChallengeMethod},
		grant: grant{
			clientID: req.ClientID,
			scopes:   slices.Clone(req.Scopes),
			audience: aud,
		},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	s.requests[id] = ar
	return ar, nil
}

// expireLocked forgets authorization requests older than authRequestTTL.
func (s *storage) expireLocked() {
	for id, ar := range s.requests {
		if time.Since(ar.created) > authRequestTTL {
			delete(s.requests, id)
		}
	}
	for code, id := range s.codes {
		if _, ok := s.requests[id]; !ok {
			delete(s.codes, code)
		}
	}
	for code, u := range s.used {
		if time.Since(u.at) > authRequestTTL {
			delete(s.used, code)
		}
	}
}

func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	ar, ok := s.requests[id]
	if !ok {
		return nil, oidc.ErrInvalidRequest().WithDescription("unknown or expired authorization request")
	}
	return ar, nil
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	id, ok := s.codes[code]
	if u, used := s.used[code]; used && !ok {
		// RFC 6749 section 4.1.2: a code used twice is refused, and
		// the tokens issued for it are revoked; someone else may hold
		// it (RFC 9700 section 4.5).
		for rt, g := range s.refresh {
			if g.request == u.request {
				delete(s.refresh, rt)
			}
		}
		s.mu.Unlock()
		return nil, oidc.ErrInvalidGrant().WithDescription("the authorization code was already used; the refresh tokens issued for it are revoked")
	}
	s.mu.Unlock()
	if !ok {
		return nil, oidc.ErrInvalidGrant().WithDescription("unknown, used or expired authorization code")
	}
	return s.AuthRequestByID(ctx, id)
}

func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.requests[id]; !ok {
		return errors.New("devidp: authorization request expired")
	}
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest is called once the code is redeemed: the code stops
// working.
func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.requests, id)
	for code, rid := range s.codes {
		if rid == id {
			delete(s.codes, code)
			s.used[code] = usedCode{request: id, at: time.Now()}
		}
	}
	return nil
}

// login checks a member's credentials for authorization request id and,
// when they are right, binds the request to the member: its subject and
// patient become the tokens'.
func (s *storage) login(id, username, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ar, ok := s.requests[id]
	if !ok || time.Since(ar.created) > authRequestTTL {
		return errLoginExpired
	}
	m, ok := s.members[username]
	if !ok || subtle.ConstantTimeCompare([]byte(m.Password), []byte(password)) != 1 {
		return errWrongPassword
	}
	ar.done = true
	ar.subject = m.Username
	ar.patient = m.Patient
	ar.authTime = time.Now().UTC()
	return nil
}

var (
	errLoginExpired  = errors.New("this login is unknown or has expired: start again from the application")
	errWrongPassword = errors.New("wrong username or password")
)

// request returns a copy of authorization request id, for the login page.
func (s *storage) request(id string) (authRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ar, ok := s.requests[id]
	if !ok || time.Since(ar.created) > authRequestTTL {
		return authRequest{}, false
	}
	return *ar, true
}

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
	from, ok := grantOf(req)
	if !ok {
		return "", "", time.Time{}, fmt.Errorf("devidp: unsupported token request %T", req)
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
	g := *from
	if ar, ok := req.(*authRequest); ok {
		g.request = ar.id
	}
	g.scopes = slices.Clone(req.GetScopes())
	g.audience = slices.Clone(from.audience)
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
		return nil, errors.New("devidp: unknown or revoked refresh token")
	}
	if time.Now().After(g.expires) {
		delete(s.refresh, rt)
		return nil, errors.New("devidp: refresh token expired")
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
	if c.secret == "" || subtle.ConstantTimeCompare([]byte(c.secret), []byte(secret)) != 1 {
		return errors.New("devidp: wrong client secret")
	}
	return nil
}

// SetUserinfoFromScopes sets the subject (op copies the userinfo over the
// ID token's claims, sub included) and, with the profile scope, the
// member's username and name.
func (s *storage) SetUserinfoFromScopes(_ context.Context, ui *oidc.UserInfo, userID, _ string, scopes []string) error {
	ui.Subject = userID
	if slices.Contains(scopes, oidc.ScopeProfile) {
		s.mu.Lock()
		m, ok := s.members[userID]
		s.mu.Unlock()
		if ok {
			ui.PreferredUsername = m.Username
			ui.Name = m.Name
		}
	}
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

// GetPrivateClaimsFromRequest puts the SMART launch context (patient) and
// the scopes into JWT access tokens.
func (s *storage) GetPrivateClaimsFromRequest(_ context.Context, req op.TokenRequest, _ []string) (map[string]any, error) {
	g, ok := grantOf(req)
	if !ok {
		return nil, nil
	}
	claims := map[string]any{"scope": strings.Join(req.GetScopes(), " ")}
	if g.patient != "" { // system (client credentials) tokens have no patient
		claims["patient"] = g.patient
	}
	return claims, nil
}

func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("devidp: JWT client authentication is not supported")
}

func (s *storage) ValidateJWTProfileScopes(_ context.Context, _ string, scopes []string) ([]string, error) {
	return scopes, nil
}

func (s *storage) Health(context.Context) error { return nil }

// ClientCredentials authenticates a confidential client for the
// client_credentials grant (RFC 6749 section 4.4): a system acting for
// itself, as another payer's back office does.
func (s *storage) ClientCredentials(ctx context.Context, id, secret string) (op.Client, error) {
	if err := s.AuthorizeClientIDSecret(ctx, id, secret); err != nil {
		return nil, err
	}
	return s.client(id)
}

// ClientCredentialsTokenRequest is the grant of a client_credentials
// request: the client as subject, the scopes asked for (SystemScopes when
// none), no patient.
func (s *storage) ClientCredentialsTokenRequest(_ context.Context, id string, scopes []string) (op.TokenRequest, error) {
	if len(scopes) == 0 {
		scopes = SystemScopes
	}
	return &tokenRequest{grant: grant{clientID: id, subject: id, scopes: append([]string(nil), scopes...), authTime: time.Now().UTC()}}, nil
}

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

// --- op.AuthRequest ---

// authRequest is an authorization request waiting for the member's login,
// then for the client to redeem its code. Once the member has logged in it
// is also the op.TokenRequest of the code exchange.
type authRequest struct {
	grant
	id        string
	created   time.Time
	redirect  string
	state     string
	nonce     string
	loginHint string
	response  oidc.ResponseType
	mode      oidc.ResponseMode
	challenge *oidc.CodeChallenge
	done      bool
}

func (a *authRequest) GetID() string  { return a.id }
func (a *authRequest) GetACR() string { return "" }
func (a *authRequest) GetAMR() []string {
	if a.done {
		return []string{"pwd"}
	}
	return nil
}
func (a *authRequest) GetAudience() []string                 { return a.audienceOrClient() }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.clientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.challenge }
func (a *authRequest) GetNonce() string                      { return a.nonce }
func (a *authRequest) GetRedirectURI() string                { return a.redirect }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return a.response }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return a.mode }
func (a *authRequest) GetScopes() []string                   { return a.scopes }
func (a *authRequest) GetState() string                      { return a.state }
func (a *authRequest) GetSubject() string                    { return a.subject }
func (a *authRequest) Done() bool                            { return a.done }
func (a *authRequest) SetCurrentScopes(sc []string)          { a.scopes = sc }

// --- op.Client ---

// client is a web client allowed the authorization-code and refresh_token
// grants: confidential (client_secret_basic or client_secret_post) when it
// has a secret, and then also the client_credentials grant; public (PKCE
// only) when not.
type client struct {
	id           string
	secret       string
	redirectURIs []string
	loginURL     string
}

func (c *client) GetID() string                    { return c.id }
func (c *client) RedirectURIs() []string           { return c.redirectURIs }
func (c *client) PostLogoutRedirectURIs() []string { return nil }
func (c *client) ApplicationType() op.ApplicationType {
	return op.ApplicationTypeWeb
}
func (c *client) AuthMethod() oidc.AuthMethod {
	if c.secret == "" {
		return oidc.AuthMethodNone
	}
	return oidc.AuthMethodBasic
}
func (c *client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c *client) GrantTypes() []oidc.GrantType {
	if c.secret == "" {
		return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken}
	}
	return []oidc.GrantType{oidc.GrantTypeCode, oidc.GrantTypeRefreshToken, oidc.GrantTypeClientCredentials}
}

// LoginURL is where op sends the member's browser after an authorization
// request: the login page, with the request's id.
func (c *client) LoginURL(id string) string {
	return c.loginURL + "?" + url.Values{"authRequestID": {id}}.Encode()
}
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
