// Package authtest is a SMART Backend Services client for tests: a key
// pair, its registration with a p2pserver's /api/backend_clients, and
// access tokens from the token endpoint with client assertions signed the
// way another payer's system signs them (go-jose, RS384 or ES384). Every
// call goes over real HTTP.
package authtest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key is a client's signing key.
type Key struct {
	Alg  jose.SignatureAlgorithm
	KID  string
	Priv crypto.Signer
}

// NewKey makes a key for alg (jose.RS384: RSA 2048; jose.ES384: P-384)
// with a random kid.
func NewKey(t testing.TB, alg jose.SignatureAlgorithm) *Key {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.RS384, jose.RS256, jose.PS384:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		t.Fatalf("authtest: no key for %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	kid := make([]byte, 8)
	_, _ = rand.Read(kid)
	return &Key{Alg: alg, KID: base64.RawURLEncoding.EncodeToString(kid), Priv: priv}
}

// PublicJWK is the key's public half as a JWK (kty, kid, alg, use sig).
func (k *Key) PublicJWK() map[string]any {
	j := jose.JSONWebKey{Key: k.Priv.Public(), KeyID: k.KID, Algorithm: string(k.Alg), Use: "sig"}
	return toMap(j)
}

// PrivateJWK is the whole key as a JWK, private parts included: what a
// client must never register.
func (k *Key) PrivateJWK() map[string]any {
	return toMap(jose.JSONWebKey{Key: k.Priv, KeyID: k.KID, Algorithm: string(k.Alg), Use: "sig"})
}

func toMap(j jose.JSONWebKey) map[string]any {
	b, err := j.MarshalJSON()
	if err != nil {
		panic(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// JWKS is a JWK Set of the keys' public halves.
func JWKS(keys ...*Key) map[string]any {
	list := make([]any, len(keys))
	for i, k := range keys {
		list[i] = k.PublicJWK()
	}
	return map[string]any{"keys": list}
}

// Claims are an assertion's claims, ready to be changed by a test.
type Claims map[string]any

// NewClaims are the claims SMART requires of a client assertion:
// iss = sub = clientID, aud = tokenURL, exp in four minutes, a random jti.
func NewClaims(clientID, tokenURL string) Claims {
	jti := make([]byte, 16)
	_, _ = rand.Read(jti)
	return Claims{"iss": clientID, "sub": clientID, "aud": tokenURL,
		"exp": time.Now().Add(4 * time.Minute).Unix(), "jti": base64.RawURLEncoding.EncodeToString(jti)}
}

// Sign signs claims with the key: header alg, kid and typ JWT, plus
// extra headers (a nil value drops a header: {"typ": nil}).
func (k *Key) Sign(t testing.TB, claims Claims, extra map[string]any) string {
	t.Helper()
	opts := &jose.SignerOptions{}
	opts.WithHeader("kid", k.KID).WithType("JWT")
	for name, v := range extra {
		if v == nil {
			delete(opts.ExtraHeaders, jose.HeaderKey(name))
			continue
		}
		opts.WithHeader(jose.HeaderKey(name), v)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Alg, Key: k.Priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Assertion is a fresh client assertion of clientID for tokenURL.
func (k *Key) Assertion(t testing.TB, clientID, tokenURL string) string {
	return k.Sign(t, NewClaims(clientID, tokenURL), nil)
}

// Register posts a registration body to base/api/backend_clients with the
// admin token and returns the answer's status and JSON.
func Register(t testing.TB, base, adminToken string, body map[string]any) (int, map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, strings.TrimRight(base, "/")+"/api/backend_clients", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	return do(t, req)
}

// MustRegister registers a client with the keys' JWK Set and scopes and
// returns its clientId.
func MustRegister(t testing.TB, base, adminToken, name string, scopes []string, keys ...*Key) string {
	t.Helper()
	status, out := Register(t, base, adminToken, map[string]any{"name": name, "jwks": JWKS(keys...), "scopes": scopes})
	id, _ := out["clientId"].(string)
	if status != http.StatusCreated || id == "" {
		t.Fatalf("authtest: register %s: %d %v", name, status, out)
	}
	return id
}

// Response is a token endpoint's answer.
type Response struct {
	Status int
	Header http.Header
	JSON   map[string]any
}

// AccessToken is the access_token of a successful answer.
func (r Response) AccessToken() string { s, _ := r.JSON["access_token"].(string); return s }

// Error is the OAuth error code of a refusal.
func (r Response) Error() string { s, _ := r.JSON["error"].(string); return s }

// RequestToken posts form to tokenURL as application/x-www-form-urlencoded.
func RequestToken(t testing.TB, tokenURL string, form url.Values) Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	r := Response{Status: resp.StatusCode, Header: resp.Header}
	_ = json.Unmarshal(body, &r.JSON)
	return r
}

// Form is a Backend Services token request with assertion and scope.
func Form(assertion, scope string) url.Values {
	return url.Values{"grant_type": {"client_credentials"},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion}, "scope": {scope}}
}

// Token gets an access token for clientID with scope, failing t if the
// endpoint refuses.
func (k *Key) Token(t testing.TB, clientID, tokenURL, scope string) string {
	t.Helper()
	r := RequestToken(t, tokenURL, Form(k.Assertion(t, clientID, tokenURL), scope))
	if r.Status != http.StatusOK || r.AccessToken() == "" {
		t.Fatalf("authtest: token for %s: %d %v", clientID, r.Status, r.JSON)
	}
	return r.AccessToken()
}

func do(t testing.TB, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}
