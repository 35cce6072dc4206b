package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// clock is a settable clock for rotation tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	regOnce.Do(func() { registry = search.NewRegistry(spec.R4()) })
	path := storetest.DSN(t)
	db, err := store.OpenDB(context.Background(), path, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	return st, path
}

func kids(set jose.JSONWebKeySet) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

// TestKeysRotateAndStayPublished: for both algorithms, a key signs for
// its rotation period, then a new one takes over; the old one stays
// published until what it signed has expired, and what it signed verifies
// until then; published keys are public only; the private parts in the
// database are sealed with the secret key and open with no other.
func TestKeysRotateAndStayPublished(t *testing.T) {
	t.Parallel()
	for _, alg := range auth.SigningAlgs {
		t.Run(string(alg), func(t *testing.T) {
			t.Parallel()
			st, _ := openStore(t)
			c := &clock{t: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
			cipher, _ := secrets.NewCipher(secretKey)
			keys, err := auth.NewKeys(st, auth.KeysConfig{Bucket: "test_keys", Alg: alg, RotateEvery: time.Hour, Retain: 10 * time.Minute, Cipher: cipher, Now: c.now, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			first, err := keys.Sign(ctx, "JWT", []byte(`{"n":1}`))
			if err != nil {
				t.Fatal(err)
			}
			verify := func(jws string) bool {
				t.Helper()
				parsed, err := jose.ParseSigned(jws, auth.SigningAlgs)
				if err != nil {
					t.Fatal(err)
				}
				if parsed.Signatures[0].Header.Algorithm != string(alg) {
					t.Errorf("signed with %s", parsed.Signatures[0].Header.Algorithm)
				}
				k, ok, err := keys.PublicKey(ctx, parsed.Signatures[0].Header.KeyID)
				if err != nil || !ok {
					return false
				}
				_, err = parsed.Verify(k)
				return err == nil
			}
			set, _ := keys.JWKS(ctx)
			if len(set.Keys) != 1 || !verify(first) {
				t.Fatalf("first key: %v", kids(set))
			}
			for _, k := range set.Keys {
				if !k.IsPublic() {
					t.Errorf("a published key is private: %s", k.KeyID)
				}
			}
			c.add(30 * time.Minute)
			again, _ := keys.Sign(ctx, "JWT", []byte(`{"n":2}`))
			if set2, _ := keys.JWKS(ctx); len(set2.Keys) != 1 || kidOf(t, again) != kidOf(t, first) {
				t.Errorf("rotated before its time: %v", kids(set2))
			}
			c.add(31 * time.Minute) // past the hour
			second, _ := keys.Sign(ctx, "JWT", []byte(`{"n":3}`))
			set, _ = keys.JWKS(ctx)
			if kidOf(t, second) == kidOf(t, first) || len(set.Keys) != 2 || set.Keys[0].KeyID != kidOf(t, second) {
				t.Fatalf("after rotation: %v", kids(set))
			}
			if !verify(first) || !verify(second) {
				t.Error("a token of the old key no longer verifies within the retention")
			}
			c.add(11 * time.Minute) // past the retention of the first
			set, _ = keys.JWKS(ctx)
			if len(set.Keys) != 1 || set.Keys[0].KeyID != kidOf(t, second) || verify(first) {
				t.Errorf("after retention: %v, first verifies: %v", kids(set), verify(first))
			}
			// Forced rotation: the new key signs at once, the old stays published.
			if err := keys.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
			third, _ := keys.Sign(ctx, "JWT", []byte(`{"n":4}`))
			if set, _ = keys.JWKS(ctx); kidOf(t, third) == kidOf(t, second) || len(set.Keys) != 2 || !verify(second) {
				t.Errorf("forced rotation: %v", kids(set))
			}

			// At rest: no private member in what is stored in the clear,
			// and the sealed part opens with the secret key only.
			var raw [][]byte
			_ = st.View(ctx, func(tx *store.Tx) error {
				return tx.KV("test_keys").Scan(nil, func(_, v []byte) (bool, error) { raw = append(raw, v); return true, nil })
			})
			other, _ := secrets.NewCipher(strings.Repeat("1", 64))
			for _, v := range raw {
				var rec struct {
					Public json.RawMessage `json:"public"`
					Sealed []byte          `json:"sealedPrivateKey"`
				}
				if err := json.Unmarshal(v, &rec); err != nil {
					t.Fatal(err)
				}
				var pub map[string]any
				_ = json.Unmarshal(rec.Public, &pub)
				for _, m := range []string{"d", "p", "q", "dp", "dq", "qi"} {
					if _, ok := pub[m]; ok || bytes.Contains(v, []byte(`"`+m+`":`)) {
						t.Errorf("stored key has %q in the clear", m)
					}
				}
				if _, err := cipher.Open(rec.Sealed); err != nil {
					t.Errorf("sealed key does not open with the secret key: %v", err)
				}
				if _, err := other.Open(rec.Sealed); err == nil {
					t.Error("sealed key opens with another key")
				}
			}
		})
	}
}

func kidOf(t *testing.T, jws string) string {
	t.Helper()
	p, err := jose.ParseSigned(jws, auth.SigningAlgs)
	if err != nil {
		t.Fatal(err)
	}
	return p.Signatures[0].Header.KeyID
}

// TestTwoProcessesAgreeOnTheSigningKey: two Keys on one database (as two
// processes would be) sign with the same key, and each verifies what the
// other signed after a rotation by either.
func TestTwoProcessesAgreeOnTheSigningKey(t *testing.T) {
	t.Parallel()
	st, _ := openStore(t)
	cipher, _ := secrets.NewCipher(secretKey)
	cfg := auth.KeysConfig{Bucket: "shared", Alg: jose.ES384, RotateEvery: time.Hour, Retain: time.Hour, Cipher: cipher, Logger: slog.New(slog.DiscardHandler)}
	a, _ := auth.NewKeys(st, cfg)
	b, _ := auth.NewKeys(st, cfg)
	ctx := context.Background()
	var wg sync.WaitGroup
	sigs := make([]string, 8)
	for i := range sigs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := a
			if i%2 == 1 {
				k = b
			}
			sigs[i], _ = k.Sign(ctx, "JWT", []byte(`{}`))
		}()
	}
	wg.Wait()
	for _, s := range sigs[1:] {
		if kidOf(t, s) != kidOf(t, sigs[0]) {
			t.Fatalf("two signing keys at once: %s and %s", kidOf(t, s), kidOf(t, sigs[0]))
		}
	}
	if err := a.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	s, _ := a.Sign(ctx, "JWT", []byte(`{}`))
	if _, ok, _ := b.PublicKey(ctx, kidOf(t, s)); !ok {
		t.Error("the other process does not know the new key")
	}
}

// TestJWKSURLClients: a client registered with a jwksUrl is verified
// against the set fetched there (through the outbound HTTP client, with
// Accept: application/json), cached as its Cache-Control says: with
// max-age it is not fetched again for every token; a new kid (the client
// rotated its keys) is fetched at once; with no-store it is fetched every
// time (SMART: the server SHALL NOT cache a JWKS longer than the client's
// cache-control header indicates).
func TestJWKSURLClients(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	first := authtest.NewKey(t, jose.ES384)
	published := []*authtest.Key{first}
	cacheControl := "max-age=600"
	fetches := 0
	jwks := newJWKSServer(t, func() (any, string) {
		mu.Lock()
		defer mu.Unlock()
		fetches++
		return authtest.JWKS(published...), cacheControl
	})
	c := &clock{t: time.Now()}
	e := newEnv(t, nil, func(cfg *auth.Config) { cfg.Now = c.now })
	status, out := authtest.Register(t, e.base, adminToken, map[string]any{"name": "Payer D", "jwksUrl": jwks.URL + "/jwks.json", "scopes": []any{"system/*.rs"}})
	id, _ := out["clientId"].(string)
	if status != 201 {
		t.Fatalf("register: %d %v", status, out)
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return fetches }
	published[0].Token(t, id, e.tokenURL(), "system/*.rs")
	published[0].Token(t, id, e.tokenURL(), "system/*.rs")
	if n := count(); n != 1 {
		t.Errorf("%d fetches for two tokens under max-age", n)
	}
	// The client rotates. Right after a fetch an unknown kid is not
	// fetched for (forged kids must not flood the client); a little later
	// it is, and the new key works at once.
	next := authtest.NewKey(t, jose.RS384)
	mu.Lock()
	published = append(published, next)
	mu.Unlock()
	if r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(next.Assertion(t, id, e.tokenURL()), "system/*.rs")); r.Status != 401 || count() != 1 {
		t.Errorf("unknown kid right after a fetch: %d %v, %d fetches", r.Status, r.JSON, count())
	}
	c.add(11 * time.Second)
	next.Token(t, id, e.tokenURL(), "system/*.rs")
	if n := count(); n != 2 {
		t.Errorf("%d fetches after a new kid, want 2", n)
	}
	// A key the client no longer publishes is refused once the set is
	// fetched again.
	mu.Lock()
	published = []*authtest.Key{next}
	cacheControl = "no-store"
	mu.Unlock()
	next.Token(t, id, e.tokenURL(), "system/*.rs") // still cached from before (max-age), no fetch needed
	before := count()
	// Forget the cached set by replacing the registration, as an admin does
	// when told of a change.
	if a := e.do("PUT", "/api/backend_clients/"+id, adminToken, map[string]any{"name": "Payer D", "jwksUrl": jwks.URL + "/jwks.json", "scopes": []any{"system/*.rs"}}); a.status != 200 {
		t.Fatalf("put: %d %s", a.status, a.body)
	}
	next.Token(t, id, e.tokenURL(), "system/*.rs")
	next.Token(t, id, e.tokenURL(), "system/*.rs")
	if n := count(); n != before+2 {
		t.Errorf("no-store: %d fetches for two tokens, want 2", n-before)
	}
	if r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(first.Assertion(t, id, e.tokenURL()), "system/*.rs")); r.Status != 401 {
		t.Errorf("a key no longer published: %d %v", r.Status, r.JSON)
	}
	// A jku naming the registered URL is followed; any other is refused.
	a := next.Sign(t, authtest.NewClaims(id, e.tokenURL()), map[string]any{"jku": jwks.URL + "/jwks.json"})
	if r := authtest.RequestToken(t, e.tokenURL(), authtest.Form(a, "system/*.rs")); r.Status != 200 {
		t.Errorf("jku of the registered URL: %d %v", r.Status, r.JSON)
	}
}

// newJWKSServer serves a client's JWK Set at /jwks.json, as the client
// chooses it at each request, and checks the request is what SMART
// describes (GET, Accept: application/json).
func newJWKSServer(t *testing.T, set func() (any, string)) *httptest.Server {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/jwks.json" || r.Header.Get("Accept") != "application/json" {
			t.Errorf("JWKS request: %s %s Accept %q", r.Method, r.URL.Path, r.Header.Get("Accept"))
		}
		body, cc := set()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", cc)
		_ = json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(hs.Close)
	return hs
}
