package vendorhttp

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Every way a vendor call can fail gets the kind the worker acts on.
func TestErrorsAreClassified(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
		case "/garbage":
			_, _ = w.Write([]byte("<html>"))
		case "/ok":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"a":1}`))
		default:
			status, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"error":{"message":"member id is required"}}`))
		}
	}))
	defer srv.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()
	c := &Client{Vendor: "Acme", Timeout: 200 * time.Millisecond}
	cases := []struct {
		url  string
		kind errs.Kind
		msg  string
	}{
		{srv.URL + "/500", errs.Transient, "HTTP 500"},
		{srv.URL + "/503", errs.Transient, "HTTP 503"},
		{srv.URL + "/429", errs.Transient, "HTTP 429"},
		{srv.URL + "/401", errs.Unauthorized, "credentials"},
		{srv.URL + "/403", errs.Unauthorized, "credentials"},
		{srv.URL + "/404", errs.NotFound, "member id is required"},
		{srv.URL + "/422", errs.Unprocessable, "member id is required"},
		{srv.URL + "/400", errs.Unprocessable, "member id is required"},
		{srv.URL + "/slow", errs.Timeout, "did not answer within 200ms"},
		{srv.URL + "/garbage", errs.Transient, "documented JSON"},
		{closed, errs.Transient, "could not be reached"},
	}
	for _, tc := range cases {
		var out map[string]any
		_, err := c.Do(context.Background(), Request{Method: "GET", URL: tc.url}, &out)
		msg, _ := errs.Public(err)
		if errs.KindOf(err) != tc.kind || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: kind %v message %q, want %v %q", tc.url, errs.KindOf(err), msg, tc.kind, tc.msg)
		}
	}
	var out map[string]any
	if _, err := c.Do(context.Background(), Request{Method: "GET", URL: srv.URL + "/ok"}, &out); err != nil || out["a"] != float64(1) {
		t.Fatalf("ok: %v %v", out, err)
	}
}

func TestVendorMessage(t *testing.T) {
	cases := map[string]string{
		`{"message":"a"}`: "a",
		`{"error":"invalid_grant","error_description":"b"}`: "b",
		`{"error":{"message":"c"}}`:                         "c",
		`{"errors":[{"message":"d"}]}`:                      "d",
		`{"error":"e"}`:                                     "e",
		`not json`:                                          "",
	}
	for body, want := range cases {
		if got := VendorMessage([]byte(body)); got != want {
			t.Errorf("%s: %q, want %q", body, got, want)
		}
	}
}

// TestParseRetryAfter: both forms RFC 9110 section 10.2.3 allows, bounded
// by MaxRetryAfter; anything else is no Retry-After.
func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	date := func(d time.Duration) string { return now.Add(d).Format(http.TimeFormat) }
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1", time.Second, true},
		{"0", 0, true},
		{" 120 ", 2 * time.Minute, true},
		{date(90 * time.Second), 90 * time.Second, true},
		{now.Add(90 * time.Second).Format(time.RFC850), 90 * time.Second, true}, // obsolete form, still an HTTP-date
		{date(-time.Hour), 0, true},    // a date passed: retry now
		{"86400", MaxRetryAfter, true}, // a day: bounded
		{"99999999999999999", MaxRetryAfter, true},
		{date(365 * 24 * time.Hour), MaxRetryAfter, true},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	}
	for _, c := range cases {
		got, ok := ParseRetryAfter(c.in, now)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestRetryAfterAndMaybeProcessed: a refused call carries the vendor's
// Retry-After to the caller; and whether a failed call may have been
// carried out (so must not simply be repeated) is told apart by how it
// failed.
func TestRetryAfterAndMaybeProcessed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/late":
			time.Sleep(300 * time.Millisecond)
			w.WriteHeader(http.StatusCreated)
			return
		case "/garbage":
			_, _ = w.Write([]byte("<html>"))
			return
		}
		if ra := r.URL.Query().Get("ra"); ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		status, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		w.WriteHeader(status)
	}))
	defer srv.Close()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + ln.Addr().String()
	ln.Close()
	c := &Client{Vendor: "Acme", Timeout: 100 * time.Millisecond}
	cases := []struct {
		url        string
		retryAfter time.Duration
		maybe      bool
	}{
		{srv.URL + "/429?ra=7", 7 * time.Second, false},
		{srv.URL + "/503?ra=" + strings.ReplaceAll(time.Now().Add(time.Hour).UTC().Format(http.TimeFormat), " ", "%20"), MaxRetryAfter, false},
		{srv.URL + "/429", 0, false},
		{srv.URL + "/400", 0, false},
		{srv.URL + "/401", 0, false},
		{srv.URL + "/404", 0, false},
		{srv.URL + "/500", 0, true},
		{srv.URL + "/502", 0, true},
		{srv.URL + "/504?ra=3", 3 * time.Second, true},
		{srv.URL + "/late", 0, true},    // timed out after sending: may have been done
		{srv.URL + "/garbage", 0, true}, // answered 200: done
		{closed, 0, false},              // never reached
	}
	for _, tc := range cases {
		var out map[string]any
		_, err := c.Do(context.Background(), Request{Method: http.MethodPost, URL: tc.url, JSON: map[string]any{"a": 1}}, &out)
		if err == nil {
			t.Errorf("%s: no error", tc.url)
			continue
		}
		if got := RetryAfter(err); got != tc.retryAfter && !(tc.retryAfter == MaxRetryAfter && got > MaxRetryAfter-2*time.Second && got <= MaxRetryAfter) {
			t.Errorf("%s: RetryAfter %v, want %v", tc.url, got, tc.retryAfter)
		}
		if got := MaybeProcessed(err); got != tc.maybe {
			t.Errorf("%s: MaybeProcessed %v, want %v (%v)", tc.url, got, tc.maybe, err)
		}
	}
}
