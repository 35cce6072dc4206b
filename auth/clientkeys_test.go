package auth_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// signedKID is the kid in the header of a compact JWS, after checking
// the signature with the published set.
func signedKID(t *testing.T, jws string, set jose.JSONWebKeySet) string {
	t.Helper()
	sig, err := jose.ParseSigned(jws, auth.SigningAlgs)
	if err != nil {
		t.Fatal(err)
	}
	kid := sig.Signatures[0].Header.KeyID
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("the assertion's key %s is not published: %v", kid, kids(set))
	}
	if _, err := sig.Verify(keys[0]); err != nil {
		t.Fatalf("the assertion does not verify with its published key: %v", err)
	}
	return kid
}

// TestClientKeysRotationRule: this payer's client keys rotate without
// breaking a registration at another payer that caches the JWK Set as
// long as its Cache-Control allows (SMART App Launch 2,
// client-confidential-asymmetric): a new key is published
// ClientKeySettle (twice the max-age) before it signs; meanwhile the
// previous one signs; the previous one stays published while an
// assertion it signed can be presented; on schedule the next key is made
// when the period is over, and the rule is the same.
func TestClientKeysRotationRule(t *testing.T) {
	t.Parallel()
	st, _ := openStore(t)
	cipher, _ := secrets.NewCipher(secretKey)
	clk := &clock{t: time.Date(2027, 1, 4, 9, 0, 0, 0, time.UTC)}
	ck, err := auth.NewClientKeys(st, auth.ClientKeysConfig{Cipher: cipher, Alg: jose.RS384, RotateEvery: 24 * time.Hour, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sign := func() string {
		t.Helper()
		jws, err := ck.Sign(ctx, "JWT", []byte(`{"iss":"c"}`))
		if err != nil {
			t.Fatal(err)
		}
		set, err := ck.JWKS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return signedKID(t, jws, set)
	}
	first := sign() // the only key signs at once: nobody can have cached another
	clk.add(time.Hour)
	if err := ck.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	set, _ := ck.JWKS(ctx)
	if len(set.Keys) != 2 || set.Keys[1].KeyID != first {
		t.Fatalf("after rotation: %v", kids(set))
	}
	second := set.Keys[0].KeyID
	if got := sign(); got != first {
		t.Errorf("a key published for no time signs: %s, want the previous %s", got, first)
	}
	clk.add(auth.ClientKeySettle - time.Second)
	if got := sign(); got != first {
		t.Errorf("a key published for less than %v signs", auth.ClientKeySettle)
	}
	clk.add(time.Second)
	if got := sign(); got != second {
		t.Errorf("the settled new key does not sign: %s, want %s", got, second)
	}
	set, _ = ck.JWKS(ctx)
	if len(set.Keys) != 2 {
		t.Errorf("the previous key was unpublished at once: %v", kids(set))
	}
	clk.add(2 * time.Hour)
	if set, _ = ck.JWKS(ctx); len(set.Keys) != 1 || set.Keys[0].KeyID != second {
		t.Errorf("the previous key is still published two hours later: %v", kids(set))
	}

	// On schedule: when the current key's day is over (here ten minutes
	// over: the housekeeping checks every minute) the next key is made;
	// the current one signs until the next has settled.
	clk.add(22 * time.Hour)
	if got := sign(); got != second {
		t.Errorf("the scheduled new key signed at once: %s", got)
	}
	set, _ = ck.JWKS(ctx)
	if len(set.Keys) != 2 || set.Keys[1].KeyID != second {
		t.Fatalf("scheduled rotation: %v", kids(set))
	}
	third := set.Keys[0].KeyID
	clk.add(auth.ClientKeySettle)
	if got := sign(); got != third {
		t.Errorf("the scheduled key does not sign once settled: %s, want %s", got, third)
	}
}

// TestClientJWKSServed: GET /api/jwks answers the public keys only, with
// a Cache-Control max-age the settling rule relies on.
func TestClientJWKSServed(t *testing.T) {
	t.Parallel()
	st, _ := openStore(t)
	cipher, _ := secrets.NewCipher(secretKey)
	ck, err := auth.NewClientKeys(st, auth.ClientKeysConfig{Cipher: cipher})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(ck)
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "max-age=300" || len(set.Keys) != 1 ||
		!set.Keys[0].IsPublic() || set.Keys[0].Algorithm != "ES384" || set.Keys[0].Use != "sig" || strings.Contains(string(raw), `"d"`) {
		t.Errorf("%d %v %s", resp.StatusCode, resp.Header, raw)
	}
}
