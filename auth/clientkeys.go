package auth

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// ClientJWKSPath is where ClientKeys publishes its public keys, below
// /api: the URL to give another payer as this payer's jwksUrl.
const ClientJWKSPath = "/jwks"

// clientKeysBucket holds this payer's own client keys, apart from the
// keys that sign its access tokens: a key signs for one purpose only.
const clientKeysBucket = "auth_client_keys"

// Timing of this payer's client keys.
const (
	// ClientJWKSMaxAge is the Cache-Control max-age of GET /api/jwks.
	// SMART App Launch 2 (client-confidential-asymmetric) says a server
	// SHALL NOT cache a client's JWKS longer than its Cache-Control
	// allows.
	ClientJWKSMaxAge = 5 * time.Minute
	// ClientKeySettle is how long a new key is published before it signs
	// assertions: twice the max-age, so that a source payer following
	// the Cache-Control has fetched the set holding it. Until then the
	// previous key signs.
	ClientKeySettle = 2 * ClientJWKSMaxAge
	// DefaultClientKeyRotation is how often a new client key is made.
	DefaultClientKeyRotation = 30 * 24 * time.Hour
	// clientKeyRetain is how long a key stays published once a newer one
	// was made: the settling time, the assertions it signed meanwhile,
	// and a wide margin for the housekeeping running late.
	clientKeyRetain = ClientKeySettle + MaxAssertionLifetime + ClockSkew + time.Hour
)

// ClientKeysConfig sets up ClientKeys.
type ClientKeysConfig struct {
	// Cipher seals the private keys (-secret-key); required.
	Cipher *secrets.Cipher
	// Alg of new keys: jose.ES384 (default) or jose.RS384.
	Alg jose.SignatureAlgorithm
	// RotateEvery is how often a new key is made; default
	// DefaultClientKeyRotation.
	RotateEvery time.Duration
	Logger      *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// ClientKeys are this payer's own keys as a client of other payers: they
// sign its client assertions (SMART Backend Services, private_key_jwt)
// and their public halves are published at GET /api/jwks, which the
// other payer registers as the client's jwksUrl. They are Keys in their
// own bucket, private parts sealed with -secret-key.
//
// Rotation never breaks a registration: a new key is published
// ClientKeySettle before it signs (the newest key published at least that
// long signs; the previous one until then), and a replaced key stays
// published for an hour and more after it last signed.
type ClientKeys struct {
	keys *Keys
	now  func() time.Time

	log *slog.Logger

	mu     sync.Mutex
	opened map[string]*liveKey // kid -> opened key

	rotation periodic
}

// NewClientKeys opens this payer's client keys in st. Nothing is made
// until the first Sign, JWKS or Current.
func NewClientKeys(st *store.Store, cfg ClientKeysConfig) (*ClientKeys, error) {
	if cfg.Alg == "" {
		cfg.Alg = jose.ES384
	}
	if cfg.RotateEvery <= 0 {
		cfg.RotateEvery = DefaultClientKeyRotation
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	k, err := NewKeys(st, KeysConfig{Bucket: clientKeysBucket, Alg: cfg.Alg, RotateEvery: cfg.RotateEvery,
		Retain: clientKeyRetain, Cipher: cfg.Cipher, Logger: cfg.Logger, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	return &ClientKeys{keys: k, now: cfg.Now, log: cfg.Logger, opened: map[string]*liveKey{}}, nil
}

// Start makes the first key, if there is none, and checks every minute
// until ctx ends or Close whether the next one is due, so that it is
// published on time rather than at the next use.
func (c *ClientKeys) Start(ctx context.Context) error {
	if err := c.Current(ctx); err != nil {
		return err
	}
	c.rotation.start(ctx, time.Minute, func(ctx context.Context) {
		if err := c.Current(ctx); err != nil && ctx.Err() == nil {
			c.log.Error("auth: client key rotation failed", "err", err)
		}
	})
	return nil
}

// Close stops what Start started and waits for it.
func (c *ClientKeys) Close() error {
	c.rotation.close()
	return nil
}

// Current makes the first key, or the next one when the current key's
// period is over; call it now and then so that a new key is published
// well before it must sign.
func (c *ClientKeys) Current(ctx context.Context) error {
	_, err := c.keys.Current(ctx)
	return err
}

// Rotate makes a new key now. It signs once it has been published for
// ClientKeySettle; the previous key signs until then.
func (c *ClientKeys) Rotate(ctx context.Context) error { return c.keys.Rotate(ctx) }

// JWKS returns the public keys published now, newest first.
func (c *ClientKeys) JWKS(ctx context.Context) (jose.JSONWebKeySet, error) {
	if _, err := c.keys.Current(ctx); err != nil {
		return jose.JSONWebKeySet{}, err
	}
	return c.keys.JWKS(ctx)
}

// Sign signs claims (a client assertion's JSON) as a compact JWS with the
// key chosen by the rule above, its kid in the header. It implements
// oidcservers.AssertionSigner.
func (c *ClientKeys) Sign(ctx context.Context, typ string, claims []byte) (string, error) {
	if _, err := c.keys.Current(ctx); err != nil {
		return "", err
	}
	recs, err := c.keys.read(ctx)
	if err != nil {
		return "", err
	}
	rec := settledKey(recs, c.now())
	if rec == nil {
		return "", errs.E("auth.client_keys", errs.Internal, "no client key is published")
	}
	c.mu.Lock()
	live := c.opened[rec.KID]
	c.mu.Unlock()
	if live == nil {
		if live, err = c.keys.open(*rec); err != nil {
			return "", err
		}
		c.mu.Lock()
		c.opened[rec.KID] = live
		c.mu.Unlock()
	}
	return signWith(live, typ, claims)
}

// settledKey chooses the key that signs an assertion at now among the
// published ones: the newest published for ClientKeySettle that stays
// published while the assertion lives; when none is, the oldest that
// stays published (most likely in the other payer's cache); failing that
// the newest.
func settledKey(recs []keyRecord, now time.Time) *keyRecord {
	if len(recs) == 0 {
		return nil
	}
	slices.SortFunc(recs, func(a, b keyRecord) int { return b.Created.Compare(a.Created) })
	lasts := func(r keyRecord) bool { return r.PublishUntil.After(now.Add(MaxAssertionLifetime + ClockSkew)) }
	for i, r := range recs {
		if !r.Created.After(now.Add(-ClientKeySettle)) && lasts(r) {
			return &recs[i]
		}
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if lasts(recs[i]) {
			return &recs[i]
		}
	}
	return &recs[0]
}

// ServeHTTP publishes the public keys (RFC 7517 JWK Set) with
// Cache-Control max-age ClientJWKSMaxAge; no token is needed.
func (c *ClientKeys) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	set, err := c.JWKS(r.Context())
	if err != nil {
		httpapi.WriteError(w, errs.E("auth.client_jwks", errs.Transient, "the client keys cannot be read right now", err))
		return
	}
	writeJSON(w, http.StatusOK, set, "max-age="+strconv.Itoa(int(ClientJWKSMaxAge/time.Second)))
}
