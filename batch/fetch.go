package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/netguard"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// fetchFailure is why a request to the source payer gave no page.
type fetchFailure struct {
	// retry: worth trying again after the backoff (or after, when set).
	retry bool
	after time.Duration
	// expired: the source answered 410 Gone, as FHIR servers do for a
	// search result they no longer hold.
	expired bool
	// authz: the member's authorization was refused; nothing can be read.
	authz bool
	// final: only the member can remove the cause (their authorization
	// has ended), so the member's add-payer request ends with the job.
	final  bool
	reason string
}

func (f *fetchFailure) Error() string { return f.reason }

// errCanceled means the run's context ended: a stop request or shutdown.
var errCanceled = errors.New("batch: canceled")

// fetch GETs url from the source payer with the member's access token from
// ts. A 401 is answered by invalidating the token, to be refreshed for an
// immediate retry, unless refreshed says that was done for this request.
func (r *Runner) fetch(runCtx context.Context, ts *oidcservers.TokenSource, url string, refreshed bool) ([]byte, error) {
	tok, err := ts.Token()
	if err != nil {
		if runCtx.Err() != nil {
			return nil, errCanceled
		}
		return nil, tokenFailure(err)
	}
	ctx, cancel := context.WithTimeout(runCtx, r.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, &fetchFailure{reason: fmt.Sprintf("the request URL %s is not usable", clip(url, 300))}
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := r.client.Do(req)
	if err != nil {
		if runCtx.Err() != nil {
			return nil, errCanceled
		}
		var ue interface{ Timeout() bool }
		if errors.As(err, &ue) && ue.Timeout() {
			return nil, &fetchFailure{retry: true, reason: fmt.Sprintf("the source payer did not answer within %s for %s", r.cfg.RequestTimeout, clip(url, 300))}
		}
		if netguard.IsRefused(err) {
			return nil, &fetchFailure{reason: fmt.Sprintf("the source payer's endpoint for %s is not reachable under this server's outbound policy: %s", clip(url, 300), refusal(err))}
		}
		if strings.Contains(err.Error(), "redirect to another origin") {
			return nil, &fetchFailure{reason: fmt.Sprintf("the source payer redirected %s to another origin; requests are only sent to the origin of its fhirEndpoint", clip(url, 300))}
		}
		return nil, &fetchFailure{retry: true, reason: fmt.Sprintf("the source payer could not be reached for %s (%s)", clip(url, 300), netReason(err))}
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusUnauthorized:
		drain(resp.Body)
		ff := unauthorized(resp.Header, tok.AccessToken, url, ts.CanRefresh(), refreshed, time.Now())
		if ff.retry {
			ts.Invalidate(tok.AccessToken)
		}
		return nil, ff
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		detail := bodyDetail(resp)
		return nil, &fetchFailure{retry: true, after: retryAfter(resp.Header.Get("Retry-After")),
			reason: fmt.Sprintf("the source payer answered %s for %s%s", resp.Status, clip(url, 300), detail)}
	case resp.StatusCode == http.StatusForbidden:
		return nil, forbidden(resp.Header, resp.Status, url, bodyDetail(resp))
	case resp.StatusCode == http.StatusGone:
		return nil, &fetchFailure{expired: true, reason: fmt.Sprintf("the source payer answered %s for %s%s", resp.Status, clip(url, 300), bodyDetail(resp))}
	default:
		return nil, &fetchFailure{reason: fmt.Sprintf("the source payer answered %s for %s%s", resp.Status, clip(url, 300), bodyDetail(resp))}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		mt, _, _ := mime.ParseMediaType(ct)
		if mt != "application/fhir+json" && mt != "application/json" && mt != "application/json+fhir" {
			return nil, &fetchFailure{reason: fmt.Sprintf("the source payer sent %s instead of FHIR JSON for %s", clip(mt, 64), clip(url, 300))}
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.MaxPageBytes+1))
	if err != nil {
		if runCtx.Err() != nil {
			return nil, errCanceled
		}
		return nil, &fetchFailure{retry: true, reason: fmt.Sprintf("the page from %s could not be read in full (%s)", clip(url, 300), netReason(err))}
	}
	if int64(len(body)) > r.cfg.MaxPageBytes {
		return nil, &fetchFailure{reason: fmt.Sprintf("the page from %s is larger than %d bytes; ask for smaller pages (_count)", clip(url, 300), r.cfg.MaxPageBytes)}
	}
	return body, nil
}

// tokenFailure explains a TokenSource error. A rejected refresh token, or
// an expired access token with none, ends the member's request: only the
// member can authorize again. Any other cause is the payer's to fix.
func tokenFailure(err error) error {
	msg, _ := errs.Public(err)
	switch {
	case errors.Is(err, oidcservers.ErrRefreshRejected), errors.Is(err, oidcservers.ErrNoRefreshToken):
		return &fetchFailure{authz: true, final: true, reason: msg}
	case errs.Is(err, errs.Transient), errs.Is(err, errs.Timeout):
		return &fetchFailure{retry: true, reason: msg}
	}
	if netguard.IsRefused(err) {
		return &fetchFailure{reason: "the source payer's token endpoint is not reachable under this server's outbound policy: " + refusal(err)}
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) {
		return &fetchFailure{retry: true, reason: "the source payer's token endpoint could not be reached: " + msg}
	}
	return &fetchFailure{authz: true, reason: "the member's token could not be refreshed: " + msg}
}

// refusal is the outbound policy's reason behind err.
func refusal(err error) string {
	var re *netguard.RefusedError
	if errors.As(err, &re) {
		return re.Error()
	}
	return netReason(err)
}

// netReason names a transport failure without echoing internals at length.
func netReason(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return clip(s, 120)
}

func drain(r io.Reader) { _, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<10)) }

// bodyDetail quotes the diagnostics of an OperationOutcome error body.
func bodyDetail(resp *http.Response) string {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	oo, err := readEnvelope(raw)
	if err != nil || oo.resourceType != "OperationOutcome" || len(oo.issues) == 0 {
		return ""
	}
	return ": " + outcomeText(oo.issues)
}

// retryAfter reads Retry-After: seconds or an HTTP date. 0 when absent.
func retryAfter(h string) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if s, err := strconv.Atoi(h); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// backoff is the wait before retry n (1-based): doubling from RetryBase
// with ±25% jitter, or the source's Retry-After, capped by MaxRetryDelay.
func (r *Runner) backoff(n int, after time.Duration) time.Duration {
	if after > 0 {
		return min(after, r.cfg.MaxRetryDelay)
	}
	d := r.cfg.RetryBase << min(n-1, 20)
	d = time.Duration(float64(d) * (0.75 + rand.Float64()/2))
	return min(d, r.cfg.MaxRetryDelay)
}

// memberToken rebuilds the member's token from a job record.
func (r *Runner) memberToken(rec *record) (*oauth2.Token, error) {
	tok := &oauth2.Token{TokenType: "Bearer", Expiry: rec.AccessExpiry}
	if len(rec.SealedAccess) > 0 {
		b, err := r.cipher.Open(rec.SealedAccess)
		if err != nil {
			return nil, err
		}
		tok.AccessToken = string(b)
	}
	if len(rec.SealedRefresh) > 0 {
		b, err := r.cipher.Open(rec.SealedRefresh)
		if err != nil {
			return nil, err
		}
		tok.RefreshToken = string(b)
	}
	return tok, nil
}

// sealToken stores tok in rec, sealed.
func (r *Runner) sealToken(rec *record, tok *oauth2.Token) error {
	rec.SealedAccess, rec.SealedRefresh, rec.AccessExpiry = nil, nil, tok.Expiry
	if tok.AccessToken != "" {
		b, err := r.cipher.Seal([]byte(tok.AccessToken))
		if err != nil {
			return err
		}
		rec.SealedAccess = b
	}
	if tok.RefreshToken != "" {
		b, err := r.cipher.Seal([]byte(tok.RefreshToken))
		if err != nil {
			return err
		}
		rec.SealedRefresh = b
	}
	return nil
}
