package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Bounds of the cache of clients' JWK Sets fetched from their jwksUrl.
const (
	// jwksMaxEntries is how many URLs are cached; past it the entry
	// fetched longest ago goes.
	jwksMaxEntries = 256
	// jwksDefaultTTL is how long a set is kept when its answer has no
	// Cache-Control max-age; jwksMaxTTL caps any max-age.
	jwksDefaultTTL = 5 * time.Minute
	jwksMaxTTL     = time.Hour
	// jwksRefetch is how soon a set is fetched again because an assertion
	// names a kid it does not hold, or after a failed fetch: often enough
	// to follow a client's key rotation, too rarely for forged kids to
	// turn into a flood of requests to the client.
	jwksRefetch = 10 * time.Second
	// jwksMaxBody bounds the answer read.
	jwksMaxBody = 256 << 10
	// jwksTimeout bounds one fetch.
	jwksTimeout = 5 * time.Second
)

// jwksCache fetches clients' JWK Sets and keeps them as long as their
// Cache-Control allows (SMART App Launch 2, client-confidential-asymmetric:
// the server SHALL NOT cache a JWKS longer than the client's cache-control
// header indicates, and SHOULD cache it accordingly), within the bounds
// above.
type jwksCache struct {
	client *http.Client
	now    func() time.Time

	mu      sync.Mutex
	entries map[string]*jwksEntry
}

type jwksEntry struct {
	keys    []jose.JSONWebKey
	err     error // the last fetch's failure, when keys could not be had
	fetched time.Time
	expires time.Time // keys are not used after it
}

func newJWKSCache(client *http.Client, now func() time.Time) *jwksCache {
	return &jwksCache{client: client, now: now, entries: map[string]*jwksEntry{}}
}

// keys returns the set at u; when it does not hold kid, it is fetched
// again unless that was done within jwksRefetch.
func (c *jwksCache) keys(ctx context.Context, u, kid string) ([]jose.JSONWebKey, error) {
	now := c.now()
	c.mu.Lock()
	e := c.entries[u]
	c.mu.Unlock()
	if e != nil && e.err == nil && now.Before(e.expires) && (hasKID(e.keys, kid) || now.Sub(e.fetched) < jwksRefetch) {
		return e.keys, nil
	}
	if e != nil && e.err != nil && now.Sub(e.fetched) < jwksRefetch {
		return nil, e.err
	}
	keys, ttl, err := c.fetch(ctx, u)
	e = &jwksEntry{keys: keys, err: err, fetched: now, expires: now.Add(ttl)}
	c.mu.Lock()
	if len(c.entries) >= jwksMaxEntries {
		var oldest string
		for k, v := range c.entries {
			if oldest == "" || v.fetched.Before(c.entries[oldest].fetched) {
				oldest = k
			}
		}
		delete(c.entries, oldest)
	}
	c.entries[u] = e
	c.mu.Unlock()
	return keys, err
}

// forget drops the set at u (its client was changed or removed).
func (c *jwksCache) forget(u string) {
	c.mu.Lock()
	delete(c.entries, u)
	c.mu.Unlock()
}

func hasKID(keys []jose.JSONWebKey, kid string) bool {
	for _, k := range keys {
		if k.KeyID == kid {
			return true
		}
	}
	return false
}

// fetch GETs a JWK Set with Accept: application/json, as SMART describes,
// and reads how long it may be kept.
func (c *jwksCache) fetch(ctx context.Context, u string) ([]jose.JSONWebKey, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jwksTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("the client's jwksUrl %s: %v", u, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("the client's JWK Set could not be fetched from %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBody+1))
	switch {
	case err != nil:
		return nil, 0, fmt.Errorf("the client's JWK Set could not be read from %s: %v", u, err)
	case len(body) > jwksMaxBody:
		return nil, 0, fmt.Errorf("the client's JWK Set at %s is larger than %d bytes", u, jwksMaxBody)
	case resp.StatusCode != http.StatusOK:
		return nil, 0, fmt.Errorf("the client's jwksUrl %s answered %s", u, resp.Status)
	}
	keys, problem := parsePublicJWKS(body)
	if problem != "" {
		return nil, 0, errors.New("the client's JWK Set at " + u + " " + problem)
	}
	return keys, cacheTTL(resp.Header.Get("Cache-Control")), nil
}

// cacheTTL is how long an answer with this Cache-Control may be kept:
// not at all with no-store or no-cache, max-age when given (at most
// jwksMaxTTL), else jwksDefaultTTL.
func cacheTTL(cc string) time.Duration {
	ttl := jwksDefaultTTL
	for _, d := range strings.Split(cc, ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return 0
		case "max-age":
			n, err := strconv.Atoi(strings.Trim(val, `"`))
			if err != nil || n < 0 {
				return 0
			}
			ttl = time.Duration(n) * time.Second
		}
	}
	return min(ttl, jwksMaxTTL)
}
