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
