package batch

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode"
)

// challenge is what a source payer says about a refused bearer token: the
// error and error_description parameters of its Bearer challenge in
// WWW-Authenticate (RFC 6750 section 3).
type challenge struct {
	code        string // invalid_token, insufficient_scope, invalid_request, or ""
	description string
}

// bearerChallenge reads the Bearer challenge among the WWW-Authenticate
// headers; several challenges may share a header (RFC 9110 section
// 11.6.1: challenges and their auth-params are comma-separated, a
// challenge starting with its scheme). It returns the zero challenge when
// there is none.
func bearerChallenge(headers []string) challenge {
	for _, h := range headers {
		inBearer := false
		var c challenge
		for _, item := range splitItems(h) {
			name, value, isParam := authParam(item)
			if !isParam {
				// "scheme", "scheme token68" or "scheme param=value".
				if inBearer {
					return c
				}
				scheme, rest, _ := strings.Cut(item, " ")
				inBearer = strings.EqualFold(scheme, "Bearer")
				if name, value, isParam = authParam(strings.TrimSpace(rest)); !isParam {
					continue
				}
			}
			if inBearer {
				switch strings.ToLower(name) {
				case "error":
					c.code = value
				case "error_description":
					c.description = value
				}
			}
		}
		if inBearer {
			return c
		}
	}
	return challenge{}
}

// splitItems splits a header at the commas outside quoted strings.
func splitItems(h string) []string {
	var out []string
	start, inQuote := 0, false
	for i := 0; i < len(h); i++ {
		switch h[i] {
		case '\\':
			if inQuote {
				i++
			}
		case '"':
			inQuote = !inQuote
		case ',':
			if !inQuote {
				out = append(out, strings.TrimSpace(h[start:i]))
				start = i + 1
			}
		}
	}
	return append(out, strings.TrimSpace(h[start:]))
}

// authParam reads "name=value" or name="quoted value"; isParam is false
// for anything else (a scheme, a token68).
func authParam(item string) (name, value string, isParam bool) {
	name, value, ok := strings.Cut(item, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.ContainsAny(name, " \t\"") || strings.HasPrefix(value, "=") {
		return "", "", false
	}
	value = strings.TrimSpace(value)
	if strings.HasPrefix(value, `"`) {
		var b strings.Builder
		for i := 1; i < len(value); i++ {
			switch c := value[i]; c {
			case '\\':
				if i+1 < len(value) {
					i++
					b.WriteByte(value[i])
				}
			case '"':
				return name, b.String(), true
			default:
				b.WriteByte(c)
			}
		}
		return name, b.String(), true
	}
	return name, value, true
}

// tokenFacts is what can be read from the member's access token without
// verifying it (the source payer does that): whether it is a JWT, and
// then its exp and aud.
type tokenFacts struct {
	jwt       bool
	encrypted bool // a JWE (RFC 7516 compact form): its claims cannot be read here
	exp       time.Time
	aud       []string
}

func readToken(tok string) tokenFacts {
	parts := strings.Split(tok, ".")
	if len(parts) == 5 {
		var h struct {
			Enc string `json:"enc"`
		}
		if raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[0], "=")); err == nil && json.Unmarshal(raw, &h) == nil && h.Enc != "" {
			return tokenFacts{encrypted: true}
		}
	}
	if len(parts) != 3 {
		return tokenFacts{}
	}
	// Some issuers pad their base64url; RFC 7515 does not, but the claims
	// read the same.
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return tokenFacts{}
	}
	var c struct {
		Exp json.Number     `json:"exp"`
		Aud json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return tokenFacts{}
	}
	f := tokenFacts{jwt: true}
	// A NumericDate may have a fraction (RFC 7519 section 2).
	if n, err := c.Exp.Float64(); err == nil && n > 0 && n < 1<<40 {
		f.exp = time.Unix(int64(n), 0)
	}
	var one string
	if json.Unmarshal(c.Aud, &one) == nil && one != "" {
		f.aud = []string{one}
	} else {
		_ = json.Unmarshal(c.Aud, &f.aud)
	}
	return f
}

// jwtExpiry reads the exp claim of a JWT access token without verifying it:
// knowing it saves a request refused 401.
func jwtExpiry(tok string) time.Time { return readToken(tok).exp }

// audienceWord finds a description that blames the token's audience.
var audienceWord = regexp.MustCompile(`(?i)\baud(ience)?\b`)

// refusalCause is why the source payer refused the member's access token, as
// far as it says (its challenge) and the token shows (exp).
type refusalCause int

const (
	refusedUnexplained refusalCause = iota // 401 without an error code
	refusedExpired                         // the token's time is up
	refusedAudience                        // the token is not meant for this source
	refusedScope                           // insufficient_scope
	refusedInvalid                         // invalid_token for another reason (signature, issuer, opaque token...)
	refusedOther                           // another error code (invalid_request...)
)

// expiredWord finds "expired" in a description, with its negation
// ("not expired", "unexpired") when there is one; orWord finds a
// description that lists causes as alternatives, such as RFC 6750's own
// "The access token provided is expired, revoked, malformed, or invalid
// for other reasons", which does not say which one it is.
var (
	expiredWord = regexp.MustCompile(`(?i)\b(not |un)?expired\b`)
	orWord      = regexp.MustCompile(`(?i)\bor\b`)
)

// saysExpired reports whether a description says that the token has
// expired, and only that.
func saysExpired(desc string) bool {
	if orWord.MatchString(desc) {
		return false
	}
	for _, m := range expiredWord.FindAllStringSubmatch(desc, -1) {
		if m[1] == "" {
			return true
		}
	}
	return false
}

func classify(ch challenge, facts tokenFacts, now time.Time) refusalCause {
	switch {
	case ch.code == "insufficient_scope":
		return refusedScope
	case audienceWord.MatchString(ch.description):
		return refusedAudience
	case saysExpired(ch.description) || (!facts.exp.IsZero() && !facts.exp.After(now)):
		return refusedExpired
	case ch.code == "invalid_token":
		return refusedInvalid
	case ch.code != "":
		return refusedOther
	}
	return refusedUnexplained
}

// said quotes what the source payer said: "401 invalid_token: the token has
// expired", clipped and on one line.
func said(status int, ch challenge) string {
	s := fmt.Sprint(status)
	if ch.code != "" {
		s += " " + clean(ch.code, 40)
	}
	if ch.description != "" {
		s += ": " + clean(ch.description, 300)
	}
	return s
}

func clean(s string, n int) string {
	return clip(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s), n)
}

// unauthorized decides what a 401 from the source payer for url means,
// from its WWW-Authenticate challenge and the token's own claims: try again
// with a refreshed token, or fail with a reason that names the cause and
// says whether the member must authorize again. Only a token whose time is
// up with nothing to renew it is final: the member alone can fix that.
func unauthorized(h http.Header, accessToken, url string, canRefresh, refreshed bool, now time.Time) *fetchFailure {
	ch := bearerChallenge(h.Values("WWW-Authenticate"))
	facts := readToken(accessToken)
	what := said(http.StatusUnauthorized, ch)
	at := ""
	if !facts.exp.IsZero() {
		at = " at " + facts.exp.UTC().Format(time.RFC3339)
	}
	refresh := func(why string) *fetchFailure {
		return &fetchFailure{retry: true, after: -1, reason: why + "; refreshing it"}
	}
	opaque := ""
	switch {
	case facts.encrypted:
		opaque = " The token is an encrypted JWT (JWE), whose expiry this server cannot read."
	case !facts.jwt:
		opaque = " The token is not a JWT (an opaque token)."
	}
	switch classify(ch, facts, now) {
	case refusedExpired:
		switch {
		case canRefresh && !refreshed:
			return refresh(fmt.Sprintf("the member's access token has expired%s (the source payer answered %s)", at, what))
		case refreshed:
			return &fetchFailure{authz: true, reason: fmt.Sprintf(
				"the source payer refused even a freshly refreshed access token as expired for %s (%s): compare the clocks of this server and of the source's authorization server. The member need not authorize again", clip(url, 300), what)}
		}
		return &fetchFailure{authz: true, final: true, reason: fmt.Sprintf(
			"the member's access token has expired%s (the source payer answered %s) and the job has no refresh token to renew it: the member must authorize again", at, what)}
	case refusedAudience:
		aud := "no aud claim"
		if len(facts.aud) > 0 {
			aud = "aud " + clip(strings.Join(facts.aud, ", "), 300)
		}
		return &fetchFailure{authz: true, reason: fmt.Sprintf(
			"the source payer refused the member's access token for %s because it is meant for another server (%s; the token has %s). The member's authorization must name the definition's fhirEndpoint as its audience (the SMART aud parameter): check the fhirEndpoint, then the member must authorize again for the right audience", clip(url, 300), what, aud)}
	case refusedScope:
		return &fetchFailure{authz: true, reason: fmt.Sprintf(
			"the member's authorization does not cover %s (the source payer answered %s): the member must authorize again with the definition's scopes, or the request must ask for less", clip(url, 300), what)}
	case refusedInvalid, refusedOther, refusedUnexplained:
		if canRefresh && !refreshed {
			return refresh(fmt.Sprintf("the source payer refused the member's access token (%s)", what))
		}
		why := fmt.Sprintf("the source payer refused the member's access token for %s (%s).%s", clip(url, 300), what, opaque)
		if ch.code == "" {
			why = fmt.Sprintf("the source payer refused the member's access token for %s (401) without saying why (no error in WWW-Authenticate).%s", clip(url, 300), opaque)
		}
		if !facts.exp.IsZero() {
			why += " The token has not expired (exp " + facts.exp.UTC().Format(time.RFC3339) + ")."
		}
		if refreshed {
			return &fetchFailure{authz: true, reason: why + " A freshly refreshed token was refused too: check that the definition's issuer is the one the source payer trusts; the member may have to authorize again"}
		}
		return &fetchFailure{authz: true, reason: why + " The job has no refresh token: start a new job with a token the source accepts (the member must authorize again unless the job was given the wrong token)"}
	}
	return nil
}

// forbidden explains a 403 from the source payer, with the Bearer
// challenge's insufficient_scope description when there is one.
func forbidden(h http.Header, status, url, detail string) *fetchFailure {
	ch := bearerChallenge(h.Values("WWW-Authenticate"))
	what := status + detail
	if ch.code != "" {
		what = said(http.StatusForbidden, ch)
	}
	return &fetchFailure{authz: true, reason: fmt.Sprintf(
		"the source payer answered %s for %s: the member's authorization does not cover it; the member must authorize again with the definition's scopes, or the request must ask for less", what, clip(url, 300))}
}
