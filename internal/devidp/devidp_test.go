package devidp

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

const (
	redirect = "http://127.0.0.1:9/portal/callback"
	fhirBase = "http://127.0.0.1:8081/fhir"
)

func start(t *testing.T) *Provider {
	t.Helper()
	p, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if err := p.AddClient(Client{ID: "payer-b", Secret: "payer-b-secret", RedirectURIs: []string{redirect}}); err != nil {
		t.Fatal(err)
	}
	if err := p.AddMember(Member{Username: "angelic", Password: "angelic-pw", Patient: "pat-1", Name: "Angelic Mueller"}); err != nil {
		t.Fatal(err)
	}
	return p
}

// noRedirects is a browser that shows each redirect instead of following it.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func challengeOf(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func authorizeURL(p *Provider, change func(url.Values)) string {
	q := url.Values{
		"response_type": {"code"}, "client_id": {"payer-b"}, "redirect_uri": {redirect},
		"scope": {"openid offline_access launch/patient patient/*.read"}, "state": {"st-1"},
		"aud": {fhirBase}, "code_challenge": {challengeOf("verifier-0123456789-0123456789-0123456789-abc")},
		"code_challenge_method": {"S256"},
	}
	if change != nil {
		change(q)
	}
	return p.AuthorizationEndpoint() + "?" + q.Encode()
}

func get(t *testing.T, u string) *http.Response {
	t.Helper()
	resp, err := noRedirects.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

var formID = regexp.MustCompile(`name="authRequestID" value="([^"]+)"`)

// login drives the login page as a browser does and returns the URL the
// member is finally sent to (the client's redirect URI with code or error).
func login(t *testing.T, p *Provider, authorize, username, password string) (final string, loginStatus int) {
	t.Helper()
	resp := get(t, authorize)
	loc, _ := resp.Location()
	if resp.StatusCode != http.StatusFound || loc == nil {
		t.Fatalf("authorize: %d %v", resp.StatusCode, loc)
	}
	if !strings.HasPrefix(loc.String(), p.Issuer()+"/login?") {
		return loc.String(), 0 // refused: sent back to the client
	}
	page, err := noRedirects.Get(loc.String())
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(page.Body)
	page.Body.Close()
	m := formID.FindStringSubmatch(string(html))
	if page.StatusCode != 200 || m == nil {
		t.Fatalf("login page: %d %s", page.StatusCode, html)
	}
	resp, err = noRedirects.PostForm(p.Issuer()+"/login", url.Values{"authRequestID": {m[1]}, "username": {username}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return "", resp.StatusCode
	}
	cb, _ := resp.Location()
	resp = get(t, cb.String())
	final = resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("callback: %d", resp.StatusCode)
	}
	return final, http.StatusFound
}

type tokenAnswer struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	IDToken      string `json:"id_token"`
	Patient      string `json:"patient"`
	Scope        string `json:"scope"`
	Error        string `json:"error"`
}

func token(t *testing.T, p *Provider, form url.Values) (int, tokenAnswer) {
	t.Helper()
	req, _ := http.NewRequest("POST", p.TokenEndpoint(), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("payer-b", "payer-b-secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a tokenAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, a
}

// TestAuthorizationCodeFlow: a member logs in at the login page; the
// client redeems the code with its PKCE verifier (RFC 7636 §4.6) and gets
// a JWT access token for the FHIR server named by aud, carrying the
// member's patient claim, with patient in the token response (SMART App
// Launch 2.0, "Response to access token request"); the refresh token
// keeps both; the code works once.
func TestAuthorizationCodeFlow(t *testing.T) {
	t.Parallel()
	p := start(t)
	ctx := context.Background()

	if _, st := login(t, p, authorizeURL(p, nil), "angelic", "wrong"); st != http.StatusUnauthorized {
		t.Errorf("wrong password: %d, want 401", st)
	}
	final, st := login(t, p, authorizeURL(p, nil), "angelic", "angelic-pw")
	if st != http.StatusFound {
		t.Fatalf("login: %d", st)
	}
	u, _ := url.Parse(final)
	code := u.Query().Get("code")
	if !strings.HasPrefix(final, redirect+"?") || code == "" || u.Query().Get("state") != "st-1" {
		t.Fatalf("sent to %s", final)
	}
	exchange := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
		"code_verifier": {"verifier-0123456789-0123456789-0123456789-abc"}}
	wrong := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect},
		"code_verifier": {"another-verifier-0123456789-0123456789-012345"}}
	if st, a := token(t, p, wrong); st != 400 || a.Error != "invalid_grant" {
		t.Errorf("wrong PKCE verifier: %d %+v", st, a)
	}
	st, tok := token(t, p, exchange)
	if st != 200 || tok.AccessToken == "" || tok.RefreshToken == "" || tok.IDToken == "" {
		t.Fatalf("code exchange: %d %+v", st, tok)
	}
	if tok.Patient != "pat-1" {
		t.Errorf("token response patient %q, want pat-1", tok.Patient)
	}
	prov, err := oidc.NewProvider(ctx, p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	claimsOf := func(raw string) map[string]any {
		t.Helper()
		at, err := prov.Verifier(&oidc.Config{ClientID: fhirBase}).Verify(ctx, raw)
		if err != nil {
			t.Fatalf("access token is not for %s: %v", fhirBase, err)
		}
		var c map[string]any
		_ = at.Claims(&c)
		return c
	}
	c := claimsOf(tok.AccessToken)
	if c["patient"] != "pat-1" || c["sub"] != "angelic" || !strings.Contains(c["scope"].(string), "patient/*.read") {
		t.Errorf("access token claims %v", c)
	}
	st, ref := token(t, p, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}})
	if st != 200 || ref.Patient != "pat-1" {
		t.Fatalf("refresh: %d %+v", st, ref)
	}
	if c := claimsOf(ref.AccessToken); c["patient"] != "pat-1" || c["sub"] != "angelic" {
		t.Errorf("refreshed access token claims %v", c)
	}
	if st, a := token(t, p, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.RefreshToken}}); st != 400 || a.Error != "invalid_grant" {
		t.Errorf("rotated refresh token reused: %d %+v", st, a)
	}

	// RFC 6749 section 4.1.2: a code used twice is refused, and the
	// tokens issued for it are revoked (whoever holds the code a second
	// time may have stolen it; RFC 9700 section 4.5): the refresh token
	// the code's grant has rotated to stops working too.
	if st, a := token(t, p, exchange); st != 400 || a.Error != "invalid_grant" {
		t.Errorf("the code redeemed twice: %d %+v", st, a)
	}
	if st, a := token(t, p, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {ref.RefreshToken}}); st != 400 || a.Error != "invalid_grant" {
		t.Errorf("refresh token of a code redeemed twice: %d %+v, want revoked", st, a)
	}
	// Another member authorization is not touched by it.
	final, _ = login(t, p, authorizeURL(p, nil), "angelic", "angelic-pw")
	u, _ = url.Parse(final)
	exchange.Set("code", u.Query().Get("code"))
	st, other := token(t, p, exchange)
	if st != 200 {
		t.Fatalf("second authorization: %d %+v", st, other)
	}
	if st, a := token(t, p, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {other.RefreshToken}}); st != 200 {
		t.Errorf("another authorization's refresh token: %d %+v", st, a)
	}
}

// TestAuthorizationRequestsRefused: what the provider refuses, and how
// (RFC 6749 §4.1.2.1: errors about the redirect URI or client are shown
// to the member, the others are sent back to the client's redirect URI).
func TestAuthorizationRequestsRefused(t *testing.T) {
	t.Parallel()
	p := start(t)
	for _, tc := range []struct {
		name   string
		change func(url.Values)
		error  string // sent back to the client; "" means answered 4xx here
	}{
		{"no PKCE (SMART App Launch 2.0 requires S256)", func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") }, "invalid_request"},
		{"PKCE plain", func(q url.Values) { q.Set("code_challenge_method", "plain"); q.Set("code_challenge", "x") }, "invalid_request"},
		{"prompt=none without a session", func(q url.Values) { q.Set("prompt", "none") }, "login_required"},
		{"unsupported response type", func(q url.Values) { q.Set("response_type", "token") }, "unauthorized_client"},
		{"unregistered redirect URI", func(q url.Values) { q.Set("redirect_uri", "http://127.0.0.1:9/elsewhere") }, ""},
		{"unknown client", func(q url.Values) { q.Set("client_id", "nobody") }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := get(t, authorizeURL(p, tc.change))
			loc := resp.Header.Get("Location")
			if tc.error == "" {
				if resp.StatusCode < 400 || strings.HasPrefix(loc, "http://127.0.0.1:9/") {
					t.Errorf("answered %d, Location %q: the member must not be sent to an unverified redirect URI", resp.StatusCode, loc)
				}
				return
			}
			u, _ := url.Parse(loc)
			if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, redirect) || u.Query().Get("error") != tc.error {
				t.Errorf("answered %d, Location %q, want error=%s at the redirect URI", resp.StatusCode, loc, tc.error)
			}
		})
	}
	// A login for an unknown request shows an error, not a form.
	resp, err := http.Get(p.Issuer() + "/login?authRequestID=nope")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || strings.Contains(string(body), "<form") {
		t.Errorf("login for an unknown request: %d %s", resp.StatusCode, body)
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "example.org:80"} {
		if p, err := Start(Options{Addr: addr}); err == nil {
			p.Close()
			t.Errorf("Start(%q) listened", addr)
		}
	}
	p, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, c := range []Client{{ID: ""}, {ID: "x", RedirectURIs: []string{"/relative"}}, {ID: "x", RedirectURIs: []string{"http://h/cb#frag"}}} {
		if p.AddClient(c) == nil {
			t.Errorf("AddClient(%+v) accepted", c)
		}
	}
	if p.AddMember(Member{Username: "a", Password: "b"}) == nil {
		t.Error("a member without a patient was accepted")
	}
}

// TestCommandFlags: the command's arguments are checked before anything
// listens, each mistake named; good ones serve until the context ends.
func TestCommandFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{},                                     // no member
		{"-member", "angelic:pw"},              // no patient
		{"-member", "a:b:c", "stray"},          // a stray argument
		{"-member", "a:b:c", "-client", "x:y"}, // no redirect URI
		{"-member", "a:b:c", "-client", "x:y:/relative"},
		{"-member", "a:b:c", "-addr", "0.0.0.0:0"},
		{"-member", "a:b:c", "-access-token-lifetime", "-1m"},
	} {
		var out strings.Builder
		err := Command(context.Background(), args, &out)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("Command(%q) = %v, want a usage error", args, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out safeBuffer
	go func() {
		done <- Command(ctx, []string{"-addr", "127.0.0.1:0", "-member", "angelic:pw:pat-1:Angelic Mueller",
			"-client", "portal::http://127.0.0.1:9/cb"}, &out)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "member angelic, patient pat-1") {
		if time.Now().After(deadline) {
			t.Fatalf("no start-up summary: %q", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "client portal (public, PKCE only)") || strings.Contains(out.String(), ":pw") {
		t.Errorf("summary %q", out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Command after its context ended: %v", err)
	}
}

type safeBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
