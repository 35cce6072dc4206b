package healthie

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/Khan/genqlient/graphql"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/p2pserver/p2pserver/facades/vendorhttp"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/netguard"
)

// ClientConfig configures the Healthie API client.
type ClientConfig struct {
	// URL is Healthie's GraphQL endpoint, e.g.
	// https://api.gethealthie.com/graphql (staging:
	// https://staging-api.gethealthie.com/graphql).
	URL string
	// APIKey is sent as "Authorization: Basic <key>" with
	// "AuthorizationSource: API".
	APIKey string
	// Shard, when set, is sent as AuthorizationShard (sharded accounts only).
	Shard string
	// Timeout bounds one call, retries included. Default 30s.
	Timeout time.Duration
	// MaxRetries is how often a call rate-limited with 429 (or, for
	// queries, failed transiently) is retried. Default 5.
	MaxRetries int
	// BaseBackoff and MaxBackoff bound the exponential backoff between
	// retries when Healthie gives no Retry-After. Defaults 200ms and 10s;
	// a Retry-After longer than MaxBackoff is capped at it too.
	BaseBackoff, MaxBackoff time.Duration
	// HTTPClient, when set, carries the requests (its Timeout is kept).
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Client calls Healthie's GraphQL API through the generated typed
// operations (generated.go). Every call carries the API-key headers, runs
// under a timeout, and backs off and retries on 429 honouring Retry-After.
// Queries are also retried on 502/503/504 and network errors; mutations are
// not, since Healthie has no idempotency keys and a retried mutation could
// book twice (a 429 is safe: Healthie refused it before doing anything).
type Client struct {
	cfg   ClientConfig
	http  *http.Client
	gql   graphql.Client
	log   *slog.Logger
	sleep func(ctx context.Context, d time.Duration) error
}

// NewClient builds a client. It does no I/O.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.URL == "" || !(strings.HasPrefix(cfg.URL, "http://") || strings.HasPrefix(cfg.URL, "https://")) {
		return nil, fmt.Errorf("healthie: the GraphQL URL %q is not an http(s) URL", cfg.URL)
	}
	if cfg.APIKey == "" {
		return nil, errors.New("healthie: an API key is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxRetries <= 0 {
		cfg.MaxRetries = 5
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 200 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = netguard.Default().Client(cfg.Timeout)
	}
	c := &Client{cfg: cfg, http: hc, log: cfg.Logger, sleep: sleepCtx}
	c.gql = graphql.NewClient(cfg.URL, doer{c})
	return c, nil
}

// URL is the GraphQL endpoint.
func (c *Client) URL() string { return c.cfg.URL }

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type mutationKey struct{}

// asMutation marks ctx as carrying a mutation, which is not retried on
// anything but 429.
func asMutation(ctx context.Context) context.Context {
	return context.WithValue(ctx, mutationKey{}, true)
}

// doer adds the headers and the retry policy under genqlient.
type doer struct{ c *Client }

// Do sends req, retrying as the Client's doc says.
func (d doer) Do(req *http.Request) (*http.Response, error) {
	c := d.c
	ctx := req.Context()
	mutation, _ := ctx.Value(mutationKey{}).(bool)
	for attempt := 0; ; attempt++ {
		r := req.Clone(ctx)
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			r.Body = body
		}
		r.Header.Set("Authorization", "Basic "+c.cfg.APIKey)
		r.Header.Set("AuthorizationSource", "API")
		if c.cfg.Shard != "" {
			r.Header.Set("AuthorizationShard", c.cfg.Shard)
		}
		r.Header.Set("Accept", "application/json")
		resp, err := c.http.Do(r)
		retry, wait := false, time.Duration(0)
		switch {
		case err != nil:
			retry = !mutation && ctx.Err() == nil
		case resp.StatusCode == http.StatusTooManyRequests:
			retry, wait = true, retryAfter(resp.Header.Get("Retry-After"))
		case !mutation && (resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusGatewayTimeout):
			retry, wait = true, retryAfter(resp.Header.Get("Retry-After"))
		}
		if !retry || attempt >= c.cfg.MaxRetries {
			return resp, err
		}
		if resp != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if wait <= 0 {
			wait = c.cfg.BaseBackoff << attempt
			// Jitter spreads the retries of concurrent callers.
			wait = wait/2 + rand.N(wait/2+1)
		}
		wait = min(wait, c.cfg.MaxBackoff)
		status := "network error"
		if resp != nil {
			status = resp.Status
		}
		c.log.Warn("healthie: retrying", "status", status, "attempt", attempt+1, "wait", wait)
		if err := c.sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// retryAfter reads Retry-After as seconds or an HTTP date, the way every
// vendor's is read (vendorhttp.ParseRetryAfter); 0 when absent.
func retryAfter(h string) time.Duration {
	d, _ := vendorhttp.ParseRetryAfter(h, time.Now())
	return d
}

// call runs one generated operation under the client's timeout and
// classifies its error.
func call[T any](ctx context.Context, c *Client, op string, fn func(ctx context.Context, g graphql.Client) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	v, err := fn(ctx, c.gql)
	if err != nil {
		var zero T
		return zero, classify(ctx, op, err)
	}
	return v, nil
}

// classify turns a Healthie failure into the error kind a FHIR client can
// act on: the facade's own credentials failing is our fault (503 with a
// pointer to the setting), a rate limit that outlasted the retries is 429,
// a timeout 504, and anything else from Healthie 503.
func classify(ctx context.Context, op string, err error) error {
	var he *graphql.HTTPError
	var gl gqlerror.List
	switch {
	case errors.As(err, &he) && (he.StatusCode == http.StatusUnauthorized || he.StatusCode == http.StatusForbidden):
		return errs.E("healthie."+op, errs.Transient, "Healthie refused the facade's API key; check the Healthie API key setting", err)
	case errors.As(err, &he) && he.StatusCode == http.StatusTooManyRequests:
		return errs.E("healthie."+op, errs.TooMany, "Healthie's rate limit was still exceeded after retrying; try again shortly", err)
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded:
		return errs.E("healthie."+op, errs.Timeout, "Healthie did not answer in time", err)
	case errors.Is(err, context.Canceled):
		return errs.E("healthie."+op, errs.Transient, "the request was cancelled", err)
	case errors.As(err, &gl):
		return errs.E("healthie."+op, errs.Transient, "Healthie answered with an error", err)
	}
	return errs.E("healthie."+op, errs.Transient, "Healthie could not be reached", err)
}
