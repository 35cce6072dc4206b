package smart_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// keyBackend is a minimal smart.Backend over one ES384 key, enough to
// test how the guard routes and holds this server's own tokens; package
// auth has the real token endpoint and its own end-to-end tests.
type keyBackend struct {
	key     *ecdsa.PrivateKey
	issuer  string
	mu      sync.Mutex
	revoked map[string]bool
}

func newKeyBackend(t *testing.T) *keyBackend {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &keyBackend{key: k, issuer: "https://payer-a.example/auth", revoked: map[string]bool{}}
}

func (b *keyBackend) Endpoints() smart.BackendEndpoints {
	return smart.BackendEndpoints{Issuer: b.issuer, TokenEndpoint: "https://payer-a.example/auth/token",
		JWKSURI: "https://payer-a.example/auth/jwks", AssertionAlgs: []string{"RS384", "ES384"}, Scopes: []string{"system/*.rs"}}
}

func (b *keyBackend) mint(t *testing.T, client, scope string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: b.key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(map[string]any{"iss": b.issuer, "sub": client, "client_id": client, "scope": scope,
		"exp": time.Now().Add(5 * time.Minute).Unix()})
	jws, _ := signer.Sign(payload)
	s, _ := jws.CompactSerialize()
	return s
}

func (b *keyBackend) VerifyBackend(_ context.Context, raw string) (*smart.Token, error) {
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES384})
	if err != nil {
		return nil, errs.E("test", errs.Unauthorized, "not a token", err)
	}
	payload, err := jws.Verify(&b.key.PublicKey)
	if err != nil {
		return nil, errs.E("test", errs.Unauthorized, "bad signature", err)
	}
	var c struct {
		Sub, Scope string
	}
	_ = json.Unmarshal(payload, &c)
	b.mu.Lock()
	revoked := b.revoked[c.Sub]
	b.mu.Unlock()
	if revoked {
		return nil, errs.E("test", errs.Unauthorized, "the client is no longer registered", errors.New("revoked"))
	}
	return &smart.Token{Issuer: b.issuer, Subject: c.Sub, ClientID: c.Sub, Backend: true, Scopes: smart.ParseScopes(c.Scope)}, nil
}

// TestBackendTokensBesideTrustedIssuers: the guard accepts this server's
// own Backend Services tokens beside the trusted issuers' and names their
// client; an open server stays open, but a backend token presented to it
// is verified and holds the request to its scopes; the SMART configuration
// names the backend's token endpoint in both modes (SMART App Launch 2,
// Backend Services, "Retrieve .well-known/smart-configuration", and
// client-confidential-asymmetric discovery requirements).
func TestBackendTokensBesideTrustedIssuers(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	for _, open := range []bool{false, true} {
		name := "trusted issuers"
		if open {
			name = "open"
		}
		t.Run(name, func(t *testing.T) {
			b := newKeyBackend(t)
			var issuers []smart.Issuer
			if !open {
				issuers = []smart.Issuer{{URL: idp.Issuer()}}
			}
			var mu sync.Mutex
			var seen []string
			e := newEnvMW(t, issuers, func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if id, ok := smart.BackendClient(r.Context()); ok {
						mu.Lock()
						seen = append(seen, id)
						mu.Unlock()
					}
					next.ServeHTTP(w, r)
				})
			}, func(c *smart.Config) { c.Backend = b })
			e.load()
			if e.guard.Open() != open {
				t.Fatalf("Open() = %v", e.guard.Open())
			}
			obs := b.mint(t, "payer-b", "system/Observation.rs")
			steps := []struct {
				method, path, token string
				status              int
			}{
				{"GET", "/Observation/o2", obs, 200},
				{"GET", "/Observation", obs, 200},
				{"GET", "/Patient/p1", obs, 403},
				{"POST", "/Task", obs, 403},
				{"GET", "/Observation/o1", b.mint(t, "payer-b", "") + "x", 401}, // signature broken
				{"GET", "/Observation/o1", signWith(t, b.issuer, e.base), 401},  // our iss, another key
			}
			for _, s := range steps {
				body := ""
				if s.method == "POST" {
					body = task("p1")
				}
				if a := e.do(s.method, s.path, s.token, body); a.status != s.status {
					t.Errorf("%s %s: %d, want %d: %s", s.method, s.path, a.status, s.status, a.body)
				}
			}
			mu.Lock()
			named := slices.Contains(seen, "payer-b")
			mu.Unlock()
			if !named {
				t.Errorf("BackendClient did not name the client: %v", seen)
			}
			b.mu.Lock()
			b.revoked["payer-b"] = true
			b.mu.Unlock()
			if a := e.do("GET", "/Observation/o1", obs, ""); a.status != 401 || !strings.Contains(a.header.Get("WWW-Authenticate"), "invalid_token") {
				t.Errorf("token of a revoked client: %d %s", a.status, a.header)
			}
			// Without a token: open stays open, guarded stays guarded.
			want := 401
			if open {
				want = 200
			}
			if a := e.do("GET", "/Patient/p1", "", ""); a.status != want {
				t.Errorf("no token: %d, want %d", a.status, want)
			}
			a := e.do("GET", smart.WellKnownPath(), "", "")
			if a.status != 200 || a.json["token_endpoint"] != "https://payer-a.example/auth/token" ||
				!slices.Equal(toStrings(a.json["token_endpoint_auth_methods_supported"]), []string{"private_key_jwt"}) ||
				!slices.Contains(toStrings(a.json["grant_types_supported"]), "client_credentials") ||
				!slices.Equal(toStrings(a.json["token_endpoint_auth_signing_alg_values_supported"]), []string{"RS384", "ES384"}) ||
				!slices.Contains(toStrings(a.json["capabilities"]), "client-confidential-asymmetric") {
				t.Errorf("smart-configuration: %d %s", a.status, a.body)
			}
			cs := e.do("GET", "/metadata", "", "")
			desc := cs.json["rest"].([]any)[0].(map[string]any)["security"].(map[string]any)["description"].(string)
			if open != strings.Contains(desc, "OPEN SERVER") || !strings.Contains(string(cs.body), "https://payer-a.example/auth/token") {
				t.Errorf("security section: %s", desc)
			}
			if logs := e.logs.String(); open != strings.Contains(logs, "OPEN") {
				t.Errorf("log: %s", logs)
			}
		})
	}
}
