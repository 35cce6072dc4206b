// Package auth makes this payer an authorization server for other payers
// acting as systems: SMART App Launch 2 "Backend Services", the
// client_credentials grant with a JWT client assertion (private_key_jwt,
// RFC 7523), as PDex 2.1's bulk payer-to-payer exchange requires.
//
//   - Admins register backend clients with their public keys (a JWK Set,
//     or the URL where the client publishes it) and the system/ scopes
//     they may be granted: /api/backend_clients (see API).
//   - A client asks POST /auth/token for an access token with a one-time
//     assertion signed RS384 or ES384 by one of its keys; the answer is a
//     short-lived JWT (5 minutes by default) whose scope is what it asked
//     for within what it was registered for.
//   - Those tokens are signed with this server's own keys, kept in the
//     database with their private parts sealed by -secret-key, rotated on
//     a schedule and published at GET /auth/jwks (Keys). The FHIR guard
//     (fhir/smart) accepts them beside the trusted issuers' tokens through
//     Server.VerifyBackend, and refuses them as soon as their client is
//     deleted.
//
// The same Keys type serves this payer's own client assertions to other
// payers, under another bucket.
package auth

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/netguard"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// Paths below the server's base URL.
const (
	// TokenPath is the token endpoint.
	TokenPath = "/auth/token"
	// JWKSPath publishes the public keys that sign the access tokens.
	JWKSPath = "/auth/jwks"
	// IssuerPath is the iss of the access tokens, below the base URL.
	IssuerPath = "/auth"
)

// Defaults of Config.
const (
	// DefaultTokenLifetime is the lifetime of an access token: SMART's
	// recommended five minutes (Backend Services, "Issue Access Token":
	// expires_in SHOULD NOT exceed 300).
	DefaultTokenLifetime = 5 * time.Minute
	// DefaultKeyRotation is how long one key signs access tokens.
	DefaultKeyRotation = 24 * time.Hour
	// MaxAssertionLifetime is how far ahead an assertion's exp may be
	// (SMART: "no more than five minutes in the future").
	MaxAssertionLifetime = 5 * time.Minute
	// ClockSkew is tolerated on the times of assertions and tokens.
	ClockSkew = 30 * time.Second
)

// tokenKeysBucket holds the keys that sign access tokens.
const tokenKeysBucket = "auth_token_keys"

// Config sets up a Server.
type Config struct {
	// BaseURL is the server's public base URL (https://payer.example):
	// the token endpoint is BaseURL+TokenPath, and assertions must name
	// exactly that as aud.
	BaseURL string
	// FHIRBase is the FHIR base URL, the aud of the access tokens;
	// default BaseURL+"/fhir".
	FHIRBase string
	// Cipher seals the signing keys (-secret-key); required.
	Cipher *secrets.Cipher
	// TokenLifetime is the lifetime of an access token; default
	// DefaultTokenLifetime.
	TokenLifetime time.Duration
	// KeyRotation is how long one key signs; default DefaultKeyRotation.
	KeyRotation time.Duration
	// SigningAlg is the algorithm of new signing keys: jose.ES384
	// (default) or jose.RS384.
	SigningAlg jose.SignatureAlgorithm
	// HTTPClient fetches clients' JWK Sets from their jwksUrl; default a
	// client checked by netguard.Default. The binary passes one checked by
	// its outbound policy.
	HTTPClient *http.Client
	// Admin guards the /api/backend_clients routes (httpapi.Authorizer).
	Admin func(http.Handler) http.Handler
	// MaxBody caps /api request bodies, in bytes.
	MaxBody int64
	// Limits bound the token requests; zero fields take the defaults.
	Limits Limits
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Leases, when set, makes the pruning of spent assertion ids a
	// periodic task of one process per minute among those sharing the
	// database; nil: this process prunes every minute (harmless when
	// several do: the prune is idempotent).
	Leases *lease.Manager
}

// Limits bound token requests, each with a token bucket: per remote
// address (before anything is checked) and per client (once its assertion
// is verified). Rates are requests per second, bursts how many may come at
// once. A client needs a token every few minutes; these leave room for
// many processes behind one address.
type Limits struct {
	AddressRate  float64 // default 5
	AddressBurst int     // default 60
	ClientRate   float64 // default 0.5
	ClientBurst  int     // default 10
}

// Server is this payer's authorization server for backend clients. It
// implements smart.Backend.
type Server struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Store
	keys    *Keys
	clients *clientRepo
	jwks    *jwksCache
	byAddr  *limiter
	byIss   *limiter
	// verified remembers access tokens whose signature held.
	verified verifiedCache

	housekeeping periodic
	prune        *lease.Periodic // nil without Config.Leases
}

var _ smart.Backend = (*Server)(nil)

// New builds the Server over the store st. It does no network I/O; Start
// makes the first signing key and starts the housekeeping.
func New(st *store.Store, cfg Config) (*Server, error) {
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.BaseURL == "" {
		return nil, errors.New("auth: the base URL is required")
	}
	if cfg.Cipher == nil {
		return nil, errors.New("auth: SMART Backend Services need -secret-key (P2P_SECRET_KEY): it seals the keys that sign access tokens")
	}
	if cfg.FHIRBase == "" {
		cfg.FHIRBase = cfg.BaseURL + "/fhir"
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = DefaultTokenLifetime
	}
	if cfg.KeyRotation <= 0 {
		cfg.KeyRotation = DefaultKeyRotation
	}
	if cfg.SigningAlg == "" {
		cfg.SigningAlg = jose.ES384
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = netguard.Default().Client(jwksTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	keys, err := NewKeys(st, KeysConfig{Bucket: tokenKeysBucket, Alg: cfg.SigningAlg, RotateEvery: cfg.KeyRotation,
		// A key stays published until every token it signed has expired.
		Retain: cfg.TokenLifetime + ClockSkew, Cipher: cfg.Cipher, Logger: cfg.Logger, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: cfg.Logger, st: st, keys: keys,
		clients: &clientRepo{st: st, now: cfg.Now},
		jwks:    newJWKSCache(cfg.HTTPClient, cfg.Now),
		byAddr:  newLimiter(cmp.Or(cfg.Limits.AddressRate, 5), cmp.Or(cfg.Limits.AddressBurst, 60), 10000),
		byIss:   newLimiter(cmp.Or(cfg.Limits.ClientRate, 0.5), cmp.Or(cfg.Limits.ClientBurst, 10), 10000),
	}, nil
}

// Keys returns the keys that sign the access tokens.
func (s *Server) Keys() *Keys { return s.keys }

// TokenURL is the token endpoint's URL: the aud of every assertion.
func (s *Server) TokenURL() string { return s.cfg.BaseURL + TokenPath }

// Issuer is the iss of the access tokens.
func (s *Server) Issuer() string { return s.cfg.BaseURL + IssuerPath }

// Endpoints implements smart.Backend.
func (s *Server) Endpoints() smart.BackendEndpoints {
	algs := make([]string, len(SigningAlgs))
	for i, a := range SigningAlgs {
		algs[i] = string(a)
	}
	return smart.BackendEndpoints{Issuer: s.Issuer(), TokenEndpoint: s.TokenURL(), JWKSURI: s.cfg.BaseURL + JWKSPath,
		AssertionAlgs: algs, Scopes: ScopesSupported}
}

// ScopesSupported are the scope forms a backend client may ask for
// (scopes_supported): system/ scopes, v1 and v2, on every type (*) or on
// one type (system/Observation.rs, say, not listed).
var ScopesSupported = []string{"system/*.read", "system/*.rs", "system/*.r", "system/*.s",
	"system/*.write", "system/*.cud", "system/*.*", "system/*.cruds"}

// Client returns the registered backend client id: its organization and
// scopes, for decisions that depend on who asks. NotFound when there is
// none (it may have been deleted).
func (s *Server) Client(ctx context.Context, id string) (Client, error) {
	return s.clients.get(ctx, id)
}

// Start makes the first signing key, if there is none, and runs the
// housekeeping until ctx ends or Close: rotating the key when its period
// is over, forgetting spent assertion ids.
func (s *Server) Start(ctx context.Context) error {
	if _, err := s.keys.Current(ctx); err != nil {
		return err
	}
	if s.cfg.Leases != nil {
		s.prune = s.cfg.Leases.Periodic("auth/prune-jti", time.Minute, 0, func(ctx context.Context) error {
			_, err := pruneJTI(ctx, s.st, s.cfg.Now())
			return err
		})
		s.prune.Start(ctx)
	}
	// Every process looks at the signing key: it keeps the current one in
	// memory, and the rotation itself is one write whoever makes it.
	s.housekeeping.start(ctx, time.Minute, func(ctx context.Context) {
		if _, err := s.keys.Current(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("auth: signing key rotation failed", "err", err)
		}
		if s.prune != nil {
			return
		}
		if _, err := pruneJTI(ctx, s.st, s.cfg.Now()); err != nil && ctx.Err() == nil {
			s.log.Error("auth: pruning spent assertion ids failed", "err", err)
		}
	})
	return nil
}

// Close stops the housekeeping and waits for it.
func (s *Server) Close() error {
	if s.prune != nil {
		s.prune.Close()
	}
	s.housekeeping.close()
	return nil
}

// Handler serves the token endpoint and the key set; mount it at the
// root: r.Mount("/auth", s.Handler()) serves TokenPath and JWKSPath.
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Post("/token", s.token)
	r.Get("/jwks", s.publishJWKS)
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/token") {
			w.Header().Set("Allow", http.MethodPost)
			oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "the token endpoint takes POST with an application/x-www-form-urlencoded body")
			return
		}
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	})
	return r
}

// publishJWKS serves the public keys of the access tokens (RFC 7517 JWK
// Set), the one that signs now and those that signed tokens not yet
// expired.
func (s *Server) publishJWKS(w http.ResponseWriter, r *http.Request) {
	set, err := s.keys.JWKS(r.Context())
	if err != nil {
		s.log.Error("auth: publish keys", "err", err)
		http.Error(w, "the keys cannot be read right now", http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, http.StatusOK, set, "max-age=60")
}
