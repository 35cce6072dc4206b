package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/internal/limit"
	"golang.org/x/net/netutil"
)

// Limits are the bounds that keep one client's requests from taking the
// server from the others: connection and header limits, how long a client
// may take to send and to receive, how much expensive work runs at once,
// and the memory the kept search results may hold.
type Limits struct {
	// MaxBundleEntries is the most entries of a transaction or batch.
	MaxBundleEntries int
	// LargeBundleEntries is the entry count from which a transaction or
	// batch is expensive work and a transaction is committed alone.
	LargeBundleEntries int
	// MaxConnections is the most connections served at once; more wait
	// to be accepted.
	MaxConnections int
	// MaxHeaderBytes bounds a request's line and headers.
	MaxHeaderBytes int
	// ReadHeaderTimeout, ReadTimeout (the body), WriteTimeout (each write
	// of the answer) and IdleTimeout (between requests on a connection).
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// MaxExpensive and MaxExpensivePerClient bound the expensive requests
	// (large Bundles, Patient/$everything) running at once.
	MaxExpensive, MaxExpensivePerClient int
	// SearchCacheBytes bounds the result sets kept for paging.
	SearchCacheBytes int64
	// NotifyMaxOutbox bounds the notification outbox's rows, and
	// MaxSubscriptionsPerType the active Subscriptions on one type.
	NotifyMaxOutbox, MaxSubscriptionsPerType int
}

// limitFlags registers the flags of Limits on fs, with env giving their
// defaults; the function it returns reads them once fs is parsed.
func limitFlags(fs *flag.FlagSet, env func(name, def string) string) func() (Limits, error) {
	add := func(name, def, usage string) *string {
		v := new(string)
		fs.StringVar(v, name, env(name, def), usage)
		return v
	}
	bundle := add("max-bundle-entries", "10000", "most entries of a transaction or batch Bundle; larger ones get 413")
	large := add("large-bundle-entries", "500", "entries from which a transaction or batch Bundle is expensive work (see -max-expensive) and a transaction is committed in a write group of its own")
	conns := add("max-connections", "1024", "most client connections served at once; more wait to be accepted")
	header := add("max-header-bytes", "64KiB", "largest request line and headers; larger ones get 431")
	readHeader := add("read-header-timeout", "10s", "time a client has to send a request's line and headers")
	read := add("read-timeout", "60s", "time a client has to send a request's body; a slower one gets 408 and is disconnected")
	write := add("write-timeout", "60s", "time a client has to take each write of an answer; a slower one is disconnected")
	idle := add("idle-timeout", "2m", "how long a connection is kept open between requests")
	expensive := add("max-expensive", strconv.Itoa(2*runtime.GOMAXPROCS(0)), "expensive requests (large Bundles, Patient/$everything) run at once; more get 503 with Retry-After")
	perClient := add("max-expensive-per-client", "2", "expensive requests one client (token subject, else IP address) runs at once; more get 429 with Retry-After")
	outbox := add("notify-max-outbox", "1000000", "most rows of the notification outbox (writes that matched Subscriptions, notifications); a write that would add one more gets 503 with Retry-After")
	perType := add("max-subscriptions-per-type", "5000", "most active Subscriptions whose criteria are on one resource type; one more gets 422")
	cache := add("search-cache-bytes", "128MiB", "what paging may carry: a search's query (sealed into its links) or an instance $everything's ids (kept in the database); one may take a quarter")
	return func() (Limits, error) {
		var l Limits
		var err error
		positive := func(name, v string, dst *int) {
			if err != nil {
				return
			}
			n, perr := strconv.Atoi(v)
			if perr != nil || n < 1 {
				err = fmt.Errorf("-%s: %q is not a positive number", name, v)
			}
			*dst = n
		}
		duration := func(name, v string, dst *time.Duration) {
			if err != nil {
				return
			}
			d, perr := time.ParseDuration(v)
			if perr != nil || d <= 0 {
				err = fmt.Errorf("-%s: %q is not a positive duration such as 30s", name, v)
			}
			*dst = d
		}
		positive("max-bundle-entries", *bundle, &l.MaxBundleEntries)
		positive("large-bundle-entries", *large, &l.LargeBundleEntries)
		positive("max-connections", *conns, &l.MaxConnections)
		positive("max-expensive", *expensive, &l.MaxExpensive)
		positive("max-expensive-per-client", *perClient, &l.MaxExpensivePerClient)
		positive("notify-max-outbox", *outbox, &l.NotifyMaxOutbox)
		positive("max-subscriptions-per-type", *perType, &l.MaxSubscriptionsPerType)
		duration("read-header-timeout", *readHeader, &l.ReadHeaderTimeout)
		duration("read-timeout", *read, &l.ReadTimeout)
		duration("write-timeout", *write, &l.WriteTimeout)
		duration("idle-timeout", *idle, &l.IdleTimeout)
		if err != nil {
			return l, err
		}
		h, err := parseSize(*header)
		if err != nil || h < 4<<10 {
			return l, fmt.Errorf("-max-header-bytes: %q is not a size of at least 4KiB", *header)
		}
		l.MaxHeaderBytes = int(h)
		if l.SearchCacheBytes, err = parseSize(*cache); err != nil {
			return l, fmt.Errorf("-search-cache-bytes: %w", err)
		}
		return l, nil
	}
}

// defaultLimits are the defaults of every limit flag (for tests and
// programs that build a Config by hand).
func defaultLimits() Limits {
	l, err := limitFlags(flag.NewFlagSet("", flag.ContinueOnError), func(_, def string) string { return def })()
	if err != nil {
		panic(err)
	}
	return l
}

// httpServer is the HTTP server with the limits applied: header size and
// timeouts on the server, the body and answer deadlines per request.
func (l Limits) httpServer(h http.Handler) *http.Server {
	if l == (Limits{}) {
		l = defaultLimits()
	}
	return &http.Server{
		Handler:           limit.Deadlines(l.ReadTimeout, l.WriteTimeout)(h),
		ReadHeaderTimeout: l.ReadHeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
	}
}

// listener caps the connections served at once.
func (l Limits) listener(ln net.Listener) net.Listener {
	if l.MaxConnections <= 0 {
		return ln
	}
	return netutil.LimitListener(ln, l.MaxConnections)
}

// fhir sets the FHIR server's share of the limits.
func (l Limits) fhir(cfg *fhir.Config) {
	cfg.MaxBundleEntries = l.MaxBundleEntries
	cfg.LargeBundleEntries = l.LargeBundleEntries
	cfg.SearchCacheBytes = l.SearchCacheBytes
	cfg.Limiter = limit.New(l.MaxExpensive, l.MaxExpensivePerClient, 5*time.Second)
}
