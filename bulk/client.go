package bulk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/netguard"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// TokenSource gives the access token of this payer at another payer, and
// drops one the other payer answered 401 to. *oidcservers.SystemTokenSource
// is one.
type TokenSource interface {
	Token(ctx context.Context) (oidcservers.SystemToken, error)
	Invalidate(accessToken string)
}

// Defaults of Client.
const (
	// DefaultMinPoll and DefaultMaxPoll bound the wait between two status
	// polls: the Retry-After of the answer (Bulk Data Access STU 2,
	// "Bulk Data Status Request": the client SHOULD follow it) within
	// these bounds, DefaultMinPoll when there is none.
	DefaultMinPoll = time.Second
	DefaultMaxPoll = 2 * time.Minute
	// MaxLine is the longest NDJSON line (one resource) Download reads.
	MaxLine = 64 << 20
	// maxStatusBody bounds a status answer (a manifest, an
	// OperationOutcome).
	maxStatusBody = 16 << 20
)

// Client is the requesting side of Bulk Data Access STU 2 at another
// payer: kick-off, status polling, files. Every request carries the token
// of Tokens (a 401 drops it and the request is sent once more with a new
// one). Its zero values take the defaults.
type Client struct {
	// HTTP makes the requests; the binary's is checked by its outbound
	// policy; nil is a client checked by netguard.Default. Its Timeout
	// must be zero or long enough for a whole file: Download is bounded
	// by its ctx instead.
	HTTP   *http.Client
	Tokens TokenSource
	// MinPoll and MaxPoll bound the wait between polls.
	MinPoll, MaxPoll time.Duration
}

// defaultHTTP is the Client's when it is given none.
var defaultHTTP = func() *http.Client {
	c := netguard.Default().Client(0)
	c.CheckRedirect = SameOriginRedirects
	return c
}()

// ErrRedirect is wrapped by the error of a CheckRedirect that refuses a
// redirect (SameOriginRedirects): a Client reports such a request as the
// other payer's answer (Unprocessable), which asking again will not
// change, not as a payer it could not reach.
var ErrRedirect = errors.New("redirect not followed")

// SameOriginRedirects is the CheckRedirect of the http.Client a Client
// uses: it follows at most 5 redirects, all on the origin (scheme, host
// and port) of the first request, so that the other payer can neither
// have this payer's token sent elsewhere (the standard client keeps the
// Authorization header for another port of the same host) nor keep it
// going round in a loop.
func SameOriginRedirects(req *http.Request, via []*http.Request) error {
	first := via[0].URL
	switch {
	case len(via) >= 5:
		return fmt.Errorf("%w: more than 5 redirects from %s", ErrRedirect, first.Redacted())
	case !strings.EqualFold(req.URL.Scheme, first.Scheme) || !strings.EqualFold(req.URL.Host, first.Host) || req.URL.User != nil:
		return fmt.Errorf("%w: a redirect to another origin (%s://%s) than the request's (%s://%s); this server's token is only sent to the other payer's origin",
			ErrRedirect, req.URL.Scheme, req.URL.Host, first.Scheme, first.Host)
	}
	return nil
}

// Status is one answer of a status URL.
type Status struct {
	// Done is true when the request is complete: Manifest holds its
	// files, or, for an operation that answers with its result in the
	// completed status body instead (some $bulk-member-match servers),
	// Parameters holds that FHIR Parameters resource as sent and
	// Manifest is nil.
	Done       bool
	Manifest   *Manifest
	Parameters []byte
	// Progress is X-Progress of an unfinished export, RetryAfter the wait
	// it asks for (0 when it names none).
	Progress   string
	RetryAfter time.Duration
}

// KickOff starts an asynchronous request (Bulk Data "Bulk Data Kick-off
// Request"; PDex $bulk-member-match): method GET with the parameters in
// u, or POST with body (a FHIR Parameters resource), Prefer:
// respond-async. It returns the status URL of the 202's Content-Location.
// Errors carry the other payer's OperationOutcome diagnostics: Transient
// for 429 and 5xx, Permission for 401/403, Invalid for 400/422, NotFound
// for 404.
func (c *Client) KickOff(ctx context.Context, method, u string, body []byte) (string, error) {
	const op = "bulk.kickoff"
	resp, err := c.do(ctx, func() (*http.Request, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, u, rd)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/fhir+json")
		req.Header.Set("Prefer", "respond-async")
		if body != nil {
			req.Header.Set("Content-Type", "application/fhir+json")
		}
		return req, nil
	})
	if err != nil {
		return "", errs.E(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", answerError(op, "the kick-off request "+u, resp)
	}
	loc := resp.Header.Get("Content-Location")
	if loc == "" {
		return "", errs.E(op, errs.Unprocessable, "the kick-off request "+u+" was accepted without a Content-Location (the status URL)")
	}
	abs, err := resolve(u, loc)
	if err != nil {
		return "", errs.E(op, errs.Unprocessable, "the status URL "+loc+" is not usable", err)
	}
	return abs, nil
}

// Poll asks the status URL once. A 202 is an unfinished export (Progress,
// RetryAfter), a 200 a complete one (its Manifest). A 429, and a 5xx that
// does not say the job failed, is a Transient error whose RetryAfter is
// the answer's; any other answer is an error that quotes the
// OperationOutcome: the export failed or was cancelled (404, 410:
// NotFound). Bulk Data ("Response - Error Status") has a 4xx or 5xx mean
// that the export failed, and a poll that failed without the job carry an
// OperationOutcome with a transient issue code; so a 5xx is the job's
// failure when its OperationOutcome's issues have codes and none is
// transient, and a poll's failure otherwise (no OperationOutcome: a proxy
// or an outage answered).
func (c *Client) Poll(ctx context.Context, statusURL string) (Status, error) {
	const op = "bulk.poll"
	resp, err := c.get(ctx, statusURL, "application/json")
	if err != nil {
		return Status{}, errs.E(op, err)
	}
	defer resp.Body.Close()
	ra := retryAfter(resp.Header.Get("Retry-After"))
	switch resp.StatusCode {
	case http.StatusAccepted:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxStatusBody))
		return Status{Progress: resp.Header.Get("X-Progress"), RetryAfter: ra}, nil
	case http.StatusOK:
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBody))
		if err != nil {
			return Status{}, errs.E(op, errs.Transient, "the complete status of "+statusURL+" broke off", err)
		}
		var head struct {
			ResourceType string `json:"resourceType"`
		}
		if json.Unmarshal(body, &head) == nil && head.ResourceType == "Parameters" {
			return Status{Done: true, Parameters: body}, nil
		}
		var m Manifest
		if err := json.Unmarshal(body, &m); err != nil || head.ResourceType != "" {
			if err == nil {
				err = fmt.Errorf("it is a %s", head.ResourceType)
			}
			return Status{}, errs.E(op, errs.Unprocessable, "the complete status of "+statusURL+" is not a Bulk Data manifest", err)
		}
		for _, list := range [][]ManifestOutput{m.Output, m.Error} {
			for i := range list {
				abs, err := resolve(statusURL, list[i].URL)
				if err != nil {
					return Status{}, errs.E(op, errs.Unprocessable, "the manifest names a file URL that is not usable: "+list[i].URL)
				}
				list[i].URL = abs
			}
		}
		return Status{Done: true, Manifest: &m}, nil
	}
	err = statusError(op, "the status request "+statusURL, resp)
	if ra > 0 {
		err = errs.E(op, err, ra)
	}
	return Status{}, err
}

// Wait polls statusURL until the export completes, fails, or ctx ends,
// waiting between polls as the other payer asks (Retry-After, within
// MinPoll and MaxPoll). A Transient failure of one poll (429, 5xx, no
// connection) is waited out like a 202; progress, if not nil, is called
// with each X-Progress.
func (c *Client) Wait(ctx context.Context, statusURL string, progress func(string)) (*Manifest, error) {
	for {
		st, err := c.Poll(ctx, statusURL)
		if err != nil && errs.KindOf(err) != errs.Transient && errs.KindOf(err) != errs.Timeout {
			return nil, err
		}
		if st.Done {
			return st.Manifest, nil
		}
		if progress != nil && st.Progress != "" {
			progress(st.Progress)
		}
		wait := st.RetryAfter
		if err != nil {
			wait = errs.RetryAfterOf(err)
		}
		t := time.NewTimer(c.pollWait(wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errs.E("bulk.wait", errs.Timeout, "stopped waiting for "+statusURL, ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Client) pollWait(ra time.Duration) time.Duration {
	lo, hi := c.MinPoll, c.MaxPoll
	if lo <= 0 {
		lo = DefaultMinPoll
	}
	if hi <= 0 {
		hi = DefaultMaxPoll
	}
	return min(max(ra, lo), hi)
}

// Cancel deletes the export at statusURL (Bulk Data "Delete a Bulk Data
// Request"). An export that no longer exists (404) is not an error.
func (c *Client) Cancel(ctx context.Context, statusURL string) error {
	const op = "bulk.cancel"
	resp, err := c.do(ctx, func() (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodDelete, statusURL, nil)
	})
	if err != nil {
		return errs.E(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotFound {
		return nil
	}
	return answerError(op, "cancelling "+statusURL, resp)
}

// Download streams the NDJSON file at fileURL, calling each with every
// line after the first skip ones (to resume at a known line offset), and
// returns the number of lines read in all, skipped ones included. The
// token is sent when withToken (the manifest's requiresAccessToken). The
// line passed to each is valid only during the call. A file that is gone
// (404, 410) is a NotFound error; an error from each stops the download
// and is returned as it is.
func (c *Client) Download(ctx context.Context, fileURL string, withToken bool, skip int64, each func(line []byte) error) (int64, error) {
	const op = "bulk.download"
	// No Accept header: Bulk Data's file request makes it optional, its
	// default is application/fhir+ndjson, and some servers refuse it
	// when it is sent.
	build := func() (*http.Request, error) { return http.NewRequestWithContext(ctx, http.MethodGet, fileURL, nil) }
	var resp *http.Response
	var err error
	if withToken {
		resp, err = c.do(ctx, build)
	} else {
		resp, err = c.send(ctx, build, "")
	}
	if err != nil {
		return 0, errs.E(op, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return 0, errs.E(op, errs.NotFound, fmt.Sprintf("the file %s is gone (HTTP status %d)", fileURL, resp.StatusCode))
	case resp.StatusCode != http.StatusOK:
		return 0, answerError(op, "downloading "+fileURL, resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLine)
	var n int64
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		n++
		if n <= skip {
			continue
		}
		if err := each(line); err != nil {
			return n, err
		}
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return n, errs.E(op, errs.Unprocessable, fmt.Sprintf("line %d of %s is longer than %d bytes", n+1, fileURL, MaxLine))
		}
		return n, errs.E(op, errs.Transient, fmt.Sprintf("the download of %s broke off after %d lines", fileURL, n), err)
	}
	return n, nil
}

// get sends a GET with the token.
func (c *Client) get(ctx context.Context, u, accept string) (*http.Response, error) {
	return c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err == nil {
			req.Header.Set("Accept", accept)
		}
		return req, err
	})
}

// do sends the request build makes with the current token; on 401 it
// drops the token and sends it once more with a new one.
func (c *Client) do(ctx context.Context, build func() (*http.Request, error)) (*http.Response, error) {
	if c.Tokens == nil {
		return nil, errs.E("bulk.client", errs.Internal, "no token source")
	}
	for attempt := 0; ; attempt++ {
		tok, err := c.Tokens.Token(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := c.send(ctx, build, tok.AccessToken)
		if err != nil || resp.StatusCode != http.StatusUnauthorized || attempt > 0 {
			return resp, err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		c.Tokens.Invalidate(tok.AccessToken)
	}
}

func (c *Client) send(ctx context.Context, build func() (*http.Request, error), token string) (*http.Response, error) {
	req, err := build()
	if err != nil {
		return nil, errs.E("bulk.client", errs.Unprocessable, "the URL is not usable", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.Is(err, ErrRedirect) && errors.As(err, &ue) {
			return nil, errs.E("bulk.client", errs.Unprocessable, "the answer to "+req.URL.Redacted()+" was not followed: "+ue.Err.Error())
		}
		if ctx.Err() != nil {
			return nil, errs.E("bulk.client", errs.Timeout, "the request to "+req.URL.Redacted()+" was stopped", err)
		}
		return nil, errs.E("bulk.client", errs.Transient, "could not reach "+req.URL.Redacted(), err)
	}
	return resp, nil
}

// answerError describes an unexpected answer with the diagnostics of its
// OperationOutcome, if it has one.
func answerError(op, what string, resp *http.Response) error {
	return describeAnswer(op, what, resp, false)
}

// statusError is answerError for a status request: a 5xx whose
// OperationOutcome has issue codes, none of them transient, says the job
// failed (see Poll), and is not Transient.
func statusError(op, what string, resp *http.Response) error {
	return describeAnswer(op, what, resp, true)
}

func describeAnswer(op, what string, resp *http.Response, failedJob bool) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := fmt.Sprintf("%s was answered with HTTP status %d", what, resp.StatusCode)
	var token string
	if resp.Request != nil {
		token, _ = strings.CutPrefix(resp.Request.Header.Get("Authorization"), "Bearer ")
	}
	d, codes := outcomeOf(resp.Header.Get("Content-Type"), []byte(Redact(string(body), token)))
	if d != "" {
		msg += ": " + d
	}
	kind := errs.Unprocessable
	switch {
	case failedJob && resp.StatusCode >= 500 && len(codes) > 0 && !slices.ContainsFunc(codes, transientIssue):
		msg += " (the job failed: its issue code is not a transient one)"
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		kind = errs.Transient
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		kind = errs.Permission
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		kind = errs.NotFound
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnprocessableEntity:
		kind = errs.Invalid
	}
	return errs.E(op, kind, msg)
}

// transientIssue reports whether an OperationOutcome issue code is
// IssueType's transient or one of its children (FHIR R4
// codesystem-issue-type): processing may be tried again.
func transientIssue(code string) bool {
	switch code {
	case "transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled":
		return true
	}
	return false
}

// outcomeOf is the diagnostics (else the details' text) of an
// OperationOutcome's issues, joined, at most 500 bytes, and the issues'
// codes.
func outcomeOf(contentType string, body []byte) (string, []string) {
	if mt, _, _ := mime.ParseMediaType(contentType); mt != "" && !strings.HasSuffix(mt, "json") {
		return "", nil
	}
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
			Details     struct {
				Text string `json:"text"`
			} `json:"details"`
		} `json:"issue"`
	}
	if json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" {
		return "", nil
	}
	var parts, codes []string
	for _, is := range oo.Issue {
		if is.Code != "" {
			codes = append(codes, is.Code)
		}
		if t := strings.TrimSpace(is.Diagnostics); t != "" {
			parts = append(parts, t)
		} else if t := strings.TrimSpace(is.Details.Text); t != "" {
			parts = append(parts, t)
		}
	}
	s := strings.Join(parts, "; ")
	if len(s) > 500 {
		s = s[:500] + "…"
	}
	return strings.ToValidUTF8(s, ""), codes
}

// Redact replaces in s, a text another payer sent (an OperationOutcome's
// diagnostics), every credential it may quote of the request it answers:
// the secrets given (the access token sent) and anything shaped like one
// (see oidcservers.RedactCredentials), so that a job's status and logs
// never show them.
func Redact(s string, secrets ...string) string {
	return oidcservers.RedactCredentials(s, secrets...)
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

func resolve(base, ref string) (string, error) {
	b, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	r, err := url.Parse(ref)
	if err != nil {
		return "", err
	}
	u := b.ResolveReference(r)
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("not an http(s) URL")
	}
	return u.String(), nil
}
