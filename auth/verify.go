package auth

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// accessClaims are the claims of an access token this server issued.
type accessClaims struct {
	Issuer   string           `json:"iss"`
	Subject  string           `json:"sub"`
	ClientID string           `json:"client_id"`
	Audience jwt.Audience     `json:"aud"`
	Expiry   *jwt.NumericDate `json:"exp"`
	IssuedAt *jwt.NumericDate `json:"iat"`
	Scope    string           `json:"scope"`
}

// VerifyBackend implements smart.Backend: raw must be an access token of
// this server (typ at+jwt, signed by one of its published keys), for the
// FHIR base, not expired, issued to a client that is still registered.
// The token's scopes are held to the client's registration as it is now,
// so narrowing a client's scopes narrows its tokens at once, and deleting
// it ends them. Errors are *errs.Error: Unauthorized for a token that is
// not good, Transient when the database cannot be read.
func (s *Server) VerifyBackend(ctx context.Context, raw string) (*smart.Token, error) {
	const op = "auth.verify"
	bad := func(msg string, cause error) error { return errs.E(op, errs.Unauthorized, msg, cause) }
	c, err := s.verified.claims(raw, func() (*accessClaims, error) { return s.checkSignature(ctx, raw) })
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	switch {
	case c.Issuer != s.Issuer():
		return nil, bad("the access token's issuer is not this server", nil)
	case !slices.Contains(c.Audience, s.cfg.FHIRBase):
		return nil, bad(fmt.Sprintf("the access token is not meant for %s", s.cfg.FHIRBase), nil)
	case c.Expiry == nil || !now.Before(c.Expiry.Time()):
		return nil, bad("the access token has expired", nil)
	case c.IssuedAt != nil && c.IssuedAt.Time().After(now.Add(ClockSkew)):
		return nil, bad("the access token was issued in the future", nil)
	case c.ClientID == "" || c.Subject != c.ClientID:
		return nil, bad("the access token names no client", nil)
	}
	client, err := s.clients.get(ctx, c.ClientID)
	if errs.Is(err, errs.NotFound) {
		return nil, bad("the access token's client is no longer registered", nil)
	}
	if err != nil {
		return nil, errs.E(op, errs.Transient, "the backend clients cannot be read right now; try again later", err)
	}
	granted, _ := Intersect(c.Scope, client.Scopes)
	return &smart.Token{
		Issuer: c.Issuer, Subject: c.Subject, ClientID: c.ClientID, Audience: c.Audience,
		Expiry: c.Expiry.Time(), Scopes: smart.ParseScopes(strings.Join(granted, " ")), Backend: true,
	}, nil
}

// checkSignature parses an access token and checks that one of the
// server's published keys signed it; it returns its claims, not checked.
func (s *Server) checkSignature(ctx context.Context, raw string) (*accessClaims, error) {
	const op = "auth.verify"
	bad := func(msg string, cause error) error { return errs.E(op, errs.Unauthorized, msg, cause) }
	jws, err := jose.ParseSigned(raw, SigningAlgs)
	if err != nil || len(jws.Signatures) != 1 {
		return nil, bad("the access token is not a JWS of this server", err)
	}
	h := jws.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); !strings.EqualFold(typ, accessTokenType) {
		return nil, bad("the token is not an access token of this server (typ)", nil)
	}
	key, ok, err := s.keys.PublicKey(ctx, h.KeyID)
	if err != nil {
		return nil, errs.E(op, errs.Transient, "the server's keys cannot be read right now; try again later", err)
	}
	if !ok {
		return nil, bad("the access token is signed with a key this server does not publish (it may have expired)", nil)
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return nil, bad("the access token's signature does not verify", err)
	}
	var c accessClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, bad("the access token's claims cannot be read", err)
	}
	return &c, nil
}

// verifiedCache remembers the claims of access tokens whose signature
// held, so that a client paging through a search does not cost a
// signature check per page (an ES384 check is most of a backend token's
// cost). Only the signature is remembered: expiry, audience and the
// client's registration are checked at every use. Bounded: when full,
// expired entries go, and if none has, all do.
type verifiedCache struct {
	mu sync.Mutex
	m  map[[sha256.Size]byte]*accessClaims
}

const verifiedMax = 4096

func (v *verifiedCache) claims(raw string, check func() (*accessClaims, error)) (*accessClaims, error) {
	key := sha256.Sum256([]byte(raw))
	v.mu.Lock()
	c, ok := v.m[key]
	v.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := check()
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[[sha256.Size]byte]*accessClaims{}
	}
	if len(v.m) >= verifiedMax {
		now := time.Now()
		for k, old := range v.m {
			if old.Expiry == nil || !now.Before(old.Expiry.Time()) {
				delete(v.m, k)
			}
		}
		if len(v.m) >= verifiedMax {
			clear(v.m)
		}
	}
	v.m[key] = c
	return c, nil
}
