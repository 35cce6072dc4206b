package bulk

import (
	"net/http"
	"testing"
	"time"
)

// TestClientPollWait: the wait between status polls is the answer's
// Retry-After (Bulk Data Access STU 2, "Bulk Data Status Request": seconds
// or an HTTP date), bounded by MinPoll and MaxPoll; MinPoll when the
// answer names none or something unreadable.
func TestClientPollWait(t *testing.T) {
	t.Parallel()
	c := &Client{MinPoll: 2 * time.Second, MaxPoll: time.Minute}
	future := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	cases := []struct {
		header   string
		min, max time.Duration
	}{
		{"", 2 * time.Second, 2 * time.Second},
		{"0", 2 * time.Second, 2 * time.Second},
		{"10", 10 * time.Second, 10 * time.Second},
		{" 10 ", 10 * time.Second, 10 * time.Second},
		{"3600", time.Minute, time.Minute},
		{"-5", 2 * time.Second, 2 * time.Second},
		{"soon", 2 * time.Second, 2 * time.Second},
		{future, 25 * time.Second, 30 * time.Second},
		{past, 2 * time.Second, 2 * time.Second},
	}
	for _, tc := range cases {
		if got := c.pollWait(retryAfter(tc.header)); got < tc.min || got > tc.max {
			t.Errorf("Retry-After %q: wait %v, want within [%v, %v]", tc.header, got, tc.min, tc.max)
		}
	}
	if got := (&Client{}).pollWait(time.Hour); got != DefaultMaxPoll {
		t.Errorf("default bound: %v", got)
	}
}

// TestClientResolvesManifestURLs: relative URLs in a manifest or a
// Content-Location are read against the status or kick-off URL; only
// http(s) is followed.
func TestClientResolvesManifestURLs(t *testing.T) {
	t.Parallel()
	cases := []struct{ base, ref, want string }{
		{"https://a.example/fhir/bulkstatus/1", "https://b.example/f/1.ndjson", "https://b.example/f/1.ndjson"},
		{"https://a.example/fhir/bulkstatus/1", "/fhir/bulkfiles/1/x.ndjson", "https://a.example/fhir/bulkfiles/1/x.ndjson"},
		{"https://a.example/fhir/Patient/$export", "../bulkstatus/9", "https://a.example/fhir/bulkstatus/9"},
		{"https://a.example/fhir/bulkstatus/1", "file:///etc/passwd", ""},
		{"https://a.example/fhir/bulkstatus/1", "javascript:alert(1)", ""},
	}
	for _, tc := range cases {
		got, err := resolve(tc.base, tc.ref)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s against %s: %s, want refused", tc.ref, tc.base, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s against %s: %s %v, want %s", tc.ref, tc.base, got, err, tc.want)
		}
	}
}

// TestRedact: what another payer's answer quotes of a request's
// credentials is not shown (RFC 6750 bearer tokens, RFC 7617 Basic
// credentials, RFC 7523 client assertions, RFC 6749 form fields), and
// the rest of its text is.
func TestRedact(t *testing.T) {
	for _, c := range []struct {
		name, in, token, want string
	}{
		{"an Authorization header", "refused Authorization: Bearer abc.DEF-123_x~y+z/w== here", "", "refused Authorization: [redacted] here"},
		{"Basic credentials", "bad basic dXNlcjpwYXNz", "", "bad [redacted]"},
		{"a bare JWT", "token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl expired", "", "token [redacted] expired"},
		{"form fields", "client_secret=s3cr3t&grant_type=client_credentials&client_assertion=abc", "", "[redacted]&grant_type=client_credentials&[redacted]"},
		{"the opaque token sent", "your token 0123456789abcdef0123 is revoked", "0123456789abcdef0123", "your token [redacted] is revoked"},
		{"no credentials", "the member's consent was revoked on 2024-01-01", "0123456789abcdef0123", "the member's consent was revoked on 2024-01-01"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Redact(c.in, c.token); got != c.want {
				t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}
