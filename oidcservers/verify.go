package oidcservers

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"slices"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Verifier checks JWTs (ID tokens, JWT access tokens) issued by one source
// payer: signature, expiry, audience, and an iss claim naming the
// definition's issuer (a trailing slash does not matter). Build one per
// definition and keep it: with a discovered key set it caches the keys and
// refetches them when a token names an unknown key id.
type Verifier struct {
	issuer string
	v      *oidc.IDTokenVerifier
}

// VerifierOption adjusts NewVerifier.
type VerifierOption func(*oidc.Config)

// WithAudience makes the verifier require aud in the token's audience instead
// of the definition's clientId; for instance this server's FHIR base URL for
// access tokens presented to it.
func WithAudience(aud string) VerifierOption {
	return func(c *oidc.Config) { c.ClientID = aud; c.SkipClientIDCheck = false }
}

// WithoutAudienceCheck accepts any audience. Use it only where the audience is
// checked otherwise.
func WithoutAudienceCheck() VerifierOption {
	return func(c *oidc.Config) { c.ClientID = ""; c.SkipClientIDCheck = true }
}

// NewVerifier builds the Verifier for srv. With srv.JWKText it uses exactly
// those keys and makes no network request. Otherwise it discovers the
// provider (see Discover) and uses its jwks_uri, through go-oidc's remote key
// set. By default the audience must contain srv.ClientID.
//
// The key set outlives ctx: later key fetches use a background context with
// the *http.Client from ctx (oauth2.HTTPClient), if any.
func NewVerifier(ctx context.Context, srv Server, opts ...VerifierOption) (*Verifier, error) {
	const op = "oidcservers.verifier"
	cfg := &oidc.Config{ClientID: srv.ClientID}
	for _, o := range opts {
		o(cfg)
	}
	if cfg.ClientID == "" && !cfg.SkipClientIDCheck {
		return nil, errs.E(op, errs.Invalid, "no audience to check: the definition has no clientId; use WithAudience or WithoutAudienceCheck")
	}
	// go-oidc compares iss byte for byte; Verify compares with SameIssuer.
	cfg.SkipIssuerCheck = true

	var keySet oidc.KeySet
	if srv.JWKText != "" {
		keys, err := ParsePublicJWKs(srv.JWKText)
		if err != nil {
			return nil, errs.E(op, errs.Invalid, "jwkText "+err.Error())
		}
		var pubs []crypto.PublicKey
		for _, k := range keys {
			pubs = append(pubs, k.Key)
			for _, alg := range algorithmsFor(k) {
				if !slices.Contains(cfg.SupportedSigningAlgs, alg) {
					cfg.SupportedSigningAlgs = append(cfg.SupportedSigningAlgs, alg)
				}
			}
		}
		keySet = &oidc.StaticKeySet{PublicKeys: pubs}
	} else {
		d, err := Discover(ctx, srv)
		if err != nil {
			return nil, err
		}
		if d.JWKSURI == "" {
			return nil, errs.E(op, errs.Unprocessable, "the discovery document has no jwks_uri")
		}
		keyCtx := oidc.ClientContext(context.Background(), httpClient(ctx))
		keySet = oidc.NewRemoteKeySet(keyCtx, d.JWKSURI)
		cfg.SupportedSigningAlgs = d.IDTokenSigningAlgs // empty: go-oidc's default, RS256
	}
	return &Verifier{issuer: srv.Issuer, v: oidc.NewVerifier(srv.Issuer, keySet, cfg)}, nil
}

// algorithmsFor lists the signature algorithms a public key can verify: its
// own "alg" when the JWK names one, else every algorithm of its type.
func algorithmsFor(k jose.JSONWebKey) []string {
	if k.Algorithm != "" {
		return []string{k.Algorithm}
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		return []string{oidc.RS256, oidc.RS384, oidc.RS512, oidc.PS256, oidc.PS384, oidc.PS512}
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			return []string{oidc.ES256}
		case elliptic.P384():
			return []string{oidc.ES384}
		case elliptic.P521():
			return []string{oidc.ES512}
		}
	case ed25519.PublicKey:
		return []string{oidc.EdDSA}
	}
	return nil
}

// Verify checks raw and returns its parsed claims. Errors are Unauthorized
// *errs.Error; the cause (for example *oidc.TokenExpiredError) is in the chain.
func (v *Verifier) Verify(ctx context.Context, raw string) (*oidc.IDToken, error) {
	const op = "oidcservers.verify"
	tok, err := v.v.Verify(ctx, raw)
	if err != nil {
		return nil, errs.E(op, errs.Unauthorized, "the token is not valid for this issuer", err)
	}
	if !SameIssuer(tok.Issuer, v.issuer) {
		return nil, errs.E(op, errs.Unauthorized, "the token was issued by another issuer")
	}
	return tok, nil
}
