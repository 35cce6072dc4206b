package batch

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestBearerChallenge reads the error and error_description of the Bearer
// challenge (RFC 6750 section 3), among other challenges and parameters
// (RFC 9110 section 11.6.1).
func TestBearerChallenge(t *testing.T) {
	for _, c := range []struct {
		headers    []string
		code, desc string
	}{
		{[]string{`Bearer realm="p2pserver", error="invalid_token", error_description="the token has expired"`}, "invalid_token", "the token has expired"},
		{[]string{`Bearer error="insufficient_scope", scope="patient/*.read", error_description="needs \"patient/Patient.rs\", not this"`}, "insufficient_scope", `needs "patient/Patient.rs", not this`},
		{[]string{`Basic realm="x", Bearer realm="api", error=invalid_token`}, "invalid_token", ""},
		{[]string{`Basic realm="x"`, `bearer error="invalid_token", error_description="aud, iss"`}, "invalid_token", "aud, iss"},
		{[]string{`Bearer error="invalid_token", Basic realm="not bearer's", error="other"`}, "invalid_token", ""},
		{[]string{`Bearer realm="p2pserver"`}, "", ""},
		{[]string{`Bearer`}, "", ""},
		{[]string{`Negotiate abc==`}, "", ""},
		{nil, "", ""},
	} {
		got := bearerChallenge(c.headers)
		if got.code != c.code || got.description != c.desc {
			t.Errorf("%q: %+v, want %q %q", c.headers, got, c.code, c.desc)
		}
	}
}

// TestUnauthorizedNamesTheCause is the rule for a 401 from the source,
// for what a source may say that the p2pserver source of the next test
// does not: the cause comes from the challenge and the token's own exp;
// only a token whose time is up with nothing to renew it needs the member.
func TestUnauthorizedNamesTheCause(t *testing.T) {
	now := time.Now()
	jwt := func(exp time.Time) string {
		return "eyJhbGciOiJSUzI1NiJ9." + b64(fmt.Sprintf(`{"exp":%d,"aud":"https://a.example/fhir"}`, exp.Unix())) + ".c2ln"
	}
	h := func(v string) http.Header { return http.Header{"Www-Authenticate": {v}} }
	for _, c := range []struct {
		name                  string
		header                http.Header
		token                 string
		canRefresh, refreshed bool
		retry, final          bool
		says                  []string
		neverSays             string
	}{
		{"expired, said by the source, refresh token", h(`Bearer error="invalid_token", error_description="token expired"`), "opaque", true, false, true, false,
			[]string{"has expired", "token expired", "refreshing"}, ""},
		{"expired, said by the source, no refresh token", h(`Bearer error="invalid_token", error_description="token expired"`), "opaque", false, false, false, true,
			[]string{"has expired", "no refresh token", "the member must authorize again"}, ""},
		{"expired by exp, bare 401, no refresh token", h(`Bearer realm="x"`), jwt(now.Add(-time.Hour)), false, false, false, true,
			[]string{"has expired at " + now.Add(-time.Hour).UTC().Format(time.RFC3339), "the member must authorize again"}, ""},
		{"expired again after a refresh: clocks", h(`Bearer error="invalid_token", error_description="jwt expired"`), jwt(now.Add(time.Hour)), true, true, false, false,
			[]string{"clocks", "need not authorize again"}, ""},
		{"audience", h(`Bearer error="invalid_token", error_description="wrong aud"`), jwt(now.Add(time.Hour)), true, false, false, false,
			[]string{"meant for another server", "aud https://a.example/fhir", "fhirEndpoint"}, "has expired"},
		{"insufficient_scope on 401", h(`Bearer error="insufficient_scope", error_description="needs patient/*.read"`), jwt(now.Add(time.Hour)), true, false, false, false,
			[]string{"does not cover", "needs patient/*.read"}, "has expired"},
		{"invalid, opaque, no refresh token", h(`Bearer error="invalid_token", error_description="unknown token"`), "opaque", false, false, false, false,
			[]string{"unknown token", "opaque token", "no refresh token"}, "has expired"},
		{"invalid, refresh token: refresh", h(`Bearer error="invalid_token", error_description="signature"`), jwt(now.Add(time.Hour)), true, false, true, false,
			[]string{"signature", "refreshing"}, "has expired"},
		{"bare 401 after a refresh", h(`Bearer realm="x"`), jwt(now.Add(time.Hour)), true, true, false, false,
			[]string{"without saying why", "has not expired", "freshly refreshed"}, "has expired"},
		// RFC 6750 section 3.1's own wording for invalid_token lists causes
		// as alternatives: it does not say the token expired, and the
		// token's exp (an hour ahead) says it did not; the member's request
		// is not ended for it.
		{"RFC 6750's invalid_token text, token not expired, no refresh token", h(`Bearer error="invalid_token", error_description="The access token provided is expired, revoked, malformed, or invalid for other reasons."`),
			jwt(now.Add(time.Hour)), false, false, false, false,
			[]string{"expired, revoked, malformed", "has not expired", "no refresh token"}, "has expired"},
		{"RFC 6750's invalid_token text, token expired by exp, no refresh token", h(`Bearer error="invalid_token", error_description="The access token provided is expired, revoked, malformed, or invalid for other reasons."`),
			jwt(now.Add(-time.Hour)), false, false, false, true,
			[]string{"has expired at", "the member must authorize again"}, ""},
		{"RFC 6750's invalid_token text, opaque token, no refresh token", h(`Bearer error="invalid_token", error_description="The access token provided is expired, revoked, malformed, or invalid for other reasons."`),
			"opaque", false, false, false, false,
			[]string{"expired, revoked, malformed", "opaque token"}, "has expired"},
		{"a description that denies expiry", h(`Bearer error="invalid_token", error_description="token not expired; bad signature"`), jwt(now.Add(time.Hour)), false, false, false, false,
			[]string{"bad signature", "has not expired"}, "has expired"},
		{"an encrypted token (JWE), no refresh token", h(`Bearer error="invalid_token", error_description="cannot decrypt"`),
			b64(`{"alg":"RSA-OAEP","enc":"A256GCM"}`) + ".a2V5.aXY.Y2lwaGVy.dGFn", false, false, false, false,
			[]string{"cannot decrypt", "encrypted JWT (JWE)"}, "opaque"},
		{"exp with a fraction, expired, bare 401, no refresh token", h(`Bearer realm="x"`),
			"eyJhbGciOiJSUzI1NiJ9." + b64(fmt.Sprintf(`{"exp":%d.5}`, now.Add(-time.Hour).Unix())) + ".c2ln", false, false, false, true,
			[]string{"has expired at " + now.Add(-time.Hour).UTC().Format(time.RFC3339), "the member must authorize again"}, ""},
		{"claims padded with =, expired, bare 401, no refresh token", h(`Bearer realm="x"`),
			"eyJhbGciOiJSUzI1NiJ9." + base64.URLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"exp": %d}`, now.Add(-time.Hour).Unix()))) + ".c2ln", false, false, false, true,
			[]string{"has expired at", "the member must authorize again"}, ""},
		{"quotes, non-ASCII and control characters in the description", h(`Bearer error="invalid_token", error_description="jeton \"inconnu\" — signature non vérifiée` + "\x01" + `"`),
			jwt(now.Add(time.Hour)), false, false, false, false,
			[]string{`jeton "inconnu" — signature non vérifiée`}, "\x01"},
	} {
		ff := unauthorized(c.header, c.token, "https://a.example/fhir/Patient/1", c.canRefresh, c.refreshed, now)
		if ff.retry != c.retry || ff.final != c.final {
			t.Errorf("%s: retry %v final %v, want %v %v (%s)", c.name, ff.retry, ff.final, c.retry, c.final, ff.reason)
		}
		for _, s := range c.says {
			if !strings.Contains(ff.reason, s) {
				t.Errorf("%s: %q does not say %q", c.name, ff.reason, s)
			}
		}
		if c.neverSays != "" && strings.Contains(ff.reason, c.neverSays) {
			t.Errorf("%s: %q says %q", c.name, ff.reason, c.neverSays)
		}
	}
}

// TestSourceRefusalsNameTheCause runs jobs whose member token a second
// p2pserver (the source payer, trusting the zitadel-based provider)
// refuses for different reasons. Each failure reason names the real cause
// from the source's WWW-Authenticate challenge (RFC 6750 section 3) and
// the token's own exp, and says whether the member must authorize again;
// only the causes the member alone can remove end the member's add-payer
// request (the Task fails), the others leave it open.
func TestSourceRefusalsNameTheCause(t *testing.T) {
	stranger := oidctest.New(t)
	stranger.AddClient(clientID, clientSecret)
	for _, c := range []struct {
		name   string
		tokens func(x *exchange) (string, string)
		final  bool
		says   []string
	}{
		{"expired JWT without a refresh token", func(x *exchange) (string, string) {
			a, _ := x.token(t, oidctest.Grant{AccessTokenLifetime: -time.Minute})
			return a, ""
		}, true, []string{"has expired", "no refresh token", "must authorize again"}},
		{"refresh token revoked", func(x *exchange) (string, string) {
			a, r := x.token(t, oidctest.Grant{AccessTokenLifetime: -time.Minute})
			x.idp.RevokeRefreshToken(r)
			return a, r
		}, true, []string{"invalid_grant", "must authorize again"}},
		{"wrong audience, with a refresh token", func(x *exchange) (string, string) {
			tok, err := x.idp.MintFor([]string{"https://another-payer.example/fhir"}, oidctest.Grant{ClientID: clientID, Patient: x.patient})
			if err != nil {
				t.Fatal(err)
			}
			return tok.AccessToken, tok.RefreshToken
		}, false, []string{"meant for another server", "not meant for this server", "aud https://another-payer.example/fhir", "must authorize again for the right audience"}},
		{"wrong audience, without a refresh token", func(x *exchange) (string, string) {
			tok, err := x.idp.MintFor([]string{"https://another-payer.example/fhir"}, oidctest.Grant{ClientID: clientID, Patient: x.patient})
			if err != nil {
				t.Fatal(err)
			}
			return tok.AccessToken, ""
		}, false, []string{"meant for another server", "aud https://another-payer.example/fhir"}},
		{"opaque token", func(x *exchange) (string, string) {
			return "opaque-0123456789abcdef", ""
		}, false, []string{"invalid_token", "not a JWT signed", "opaque token", "no refresh token"}},
		{"token of an issuer the source does not trust", func(x *exchange) (string, string) {
			tok, err := stranger.MintFor([]string{x.src.URL}, oidctest.Grant{ClientID: clientID, Patient: x.patient})
			if err != nil {
				t.Fatal(err)
			}
			return tok.AccessToken, ""
		}, false, []string{"are not accepted by this server", "has not expired"}},
		{"scopes that do not cover the request", func(x *exchange) (string, string) {
			return x.token(t, oidctest.Grant{Scopes: []string{"openid", "offline_access", "patient/Observation.read"}})
		}, false, []string{"403 insufficient_scope", "does not cover", "must authorize again"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := newExchange(t, Config{MaxRetries: 1, RetryBase: time.Millisecond})
			access, refresh := c.tokens(x)
			id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(100), x.patient, "member-1", "task-1"))
			job := x.tg.waitEnd(x.pid, id)
			if job.BatchStatus != Failed || job.FinalFailure != c.final {
				t.Fatalf("job %s, final %v, want FAILED, final %v: %s", job.BatchStatus, job.FinalFailure, c.final, job.FailureReason)
			}
			for _, s := range c.says {
				if !strings.Contains(job.FailureReason, s) {
					t.Errorf("reason %q does not say %q", job.FailureReason, s)
				}
			}
			if !strings.Contains(c.name, "expired") && strings.Contains(job.FailureReason, "has expired") {
				t.Errorf("reason %q blames an expiry", job.FailureReason)
			}
			task := x.task(t)
			want := "in-progress"
			if c.final {
				want = "failed"
			}
			if task["status"] != want || !strings.Contains(fmt.Sprint(task["output"]), "FAILED") {
				t.Errorf("Task %v (want %s), output %v", task["status"], want, task["output"])
			}
			if c.final && !strings.Contains(fmt.Sprint(task["statusReason"]), "authorize again") {
				t.Errorf("statusReason %v", task["statusReason"])
			}
		})
	}
}

// blockPaths answers 404 for requests whose path ends with one of paths,
// as an authorization server that publishes no such document, and sends
// every other request on.
type blockPaths struct {
	next  http.RoundTripper
	paths []string
}

func (b blockPaths) RoundTrip(req *http.Request) (*http.Response, error) {
	for _, p := range b.paths {
		if strings.HasSuffix(req.URL.Path, p) {
			return &http.Response{StatusCode: http.StatusNotFound, Status: "404 Not Found", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{"Content-Type": {"text/plain"}}, Body: io.NopCloser(strings.NewReader("not found")), Request: req}, nil
		}
	}
	return b.next.RoundTrip(req)
}

// TestDefinitionWithoutTokenEndpoint: a definition needs tokenEndpoint only
// when it cannot be discovered. A job fetches with the member's valid
// access token without looking for the token endpoint at all; when a
// refresh is needed, the endpoint comes from the issuer's OpenID discovery
// or else from the source's SMART configuration
// (<fhirEndpoint>/.well-known/smart-configuration, SMART App Launch 2.x);
// when neither says, the job fails saying to set tokenEndpoint, and the
// member's request stays open.
func TestDefinitionWithoutTokenEndpoint(t *testing.T) {
	const openid, smartConfig = "/.well-known/openid-configuration", "/.well-known/smart-configuration"
	for _, c := range []struct {
		name      string
		blocked   []string
		expired   bool
		status    Status
		refreshes int
		says      string
	}{
		{"valid token, nothing to discover", []string{openid, smartConfig}, false, Completed, 0, ""},
		{"expired token, the issuer's discovery", nil, true, Completed, 1, ""},
		{"expired token, the source's SMART configuration", []string{openid}, true, Completed, 1, ""},
		{"expired token, neither", []string{openid, smartConfig}, true, Failed, 0, "set tokenEndpoint in the OIDC server definition"},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := newExchange(t, Config{MaxRetries: 1, RetryBase: time.Millisecond,
				Transport: blockPaths{next: http.DefaultTransport, paths: c.blocked}})
			if _, err := x.tg.repo.Update(context.Background(), x.pid, func(s *oidcservers.Server) error {
				s.TokenEndpoint, s.AuthWellKnown = "", ""
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			g := oidctest.Grant{}
			if c.expired {
				g.AccessTokenLifetime = -time.Minute
			}
			access, refresh := x.token(t, g)
			id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(100), x.patient, "member-1", "task-1"))
			job := x.tg.waitEnd(x.pid, id)
			if job.BatchStatus != c.status || job.Progress.TokenRefreshes != c.refreshes || !strings.Contains(job.FailureReason, c.says) {
				t.Fatalf("job %s after %d refreshes: %q; want %s after %d", job.BatchStatus, job.Progress.TokenRefreshes, job.FailureReason, c.status, c.refreshes)
			}
			if c.status == Failed {
				if task := x.task(t); task["status"] != "in-progress" || job.FinalFailure {
					t.Errorf("a definition's gap ended the member's request: Task %v", task["status"])
				}
			}
		})
	}
}

// TestFailedJobLeavesTheRequestOpen: a job that fails for a cause on the
// payers' side (here the definition points at the wrong FHIR server) does
// not use up the member's request: the Task stays in progress, a new job
// for the same Task completes it once the definition is fixed, and the
// Task's output keeps every attempt with its outcome.
func TestFailedJobLeavesTheRequestOpen(t *testing.T) {
	x := newExchange(t, Config{MaxRetries: 1, RetryBase: time.Millisecond})
	right := x.src.URL
	if _, err := x.tg.repo.Update(context.Background(), x.pid, func(s *oidcservers.Server) error {
		s.FHIREndpoint = right + "/wrong-base"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	access, refresh := x.token(t, oidctest.Grant{})
	first := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(100), x.patient, "member-1", "task-1"))
	job := x.tg.waitEnd(x.pid, first)
	if job.BatchStatus != Failed || job.FinalFailure {
		t.Fatalf("first job %s (final %v): %s", job.BatchStatus, job.FinalFailure, job.FailureReason)
	}
	task := x.task(t)
	if task["status"] != "in-progress" || task["statusReason"] != nil {
		t.Fatalf("after a payer-side failure the Task is %v (%v)", task["status"], task["statusReason"])
	}
	if _, err := x.tg.repo.Update(context.Background(), x.pid, func(s *oidcservers.Server) error {
		s.FHIREndpoint = right
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	second := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(100), x.patient, "member-1", "task-1"))
	if job := x.tg.waitEnd(x.pid, second); job.BatchStatus != Completed {
		t.Fatalf("second job %s: %s", job.BatchStatus, job.FailureReason)
	}
	task = x.task(t)
	if task["status"] != "completed" {
		t.Fatalf("Task %v", task["status"])
	}
	var lines []string
	for _, o := range task["output"].([]any) {
		om := o.(map[string]any)
		if hasCoding(om["type"], AttemptSystem, AttemptCode) {
			lines = append(lines, om["valueString"].(string))
		}
	}
	if len(lines) != 2 || !strings.HasPrefix(lines[0], fmt.Sprintf("batch job %d (/api/oidc_servers/%d/batch_job/%d): FAILED", first, x.pid, first)) ||
		!strings.Contains(lines[0], job.FailureReason) ||
		!strings.HasPrefix(lines[1], fmt.Sprintf("batch job %d (/api/oidc_servers/%d/batch_job/%d): COMPLETED", second, x.pid, second)) {
		t.Errorf("the Task's history of attempts: %q", lines)
	}
	// A finished request takes no more jobs.
	var e apiError
	if st, _ := x.tg.call(http.MethodPost, fmt.Sprintf("/api/oidc_servers/%d/batch_job", x.pid), backOfficeToken,
		jobBody(access, refresh, x.everything(100), x.patient, "member-1", "task-1"), &e); st != http.StatusBadRequest || e.Error.Fields["taskId"] == "" {
		t.Errorf("a job for a completed Task: %d %+v", st, e)
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
