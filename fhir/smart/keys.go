package smart

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// Issuer is one authorization server whose tokens this FHIR server accepts.
type Issuer struct {
	// URL is the issuer identifier, as tokens carry it in iss (a trailing
	// slash is not significant).
	URL string
	// Keys, when set, are the issuer's public keys: tokens are verified
	// with them and nothing is fetched. When empty the keys are discovered
	// through URL/.well-known/openid-configuration and its jwks_uri.
	Keys []jose.JSONWebKey
	// KeyFile names the file Keys were read from, for messages.
	KeyFile string
}

// ParseIssuers reads the -trusted-issuers setting: comma-separated
// entries, each an issuer URL, or ISSUER=KEYFILE where KEYFILE holds the
// issuer's public keys (a JWK set, one JWK, or PEM public keys or
// certificates). Issuer URLs must be http(s) and, as OpenID Connect
// requires, carry no query or fragment; "=" therefore always separates the
// key file.
func ParseIssuers(setting string) ([]Issuer, error) {
	var out []Issuer
	seen := map[string]bool{}
	for _, entry := range strings.Split(setting, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		iss, file, hasFile := strings.Cut(entry, "=")
		iss = strings.TrimSpace(iss)
		if err := checkIssuerURL(iss); err != nil {
			return nil, err
		}
		if seen[issuerKey(iss)] {
			return nil, fmt.Errorf("issuer %s is listed twice", iss)
		}
		seen[issuerKey(iss)] = true
		is := Issuer{URL: iss}
		if hasFile {
			is.KeyFile = strings.TrimSpace(file)
			data, err := os.ReadFile(is.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("keys of issuer %s: %w", iss, err)
			}
			if is.Keys, err = ParseKeys(data); err != nil {
				return nil, fmt.Errorf("keys of issuer %s in %s: %w", iss, is.KeyFile, err)
			}
		}
		out = append(out, is)
	}
	return out, nil
}

func checkIssuerURL(iss string) error {
	if !strings.HasPrefix(iss, "https://") && !strings.HasPrefix(iss, "http://") {
		return fmt.Errorf("issuer %q is not an http(s) URL", iss)
	}
	if strings.ContainsAny(iss, "?#") {
		return fmt.Errorf("issuer %q has a query or fragment, which OpenID Connect issuers may not", iss)
	}
	return nil
}

// issuerKey is the form in which two issuer URLs are compared.
func issuerKey(iss string) string { return strings.TrimRight(iss, "/") }

// ParseKeys reads public verification keys: a JWK set ({"keys":[...]}),
// a single JWK, or PEM blocks of public keys or certificates. Private keys
// are refused, so that a signing key is never configured here by mistake.
func ParseKeys(data []byte) ([]jose.JSONWebKey, error) {
	trimmed := strings.TrimSpace(string(data))
	if strings.HasPrefix(trimmed, "{") {
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(data, &set); err == nil && len(set.Keys) > 0 {
			return publicOnly(set.Keys)
		}
		var k jose.JSONWebKey
		if err := json.Unmarshal(data, &k); err != nil {
			return nil, fmt.Errorf("not a JWK or JWK set: %w", err)
		}
		return publicOnly([]jose.JSONWebKey{k})
	}
	var out []jose.JSONWebKey
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		var pub crypto.PublicKey
		switch b.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM public key: %w", err)
			}
			pub = k
		case "RSA PUBLIC KEY":
			k, err := x509.ParsePKCS1PublicKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM RSA public key: %w", err)
			}
			pub = k
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("PEM certificate: %w", err)
			}
			pub = c.PublicKey
		default:
			return nil, fmt.Errorf("PEM block %q is not a public key or certificate", b.Type)
		}
		out = append(out, jose.JSONWebKey{Key: pub})
	}
	if len(out) == 0 {
		return nil, errors.New("no key found: expected a JWK set, a JWK or PEM public keys")
	}
	return publicOnly(out)
}

func publicOnly(keys []jose.JSONWebKey) ([]jose.JSONWebKey, error) {
	out := make([]jose.JSONWebKey, 0, len(keys))
	for i, k := range keys {
		if k.Use != "" && k.Use != "sig" {
			continue // an encryption key in a published set
		}
		switch k.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			out = append(out, k)
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return nil, fmt.Errorf("key %d is a private key; give the issuer's public key", i+1)
		default:
			return nil, fmt.Errorf("key %d is not an RSA, EC or Ed25519 public key", i+1)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no signature verification key in the set")
	}
	return out, nil
}

// signingAlgs are the JWS algorithms accepted: asymmetric ones only, so
// that a public key can never be used as an HMAC secret.
var signingAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

func signingAlgNames() []string {
	out := make([]string, len(signingAlgs))
	for i, a := range signingAlgs {
		out[i] = string(a)
	}
	return out
}

// refetchInterval bounds how often an issuer's JWKS is fetched again
// because a token names a key id not in the cached set: enough to follow a
// key rotation at once, too rare for forged key ids to turn into a flood of
// requests to the issuer.
const refetchInterval = 10 * time.Second

// keySet is an oidc.KeySet for one issuer: fixed keys, or keys fetched from
// a jwks_uri and cached. Unlike go-oidc's RemoteKeySet it refetches only
// for an unknown key id, and at most once per refetchInterval, never
// because a signature failed with a known key.
type keySet struct {
	uri    string // empty for fixed keys
	client *http.Client

	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetched time.Time
}

var errUnknownKey = errors.New("smart: the token is signed with a key the issuer does not publish")

// VerifySignature implements oidc.KeySet.
func (ks *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSigned(raw, signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("smart: malformed JWS: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("smart: the token must have exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, refetch := ks.candidates(kid)
	if len(keys) == 0 && refetch {
		if keys, err = ks.refresh(ctx, kid); err != nil {
			return nil, err
		}
	}
	if len(keys) == 0 {
		return nil, errUnknownKey
	}
	for _, k := range keys {
		if payload, err := jws.Verify(k); err == nil {
			return payload, nil
		}
	}
	return nil, errors.New("smart: the token's signature does not verify")
}

// candidates returns the cached keys that may have signed a token with
// kid, and whether a fetch may be tried if there are none.
func (ks *keySet) candidates(kid string) ([]jose.JSONWebKey, bool) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	var out []jose.JSONWebKey
	for _, k := range ks.keys {
		if kid == "" || k.KeyID == "" || k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out, ks.uri != "" && time.Since(ks.fetched) >= refetchInterval
}

func (ks *keySet) refresh(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if time.Since(ks.fetched) < refetchInterval {
		// Another request fetched meanwhile; use what it found.
		return matching(ks.keys, kid), nil
	}
	// Count the attempt even if it fails, so a down issuer is not hammered.
	ks.fetched = time.Now()
	keys, err := fetchJWKS(ctx, ks.client, ks.uri)
	if err != nil {
		return nil, err
	}
	ks.keys = keys
	return matching(keys, kid), nil
}

func matching(keys []jose.JSONWebKey, kid string) []jose.JSONWebKey {
	var out []jose.JSONWebKey
	for _, k := range keys {
		if kid == "" || k.KeyID == "" || k.KeyID == kid {
			out = append(out, k)
		}
	}
	return out
}

// errIssuerUnreachable marks failures to reach an issuer (discovery or
// JWKS), which are ours to report as 503, not the client's token's fault.
var errIssuerUnreachable = errors.New("smart: the token issuer's keys could not be fetched")

func fetchJWKS(ctx context.Context, client *http.Client, uri string) ([]jose.JSONWebKey, error) {
	// As for discovery: the keys serve every later request.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errIssuerUnreachable, uri, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errIssuerUnreachable, uri, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errIssuerUnreachable, uri, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: %s answered %s", errIssuerUnreachable, uri, resp.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("%w: %s is not a JWK set: %v", errIssuerUnreachable, uri, err)
	}
	keys, err := publicOnly(set.Keys)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errIssuerUnreachable, uri, err)
	}
	return keys, nil
}

// metadata is the part of an issuer's OpenID configuration this server
// uses and repeats in its SMART configuration.
type metadata struct {
	Issuer                     string   `json:"issuer"`
	AuthorizationEndpoint      string   `json:"authorization_endpoint,omitempty"`
	TokenEndpoint              string   `json:"token_endpoint,omitempty"`
	JWKSURI                    string   `json:"jwks_uri,omitempty"`
	RegistrationEndpoint       string   `json:"registration_endpoint,omitempty"`
	IntrospectionEndpoint      string   `json:"introspection_endpoint,omitempty"`
	RevocationEndpoint         string   `json:"revocation_endpoint,omitempty"`
	GrantTypes                 []string `json:"grant_types_supported,omitempty"`
	ResponseTypes              []string `json:"response_types_supported,omitempty"`
	TokenEndpointAuthMethods   []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	TokenEndpointAuthAlgs      []string `json:"token_endpoint_auth_signing_alg_values_supported,omitempty"`
	CodeChallengeMethods       []string `json:"code_challenge_methods_supported,omitempty"`
	ScopesSupported            []string `json:"scopes_supported,omitempty"`
	IDTokenSigningAlgsSupplied []string `json:"id_token_signing_alg_values_supported,omitempty"`
}

// trusted is the run-time state of one trusted issuer.
type trusted struct {
	Issuer
	client *http.Client

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	meta     *metadata
	lastTry  time.Time
	lastErr  error
}

// discoverRetry is how long a failed discovery is remembered before the
// next request tries again.
const discoverRetry = 10 * time.Second

func newTrusted(is Issuer, client *http.Client) *trusted {
	t := &trusted{Issuer: is, client: client}
	if len(is.Keys) > 0 {
		t.verifier = newVerifier(is.URL, &keySet{keys: is.Keys})
	}
	return t
}

func newVerifier(issuer string, ks oidc.KeySet) *oidc.IDTokenVerifier {
	return oidc.NewVerifier(issuer, ks, &oidc.Config{
		// The audience is checked against a list, the issuer with a
		// trailing slash tolerated, exp and nbf with this server's leeway
		// and messages: all by Guard.Verify, once the signature is good.
		SkipClientIDCheck:    true,
		SkipIssuerCheck:      true,
		SkipExpiryCheck:      true,
		SupportedSigningAlgs: signingAlgNames(),
	})
}

// forgetStartFailure lets the next request try discovery again at once
// after a failed attempt at start-up; failures after that are remembered
// for discoverRetry.
func (t *trusted) forgetStartFailure() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastTry = time.Time{}
}

// tokenVerifier returns the issuer's verifier, discovering the issuer on
// first use. A failed discovery is retried after discoverRetry, not on
// every request.
func (t *trusted) tokenVerifier(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.verifier != nil {
		return t.verifier, nil
	}
	if err := t.discoverLocked(ctx); err != nil {
		return nil, err
	}
	return t.verifier, nil
}

// discovery returns the issuer's OpenID configuration, fetching it once.
// Issuers with configured keys are asked too: the SMART configuration
// repeats their endpoints.
func (t *trusted) discovery(ctx context.Context) (*metadata, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.meta != nil {
		return t.meta, nil
	}
	if err := t.discoverLocked(ctx); err != nil {
		return nil, err
	}
	return t.meta, nil
}

// cachedMeta returns the issuer's OpenID configuration if it has been
// fetched, without fetching it.
func (t *trusted) cachedMeta() *metadata {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.meta
}

func (t *trusted) discoverLocked(ctx context.Context) error {
	if t.lastErr != nil && time.Since(t.lastTry) < discoverRetry {
		return t.lastErr
	}
	t.lastTry = time.Now()
	// The result serves every later request: a client that hangs up must
	// not leave a failure behind for the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	p, err := oidc.NewProvider(oidc.ClientContext(ctx, t.client), t.URL)
	if err != nil {
		t.lastErr = fmt.Errorf("%w: discovery of %s: %v", errIssuerUnreachable, t.URL, err)
		return t.lastErr
	}
	var m metadata
	if err := p.Claims(&m); err != nil {
		t.lastErr = fmt.Errorf("%w: discovery of %s: %v", errIssuerUnreachable, t.URL, err)
		return t.lastErr
	}
	if t.verifier == nil {
		if m.JWKSURI == "" {
			t.lastErr = fmt.Errorf("%w: the discovery document of %s has no jwks_uri", errIssuerUnreachable, t.URL)
			return t.lastErr
		}
		t.verifier = newVerifier(t.URL, &keySet{uri: m.JWKSURI, client: t.client})
	}
	t.meta, t.lastErr = &m, nil
	return nil
}
