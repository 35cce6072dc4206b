// Package vendorhttp makes the HTTP calls of the eligibility connectors and
// classifies what goes wrong the same way for every vendor: a timeout is
// errs.Timeout, an unreachable vendor or a 5xx/429 answer errs.Transient
// (the worker retries those), 401/403 errs.Unauthorized (the connector
// refreshes its token and tries once more), other 4xx errs.Unprocessable
// or errs.NotFound with the vendor's own explanation as the client
// message.
package vendorhttp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/netguard"
)

// defaultClient carries calls made without Client.HTTP: its connections
// are checked by netguard.Default after name resolution.
var defaultClient = netguard.Default().Client(0)

// MaxBody caps what is read of a vendor answer.
const MaxBody = 4 << 20

// Client calls one vendor.
type Client struct {
	// Vendor names the vendor in messages ("Sohar").
	Vendor string
	// HTTP is the client used; default one without a timeout of its own.
	HTTP *http.Client
	// Timeout bounds each call; default 30s.
	Timeout time.Duration
}

// MaxRetryAfter bounds how long a vendor's Retry-After can hold a retry
// back: a longer (or absurd) value is taken as this.
const MaxRetryAfter = 10 * time.Minute

// StatusError is the cause of an error for a non-2xx answer.
type StatusError struct {
	Status int
	Body   []byte
	// RetryAfter is the answer's Retry-After (RFC 9110 section 10.2.3),
	// bounded by MaxRetryAfter; 0 when it had none.
	RetryAfter time.Duration
}

// ParseRetryAfter reads a Retry-After value, delay-seconds or an
// HTTP-date (RFC 9110 section 10.2.3), as a wait from now, within [0,
// MaxRetryAfter]. ok is false for an absent or malformed value.
func ParseRetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter, true
		}
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(t.Sub(now), 0), MaxRetryAfter), true
}

// RetryAfter returns the Retry-After of the vendor answer behind err,
// bounded by MaxRetryAfter; 0 when there is none.
func RetryAfter(err error) time.Duration {
	var se *StatusError
	if errors.As(err, &se) {
		return se.RetryAfter
	}
	return 0
}

// errUndecodable is the cause of a 2xx answer that is not the documented
// JSON: the vendor did the work, whatever the body says.
var errUndecodable = errors.New("undecodable answer")

// MaybeProcessed reports whether a failed call may nonetheless have been
// carried out by the vendor, so that repeating a non-idempotent call
// (a create) could do it twice: a timeout or a broken connection after the
// request was sent, an answer of 500, 502 or 504, or a 2xx answer that
// could not be read. A call that never reached the vendor (the connection
// was refused or could not be made) or that the vendor refused before
// acting (429, 503, 4xx) was not carried out.
func MaybeProcessed(err error) bool {
	if err == nil {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status == http.StatusInternalServerError || se.Status == http.StatusBadGateway || se.Status == http.StatusGatewayTimeout
	}
	if errors.Is(err, errUndecodable) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return false
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return false
	}
	switch errs.KindOf(err) {
	case errs.Timeout, errs.Transient:
		return true
	}
	return false
}

func (e *StatusError) Error() string {
	b := e.Body
	if len(b) > 300 {
		b = b[:300]
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, bytes.TrimSpace(b))
}

// StatusOf returns the HTTP status of a vendor answer behind err, 0 if the
// error is not one.
func StatusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}

// Request is one call.
type Request struct {
	Method string
	URL    string
	Header http.Header
	// JSON, when set, is encoded as the body (application/json); Form,
	// when set, is sent form-encoded.
	JSON any
	Form url.Values
}

// Do makes the call and decodes a 2xx JSON answer into out (when non-nil).
// It returns the raw body too.
func (c *Client) Do(ctx context.Context, rq Request, out any) ([]byte, error) {
	op := "vendor." + strings.ToLower(c.Vendor)
	var body io.Reader
	ct := ""
	switch {
	case rq.JSON != nil:
		b, err := json.Marshal(rq.JSON)
		if err != nil {
			return nil, errs.E(op, errs.Internal, err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	case rq.Form != nil:
		body, ct = strings.NewReader(rq.Form.Encode()), "application/x-www-form-urlencoded"
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, rq.Method, rq.URL, body)
	if err != nil {
		return nil, errs.E(op, errs.Internal, err)
	}
	for k, vs := range rq.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	req.Header.Set("Accept", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = defaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		var ne net.Error
		if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil, errs.E(op, errs.Timeout, fmt.Sprintf("%s did not answer within %s", c.Vendor, timeout), err)
		}
		if errors.Is(err, context.Canceled) {
			return nil, errs.E(op, errs.Transient, fmt.Sprintf("the call to %s was cancelled", c.Vendor), err)
		}
		return nil, errs.E(op, errs.Transient, fmt.Sprintf("%s could not be reached", c.Vendor), err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody))
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, errs.E(op, errs.Timeout, fmt.Sprintf("%s did not finish its answer within %s", c.Vendor, timeout), err)
		}
		return nil, errs.E(op, errs.Transient, fmt.Sprintf("%s's answer could not be read", c.Vendor), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		se := &StatusError{Status: resp.StatusCode, Body: raw}
		se.RetryAfter, _ = ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		msg := VendorMessage(raw)
		switch {
		case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout:
			return raw, errs.E(op, errs.Transient, fmt.Sprintf("%s answered HTTP %d", c.Vendor, resp.StatusCode), se)
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return raw, errs.E(op, errs.Unauthorized, fmt.Sprintf("%s refused this server's credentials (HTTP %d)", c.Vendor, resp.StatusCode), se)
		case resp.StatusCode == http.StatusNotFound:
			return raw, errs.E(op, errs.NotFound, fmt.Sprintf("%s: not found%s", c.Vendor, suffix(msg)), se)
		}
		return raw, errs.E(op, errs.Unprocessable, fmt.Sprintf("%s refused the request%s", c.Vendor, suffix(msg)), se)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, errs.E(op, errs.Transient, fmt.Sprintf("%s answered with something other than the documented JSON", c.Vendor), errors.Join(errUndecodable, err))
		}
	}
	return raw, nil
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

// VendorMessage digs a human explanation out of a vendor's error body:
// "message", "error_description", "error" (a string or an object with a
// message), or the first of "errors". It is cut to 300 characters.
func VendorMessage(body []byte) string {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	pick := func(v any) string {
		switch t := v.(type) {
		case string:
			return t
		case map[string]any:
			if s, ok := t["message"].(string); ok {
				return s
			}
		}
		return ""
	}
	msg := ""
	for _, k := range []string{"message", "error_description", "error"} {
		if msg = pick(m[k]); msg != "" {
			break
		}
	}
	if msg == "" {
		if list, ok := m["errors"].([]any); ok && len(list) > 0 {
			msg = pick(list[0])
		}
	}
	if len(msg) > 300 {
		msg = msg[:300]
	}
	return msg
}
