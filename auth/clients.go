package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// bucketClients holds the backend clients: clientId -> Client as JSON.
const bucketClients = "auth_backend_clients"

// Limits of a registration.
const (
	maxName      = 200
	maxURL       = 2048
	maxKeys      = 10
	maxScopes    = 50
	minRSABits   = 2048
	maxKeyIDSize = 200
)

// Client is a registered backend client (SMART App Launch 2, Backend
// Services, "Register SMART Backend Service"): another payer, say, allowed
// to ask this server for access tokens with client assertions signed by
// one of its keys.
type Client struct {
	// ClientID is assigned by the server at registration: the iss and sub
	// of the client's assertions, and the client_id of its tokens.
	ClientID string `json:"clientId"`
	// Name says who the client is, for people.
	Name string `json:"name"`
	// JWKS is the client's public key set ({"keys": [...]}), when given
	// at registration; exactly one of JWKS and JWKSURL is set.
	JWKS json.RawMessage `json:"jwks,omitempty"`
	// JWKSURL is where the client publishes its public key set (https,
	// or http on a loopback address), fetched when needed and cached as
	// its Cache-Control allows.
	JWKSURL string `json:"jwksUrl,omitempty"`
	// Scopes are the system/ scopes the client is pre-authorized for
	// (SMART v1 or v2 syntax); a token never grants more.
	Scopes []string `json:"scopes"`
	// OrganizationID identifies the client's organization (its payer id,
	// say), for the decisions that depend on who asks.
	OrganizationID string `json:"organizationId,omitempty"`
	// Created and Updated are set by the server.
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// newClientID is a random client id (128 bits, URL-safe).
func newClientID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Problems returns what is wrong with a registration, one issue per field
// (Path is the JSON name). Keys holding private parts are refused: a
// client registers its public keys only (SMART App Launch 2,
// client-confidential-asymmetric, "Registering a client").
func (c *Client) Problems() []errs.Issue {
	var out []errs.Issue
	add := func(path, msg string) { out = append(out, errs.Issue{Code: "invalid", Path: path, Message: msg}) }
	c.Name = strings.TrimSpace(c.Name)
	switch {
	case c.Name == "":
		add("name", "is required: who the client is")
	case len(c.Name) > maxName:
		add("name", fmt.Sprintf("must be at most %d bytes", maxName))
	case strings.ContainsFunc(c.Name, unicode.IsControl):
		add("name", "must not contain control characters")
	}
	hasJWKS := len(bytes.TrimSpace(c.JWKS)) > 0 && string(bytes.TrimSpace(c.JWKS)) != "null"
	switch {
	case hasJWKS && c.JWKSURL != "":
		add("jwks", "give either jwks or jwksUrl, not both")
	case !hasJWKS && c.JWKSURL == "":
		add("jwks", "is required, or jwksUrl: the client's public keys that verify its assertions")
	case hasJWKS:
		keys, problem := parsePublicJWKS(c.JWKS)
		if problem != "" {
			add("jwks", problem)
			break
		}
		// Stored compact and in a stable form.
		compact, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
		if err != nil {
			add("jwks", "cannot be encoded again: "+err.Error())
			break
		}
		c.JWKS = compact
	default:
		c.JWKS = nil
		if msg := checkJWKSURL(c.JWKSURL); msg != "" {
			add("jwksUrl", msg)
		}
	}
	switch {
	case len(c.Scopes) == 0:
		add("scopes", "is required: the system/ scopes the client may be granted, such as system/*.rs")
	case len(c.Scopes) > maxScopes:
		add("scopes", fmt.Sprintf("must list at most %d scopes", maxScopes))
	default:
		seen := map[string]bool{}
		for i, raw := range c.Scopes {
			path := fmt.Sprintf("scopes[%d]", i)
			sc, err := smart.ParseScope(raw)
			switch {
			case err != nil:
				add(path, fmt.Sprintf("%q is not a SMART resource scope: %v", raw, err))
			case sc.Level != smart.LevelSystem:
				add(path, fmt.Sprintf("%q is a %s/ scope; a backend client is granted system/ scopes only", raw, sc.Level))
			case seen[raw]:
				add(path, fmt.Sprintf("%q is listed twice", raw))
			}
			seen[raw] = true
		}
	}
	c.OrganizationID = strings.TrimSpace(c.OrganizationID)
	if len(c.OrganizationID) > maxName {
		add("organizationId", fmt.Sprintf("must be at most %d bytes", maxName))
	} else if strings.ContainsFunc(c.OrganizationID, unicode.IsControl) {
		add("organizationId", "must not contain control characters")
	}
	return out
}

// privateMembers are the JWK members that carry private or symmetric key
// material (RFC 7518 sections 6.2.2, 6.3.2 and 6.4.1).
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// parsePublicJWKS reads a client's JWK set as SMART requires it: a JWK Set
// whose keys are asymmetric public keys with kty and kid, RSA (n, e; at
// least 2048 bits) or EC on P-384 (crv, x, y), usable with RS384 or ES384.
// It returns the keys, or what is wrong in words.
func parsePublicJWKS(raw []byte) ([]jose.JSONWebKey, string) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&set); err != nil || set.Keys == nil {
		return nil, `must be a JWK Set: {"keys": [<public JWK>, ...]}`
	}
	if len(set.Keys) == 0 {
		return nil, "has no keys"
	}
	if len(set.Keys) > maxKeys {
		return nil, fmt.Sprintf("has %d keys; at most %d are accepted", len(set.Keys), maxKeys)
	}
	var keys []jose.JSONWebKey
	kids := map[string]bool{}
	for i, rawKey := range set.Keys {
		k, problem := parsePublicJWK(rawKey)
		if problem != "" {
			return nil, fmt.Sprintf("key %d: %s", i+1, problem)
		}
		if kids[k.KeyID] {
			return nil, fmt.Sprintf("key %d: kid %q is used by another key of the set; each kid must be unique", i+1, k.KeyID)
		}
		kids[k.KeyID] = true
		keys = append(keys, k)
	}
	return keys, ""
}

func parsePublicJWK(raw json.RawMessage) (jose.JSONWebKey, string) {
	var members map[string]any
	if err := json.Unmarshal(raw, &members); err != nil {
		return jose.JSONWebKey{}, "is not a JSON object"
	}
	for _, m := range privateMembers {
		if _, ok := members[m]; ok {
			if m == "k" {
				return jose.JSONWebKey{}, `is a symmetric key ("k"); register the client's RSA or EC public key only`
			}
			return jose.JSONWebKey{}, fmt.Sprintf("holds private key material (%q); register the public key only and keep the private key with the client", m)
		}
	}
	kty, _ := members["kty"].(string)
	kid, _ := members["kid"].(string)
	alg, _ := members["alg"].(string)
	use, _ := members["use"].(string)
	switch {
	case kty != "RSA" && kty != "EC":
		return jose.JSONWebKey{}, fmt.Sprintf("kty %q is not RSA or EC", kty)
	case strings.TrimSpace(kid) == "":
		return jose.JSONWebKey{}, "has no kid; SMART requires one on every key, and assertions name it"
	case len(kid) > maxKeyIDSize:
		return jose.JSONWebKey{}, fmt.Sprintf("kid is longer than %d bytes", maxKeyIDSize)
	case use != "" && use != "sig":
		return jose.JSONWebKey{}, fmt.Sprintf("use %q is not sig", use)
	case alg != "" && alg != string(algFor(kty)):
		return jose.JSONWebKey{}, fmt.Sprintf("alg %q does not fit: a %s key signs %s assertions here", alg, kty, algFor(kty))
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return jose.JSONWebKey{}, "is not a valid JWK: " + err.Error()
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return jose.JSONWebKey{}, fmt.Sprintf("the RSA key has %d bits; at least %d are required", pub.N.BitLen(), minRSABits)
		}
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P384() {
			return jose.JSONWebKey{}, fmt.Sprintf("the EC key is on %s; ES384 needs P-384", pub.Curve.Params().Name)
		}
	default:
		return jose.JSONWebKey{}, "is not an RSA or EC public key"
	}
	return k, ""
}

// algFor is the assertion algorithm of a key type.
func algFor(kty string) jose.SignatureAlgorithm {
	if kty == "EC" {
		return jose.ES384
	}
	return jose.RS384
}

// checkJWKSURL returns what is wrong with a client's JWK Set URL, or "":
// https (SMART requires a TLS-protected endpoint), or http on a loopback
// address for local work and tests; no credentials, no fragment.
func checkJWKSURL(v string) string {
	if len(v) > maxURL {
		return fmt.Sprintf("must be at most %d bytes", maxURL)
	}
	u, err := url.Parse(v)
	switch {
	case err != nil || strings.ContainsAny(v, " \t\r\n") || u.Host == "" || u.Hostname() == "":
		return "must be an absolute https URL"
	case u.User != nil:
		return "must not contain credentials"
	case u.Fragment != "" || strings.Contains(v, "#"):
		return "must not contain a fragment"
	case u.Scheme == "https":
		return ""
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
		return ""
	}
	return "must be an https URL (http only on a loopback address)"
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// clientRepo keeps the clients in the store.
type clientRepo struct {
	st  *store.Store
	now func() time.Time
}

func notFound(op, id string) error {
	return errs.E(op, errs.NotFound, fmt.Sprintf("no backend client with clientId %q", id))
}

// get returns the client id; NotFound when none (or deleted).
func (r *clientRepo) get(ctx context.Context, id string) (Client, error) {
	const op = "auth.client"
	var c Client
	found := false
	err := r.st.View(ctx, func(tx *store.Tx) error {
		raw := tx.KV(bucketClients).Get([]byte(id))
		if raw == nil {
			return nil
		}
		found = true
		return json.Unmarshal(raw, &c)
	})
	if err != nil {
		return Client{}, errs.E(op, err)
	}
	if !found {
		return Client{}, notFound(op, id)
	}
	return c, nil
}

func (r *clientRepo) list(ctx context.Context) ([]Client, error) {
	var out []Client
	err := r.st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(bucketClients).Scan(nil, func(_, v []byte) (bool, error) {
			var c Client
			if err := json.Unmarshal(v, &c); err != nil {
				return false, err
			}
			out = append(out, c)
			return true, nil
		})
	})
	if err != nil {
		return nil, errs.E("auth.clients", err)
	}
	slices.SortFunc(out, func(a, b Client) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ClientID, b.ClientID)
	})
	return out, nil
}

// create registers c (already checked) under a new clientId.
func (r *clientRepo) create(ctx context.Context, c Client) (Client, error) {
	id, err := newClientID()
	if err != nil {
		return Client{}, errs.E("auth.client", errs.Internal, err)
	}
	c.ClientID = id
	c.Created = r.now().UTC()
	c.Updated = c.Created
	err = r.st.Write(ctx, func(tx *store.Tx) error {
		return putClient(tx, c)
	})
	if err != nil {
		return Client{}, errs.E("auth.client", err)
	}
	return c, nil
}

// replace stores c (checked) in place of the client c.ClientID, keeping
// its creation time.
func (r *clientRepo) replace(ctx context.Context, c Client) (Client, error) {
	const op = "auth.client"
	err := r.st.Write(ctx, func(tx *store.Tx) error {
		raw := tx.KV(bucketClients).Get([]byte(c.ClientID))
		if raw == nil {
			return notFound(op, c.ClientID)
		}
		var old Client
		if err := json.Unmarshal(raw, &old); err != nil {
			return err
		}
		c.Created = old.Created
		c.Updated = r.now().UTC()
		return putClient(tx, c)
	})
	if err != nil {
		return Client{}, errs.E(op, err)
	}
	return c, nil
}

// delete removes the client; NotFound when there is none. Its tokens stop
// working at once: every token's client is looked up when it is used.
func (r *clientRepo) delete(ctx context.Context, id string) (Client, error) {
	const op = "auth.client"
	var old Client
	err := r.st.Write(ctx, func(tx *store.Tx) error {
		kv := tx.KV(bucketClients)
		raw := kv.Get([]byte(id))
		if raw == nil {
			return notFound(op, id)
		}
		if err := json.Unmarshal(raw, &old); err != nil {
			return err
		}
		return kv.Delete([]byte(id))
	})
	if err != nil {
		return Client{}, errs.E(op, err)
	}
	return old, nil
}

func putClient(tx *store.Tx, c Client) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return tx.KV(bucketClients).Put([]byte(c.ClientID), b)
}
