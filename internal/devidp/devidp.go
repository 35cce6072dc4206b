// Package devidp is a development OpenID provider: a real OpenID Connect
// and OAuth 2.0 authorization server for trying and testing p2pserver on
// one machine, where a source payer's member logs in and authorizes
// another payer to read their record.
//
// The protocol work is done by github.com/zitadel/oidc's op package (a
// certified OpenID provider library); this package supplies the in-memory
// storage behind it, member accounts, a login page and the SMART App
// Launch touches a FHIR server's guard relies on:
//
//   - discovery (/.well-known/openid-configuration), JWKS (/keys), the
//     authorization-code flow with PKCE S256 (/authorize, the login page
//     at /login), the token endpoint (/oauth/token) with the
//     authorization_code and refresh_token grants (refresh tokens rotate),
//     revocation and introspection;
//   - access tokens are RS256 JWTs carrying the member's patient id in the
//     SMART patient claim, the granted scopes in scope, and as aud the aud
//     parameter of the authorization request (SMART App Launch: the FHIR
//     base URL the token is for), or the client id without one;
//   - the token response carries patient beside the tokens (SMART App
//     Launch, "Response to access token request").
//
// Members and clients live in memory and the signing key is generated at
// start: tokens do not survive a restart. It listens on loopback only.
// Tests reach it through oidcservers/oidctest, which adds test controls;
// cmd/p2p-devidp runs it on its own.
package devidp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"
)

// DefaultScopes are the scopes Mint grants when Grant.Scopes is empty: what a
// member's P2P authorization typically carries.
var DefaultScopes = []string{"openid", "fhirUser", "launch/patient", "offline_access", "patient/*.read"}

// Paths below the issuer.
const (
	loginPath = "/login"
	codePath  = "/code"
)

// Options configure Start.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0 (a free port). It
	// must be a loopback address.
	Addr string
	// Path serves the provider under a path, so its issuer is
	// http://host:port/path rather than the bare origin.
	Path string
	// AccessTokenLifetime is how long access tokens are valid; default 1
	// hour.
	AccessTokenLifetime time.Duration
	// Logger receives the provider library's logs; default discarded.
	Logger *slog.Logger
}

// Client is an application registered with the provider: a payer's
// member portal or back office.
type Client struct {
	// ID is the client_id.
	ID string
	// Secret, when set, makes a confidential client authenticating with
	// client_secret_basic or client_secret_post; empty makes a public
	// client (PKCE only, no secret).
	Secret string
	// RedirectURIs are the exact redirect_uri values the client may use
	// in the authorization-code flow; none means the client can only
	// refresh tokens it was given (Provider.Mint).
	RedirectURIs []string
}

// Member is an account a member logs in with at the login page.
type Member struct {
	Username, Password string
	// Patient is the member's Patient id at the payer whose FHIR server
	// trusts this provider: the access token's patient claim.
	Patient string
	// Name is shown as the ID token's name with the profile scope.
	Name string
}

// Provider is a running OpenID provider. Its methods are safe for
// concurrent use.
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

// Start listens on opts.Addr with a fresh 2048-bit RSA signing key and
// serves until Close.
func Start(opts Options) (*Provider, error) {
	if opts.AccessTokenLifetime == 0 {
		opts.AccessTokenLifetime = time.Hour
	}
	if opts.AccessTokenLifetime < 0 {
		return nil, errors.New("devidp: access token lifetime must be positive")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if err := checkLoopback(opts.Addr); err != nil {
		return nil, err
	}
	path := ""
	if p := strings.Trim(opts.Path, "/"); p != "" {
		path = "/" + p
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	var cryptoKey [32]byte
	if _, err := rand.Read(cryptoKey[:]); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("devidp: %w", err)
	}
	issuer := "http://" + ln.Addr().String() + path

	store := newStorage(key, opts.AccessTokenLifetime)
	store.issuer = issuer
	provider, err := op.NewProvider(&op.Config{
		CryptoKey:             cryptoKey,
		CodeMethodS256:        true,
		AuthMethodPost:        true,
		GrantTypeRefreshToken: true,
		SupportedScopes:       append([]string{"openid", "profile", "offline_access"}, DefaultScopes...),
	}, store, op.StaticIssuer(issuer), op.WithAllowInsecure(), op.WithLogger(opts.Logger))
	if err != nil {
		ln.Close()
		return nil, err
	}

	p := &Provider{issuer: issuer, listener: ln, op: provider, store: store, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle(loginPath, http.HandlerFunc(p.serveLogin))
	mux.Handle(codePath, http.HandlerFunc(serveCode))
	mux.Handle("/", p.withAudience(p.withPatient(p.record(provider))))
	var handler http.Handler = mux
	if path != "" {
		handler = http.StripPrefix(path, mux)
	}
	p.server = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.done)
		_ = p.server.Serve(ln)
	}()
	return p, nil
}

// checkLoopback refuses listen addresses other than loopback: member
// passwords are plain and the provider speaks plain HTTP.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("devidp: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("devidp: listen address %q is not a loopback address (127.0.0.1, ::1 or localhost): a development provider must not be reachable from other machines", addr)
	}
	return nil
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

// AuthorizationEndpoint is the authorization endpoint's URL.
func (p *Provider) AuthorizationEndpoint() string { return p.issuer + "/authorize" }

// CodePageURL is a page that shows the authorization code it is
// redirected to with, for trying the flow by hand without a member
// portal: register it as a client's redirect URI.
func (p *Provider) CodePageURL() string { return p.issuer + codePath }

// AddClient registers c, replacing a client with the same id. Redirect URIs
// must be absolute http(s) URLs without a fragment.
func (p *Provider) AddClient(c Client) error {
	if err := c.check(); err != nil {
		return err
	}
	p.store.addClient(&client{id: c.ID, secret: c.Secret, redirectURIs: append([]string(nil), c.RedirectURIs...)})
	return nil
}

func (c Client) check() error {
	if c.ID == "" {
		return errors.New("devidp: a client needs an id")
	}
	for _, r := range c.RedirectURIs {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" {
			return fmt.Errorf("devidp: client %s: redirect URI %q is not an absolute http(s) URL without a fragment", c.ID, r)
		}
	}
	return nil
}

// AddMember registers a member account, replacing one with the same
// username. Username, Password and Patient are required.
func (p *Provider) AddMember(m Member) error {
	if m.Username == "" || m.Password == "" || m.Patient == "" {
		return fmt.Errorf("devidp: member %q needs a username, a password and a patient id", m.Username)
	}
	p.store.addMember(m)
	return nil
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

// RefreshRequests returns the forms of all refresh_token grant requests
// received so far, in order, including ones the provider rejected. Custom
// token parameters appear as extra keys.
func (p *Provider) RefreshRequests() []url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]url.Values(nil), p.refreshs...)
}

// withAudience hands the SMART aud parameter of an authorization request
// to the storage, which the op library does not pass on.
func (p *Provider) withAudience(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/authorize" {
			if err := r.ParseForm(); err == nil {
				var aud []string
				for _, a := range r.Form["aud"] {
					aud = append(aud, strings.Fields(a)...)
				}
				if len(aud) > 0 {
					r = r.WithContext(context.WithValue(r.Context(), audienceKey{}, aud))
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// withPatient adds the SMART launch context to successful token
// responses: "patient", the patient claim of the access token just issued
// (SMART App Launch 2.0, "Response to access token request").
func (p *Provider) withPatient(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/oauth/token" {
			next.ServeHTTP(w, r)
			return
		}
		rec := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		body := rec.body.Bytes()
		if rec.status == http.StatusOK {
			if b, ok := withPatientContext(body); ok {
				body = b
			}
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.status)
		_, _ = w.Write(body)
	})
}

// withPatientContext copies the access token's patient claim into the
// token response; ok is false when there is none.
func withPatientContext(body []byte) ([]byte, bool) {
	var resp map[string]json.RawMessage
	if json.Unmarshal(body, &resp) != nil {
		return nil, false
	}
	var at string
	if json.Unmarshal(resp["access_token"], &at) != nil {
		return nil, false
	}
	parts := strings.Split(at, ".")
	if len(parts) != 3 {
		return nil, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, false
	}
	var claims struct {
		Patient string `json:"patient"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Patient == "" {
		return nil, false
	}
	resp["patient"], _ = json.Marshal(claims.Patient)
	b, err := json.Marshal(resp)
	return b, err == nil
}

// bufferedResponse holds a handler's answer so it can be amended.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedResponse) WriteHeader(status int)      { b.status = status }
