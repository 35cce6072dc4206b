package batch

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCanonical(t *testing.T) {
	refs := func(ref string) (string, bool) {
		if ref == "Patient/1" {
			return "Patient/local1", true
		}
		return ref, false
	}
	for _, tc := range []struct{ name, in, want string }{
		{"order, id, meta and references",
			`{"status":"final", "subject":{"reference":"Patient/1"},"id":"o1","resourceType":"Observation","meta":{"versionId":"3","lastUpdated":"2024-01-01T00:00:00Z","source":"x","profile":["p"]}}`,
			`{"resourceType":"Observation","id":"L","meta":{"profile":["p"],"source":"https://src/fhir/Observation/o1"},"status":"final","subject":{"reference":"Patient/local1"}}`},
		{"no meta",
			`{"resourceType":"Patient","id":"1"}`,
			`{"resourceType":"Patient","id":"L","meta":{"source":"https://src/fhir/Observation/o1"}}`},
		{"one spelling per string",
			`{"resourceType":"Patient","text":{"div":"\u003cdiv\u003e\"a\" \/ \u00e9\u0007\u003c/div\u003e"},"name":[{"text":"é"}]}`,
			`{"resourceType":"Patient","id":"L","meta":{"source":"https://src/fhir/Observation/o1"},"text":{"div":"<div>\"a\" / é\u0007</div>"},"name":[{"text":"é"}]}`},
		{"references in arrays, extensions and contained",
			`{"resourceType":"ExplanationOfBenefit","contained":[{"resourceType":"Coverage","beneficiary":{"reference":"Patient/1"}}],"extension":[{"url":"u","valueReference":{"reference":"Patient/1"}}],"careTeam":[{"provider":{"reference":"#x"}}],"note":[{"text":"reference"}],"identifier":[{"value":"Patient/1"}]}`,
			`{"resourceType":"ExplanationOfBenefit","id":"L","meta":{"source":"https://src/fhir/Observation/o1"},"contained":[{"resourceType":"Coverage","beneficiary":{"reference":"Patient/local1"}}],"extension":[{"url":"u","valueReference":{"reference":"Patient/local1"}}],"careTeam":[{"provider":{"reference":"#x"}}],"note":[{"text":"reference"}],"identifier":[{"value":"Patient/1"}]}`},
		{"numbers and literals as written",
			`{"resourceType":"Observation","valueQuantity":{"value":1.50e2},"x":[true,false,null,-0.0]}`,
			`{"resourceType":"Observation","id":"L","meta":{"source":"https://src/fhir/Observation/o1"},"valueQuantity":{"value":1.50e2},"x":[true,false,null,-0.0]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := canonical([]byte(tc.in), "L", "https://src/fhir/Observation/o1", refs)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	for _, bad := range []string{`[1]`, `{"resourceType":"X"`, `{"a":}`, `{"id":"x"}`} {
		if _, err := canonical([]byte(bad), "L", "s", nil); err == nil {
			t.Errorf("canonical(%s) gave no error", bad)
		}
	}
}

func TestLocalIDsAreStable(t *testing.T) {
	a := localID("https://src/fhir", "Observation", "1")
	if a != localID("https://src/fhir", "Observation", "1") || !validID(a) {
		t.Fatalf("local id %q", a)
	}
	for _, other := range []string{
		localID("https://other/fhir", "Observation", "1"),
		localID("https://src/fhir", "Condition", "1"),
		localID("https://src/fhir", "Observation", "2"),
		localID("https://src/fhir", "Observation", strings.Repeat("a", 48)),
		localID("https://src/fhir", "Observation", "https://src/fhir/Observation/1"),
	} {
		if other == a {
			t.Errorf("two source identities share the local id %s", a)
		}
	}
}

// TestLocalIDsKeepTheSourceOrder: a source id that fits (a FHIR id of at
// most 47 characters) is kept after its source's prefix, so that ids the
// source made in order are stored in order; any other identity (a longer
// id, a fullUrl) is a digest. Each row also gives the digest id it had
// before (earlierID), so that what was ingested under it is found again.
func TestLocalIDsKeepTheSourceOrder(t *testing.T) {
	const base = "https://src/fhir"
	prefix := sourcePrefix(base, "Observation")
	for _, tc := range []struct {
		src      string
		prefixed bool
	}{
		{"1", true},
		{"o00001-0001", true},
		{"0192f3c4-7a1b-7c2d-8e3f-a1b2c3d4e5f6", true},
		{strings.Repeat("a", 47), true},
		{strings.Repeat("a", 48), false},
		{strings.Repeat("a", 64), false},
		{"https://elsewhere.example/fhir/Observation/1", false},
		{"urn:uuid:0192f3c4-7a1b-7c2d-8e3f-a1b2c3d4e5f6", false},
	} {
		id := localID(base, "Observation", tc.src)
		if !validID(id) {
			t.Errorf("%q: local id %q is not a FHIR id", tc.src, id)
		}
		old, hasOld := earlierID(base, "Observation", id)
		digest := digestID(base, "Observation", tc.src)
		switch {
		case tc.prefixed && id != prefix+"."+tc.src:
			t.Errorf("%q: local id %q, want it after the prefix %s", tc.src, id, prefix)
		case tc.prefixed && (!hasOld || old != digest):
			t.Errorf("%q: earlier id %q, %v; want its digest %s", tc.src, old, hasOld, digest)
		case !tc.prefixed && id != digest:
			t.Errorf("%q: local id %q, want the digest %s", tc.src, id, digest)
		case !tc.prefixed && hasOld:
			t.Errorf("%q: a digest id has an earlier id %q", tc.src, old)
		}
	}
	ids := []string{"o00001-0001", "o00001-0002", "o00002-0001"}
	for i := 1; i < len(ids); i++ {
		if a, b := localID(base, "Observation", ids[i-1]), localID(base, "Observation", ids[i]); a >= b {
			t.Errorf("local ids %s and %s are not in the source's order", a, b)
		}
	}
}

func TestRequestURLs(t *testing.T) {
	const base = "https://payer-a.example/fhir"
	for _, tc := range []struct{ req, want, why string }{
		{"Patient/1/$everything", base + "/Patient/1/$everything", ""},
		{"ExplanationOfBenefit?patient=1&_count=50", base + "/ExplanationOfBenefit?patient=1&_count=50", ""},
		{"https://payer-a.example/fhir/Patient/1", "https://payer-a.example/fhir/Patient/1", ""},
		{"https://PAYER-A.example/other/path", "https://PAYER-A.example/other/path", ""},
		{"https://payer-a.example:8443/fhir/Patient", "", "origin"},
		{"http://payer-a.example/fhir/Patient", "", "origin"},
		{"https://evil.example/fhir/Patient", "", "origin"},
		{"//evil.example/fhir/Patient", "", "no leading /"},
		{"/fhir/Patient", "", "no leading /"},
		{"Patient#x", "", "fragment"},
		{"ftp://payer-a.example/x", "", "http"},
		{"https://user@payer-a.example/fhir/Patient", "", "origin"},
	} {
		got, why := firstURL(base, tc.req)
		if got != tc.want || (tc.why == "") != (why == "") || !strings.Contains(why, tc.why) {
			t.Errorf("firstURL(%q) = %q, %q; want %q, %q", tc.req, got, why, tc.want, tc.why)
		}
	}
	page := base + "/Patient/1/$everything?_count=10"
	for _, tc := range []struct{ next, want, why string }{
		{base + "/Patient/1/$everything?_cursor=k.10", base + "/Patient/1/$everything?_cursor=k.10", ""},
		{"$everything?_cursor=k.20", base + "/Patient/1/$everything?_cursor=k.20", ""},
		{"https://payer-a.example/fhir/x#frag", "https://payer-a.example/fhir/x", ""},
		{"https://evil.example/fhir/x", "", "another origin"},
		{"http://payer-a.example/fhir/x", "", "another origin"},
		{"javascript:alert(1)", "", "not an http(s) URL"},
	} {
		got, why := checkNext(base, page, tc.next)
		if got != tc.want || (tc.why == "") != (why == "") || !strings.Contains(why, tc.why) {
			t.Errorf("checkNext(%q) = %q, %q; want %q, %q", tc.next, got, why, tc.want, tc.why)
		}
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{"a": true, "A-b.9": true, strings.Repeat("x", 64): true, strings.Repeat("x", 65): false,
		"": false, "a b": false, "a/b": false, "é": false, "a_b": false} {
		if validID(id) != want {
			t.Errorf("validID(%q) = %v", id, !want)
		}
	}
}

func TestSourceRefs(t *testing.T) {
	pp := &preparer{model: testRegistry().Model(), base: "https://src/fhir"}
	for ref, want := range map[string]string{
		"Patient/1":                             "Patient 1 ",
		"Patient/1/_history/2":                  "Patient 1 /_history/2",
		"https://src/fhir/Encounter/e.1":        "Encounter e.1 ",
		"https://other/fhir/Encounter/e":        "",
		"urn:uuid:1234":                         "",
		"#contained":                            "",
		"Patient?identifier=x":                  "",
		"Patient/1/_history":                    "",
		"Patient/1/_history/2/x":                "",
		"Gizmo/1":                               "",
		"Patient/a b":                           "",
		"Patient/1/$everything":                 "",
		"https://src/fhir/Patient/1/_history/3": "Patient 1 /_history/3",
	} {
		typ, id, suffix, ok := pp.sourceRef(ref)
		got := ""
		if ok {
			got = typ + " " + id + " " + suffix
		}
		if got != want {
			t.Errorf("sourceRef(%q) = %q, want %q", ref, got, want)
		}
	}
}

func TestBackoff(t *testing.T) {
	r := &Runner{cfg: Config{RetryBase: time.Second, MaxRetryDelay: 10 * time.Second}}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second} {
		if d := r.backoff(n, 0); d < want*3/4 || d > want*5/4 {
			t.Errorf("backoff(%d) = %s, want %s ±25%%", n, d, want)
		}
	}
	if d := r.backoff(30, 0); d != 10*time.Second {
		t.Errorf("backoff is not capped: %s", d)
	}
	if d := r.backoff(1, 7*time.Second); d != 7*time.Second {
		t.Errorf("Retry-After 7s gave %s", d)
	}
	if d := r.backoff(1, time.Hour); d != 10*time.Second {
		t.Errorf("Retry-After of an hour gave %s, want the cap", d)
	}
	for h, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "-1": 0, "soon": 0,
		time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat): 0} {
		if got := retryAfter(h); got != want {
			t.Errorf("retryAfter(%q) = %s, want %s", h, got, want)
		}
	}
	if got := retryAfter(time.Now().Add(time.Minute).UTC().Format(http.TimeFormat)); got < 58*time.Second || got > time.Minute {
		t.Errorf("Retry-After as a date a minute away: %s", got)
	}
}

func TestJWTExpiry(t *testing.T) {
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	if got := jwtExpiry(enc(`{}`) + "." + enc(`{"exp":1700000000}`) + ".sig"); !got.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("exp read as %s", got)
	}
	for _, tok := range []string{"opaque-token", "a.b.c", enc(`{}`) + "." + enc(`{"exp":"soon"}`) + ".s", enc(`{}`) + "." + enc(`{}`) + ".s"} {
		if got := jwtExpiry(tok); !got.IsZero() {
			t.Errorf("jwtExpiry(%q) = %s, want none", tok, got)
		}
	}
}

func TestClip(t *testing.T) {
	if got := clip("a\nb\x00c", 10); got != "a b c" {
		t.Errorf("control characters kept: %q", got)
	}
	if got := clip(strings.Repeat("é", 10), 5); got != "éé…" {
		t.Errorf("clipped to %q", got)
	}
}

// BenchmarkLocalID makes the local id of an ingested resource, as its
// own and each of its references' need one (the source's prefix is
// kept per base and type, not digested each time).
func BenchmarkLocalID(b *testing.B) {
	b.ReportAllocs()
	for i := range b.N {
		localID("https://old-payer.example/fhir", "Observation", "o00042-"+strconv.Itoa(i%1000))
	}
}
