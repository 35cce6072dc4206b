package fhir

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestValidID checks the rule of FHIR R4 datatypes.html#id — 1 to 64 of
// A-Z a-z 0-9 - . — row by row, and against the rule written as the
// specification's regular expression on every byte and on the length
// boundaries.
func TestValidID(t *testing.T) {
	spec := regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	rows := []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"Patient-1.2", true},
		{"0195f3c2-7b1e-7c3a-9d4e-0123456789ab", true},
		{strings.Repeat("x", 64), true},
		{strings.Repeat("x", 65), false},
		{"", false},
		{"no pe", false},
		{"a/b", false},
		{"a_b", false},
		{"é", false},
		{"a\n", false},
		{"\na", false},
		{"a\x00", false},
	}
	for _, r := range rows {
		if got := validID(r.id); got != r.want {
			t.Errorf("validID(%q) = %v, want %v", r.id, got, r.want)
		}
		if got := spec.MatchString(r.id); got != r.want {
			t.Errorf("the row %q disagrees with the specification's pattern", r.id)
		}
	}
	for c := 0; c < 256; c++ {
		id := "a" + string([]byte{byte(c)})
		if got, want := validID(id), spec.MatchString(id); got != want {
			t.Errorf("validID(%q) = %v, the specification's pattern says %v", id, got, want)
		}
	}
}

// TestAppendHTTPDate checks the Last-Modified date (RFC 9110 section
// 5.6.7) against the standard library's formatting of the same instant,
// in other zones too, over every month, weekday and field width.
func TestAppendHTTPDate(t *testing.T) {
	east := time.FixedZone("east", 5*3600+1800)
	var times []time.Time
	for _, s := range []string{"2026-11-30T10:20:30.123456789Z", "1999-12-31T23:59:59Z", "2000-02-29T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0099-03-04T05:06:07Z"} {
		tm, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, tm, tm.In(east))
	}
	for d := time.Date(2024, 1, 1, 0, 0, 0, 0, east); d.Year() < 2026; d = d.Add(37*time.Hour + 13*time.Minute + 7*time.Second) {
		times = append(times, d)
	}
	times = append(times, time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(12345, 1, 1, 0, 0, 0, 0, time.UTC))
	for _, tm := range times {
		if got, want := string(appendHTTPDate([]byte("x"), tm)), "x"+tm.UTC().Format(http.TimeFormat); got != want {
			t.Errorf("appendHTTPDate(%v) = %q, want %q", tm, got, want)
		}
	}
}
