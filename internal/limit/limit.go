// Package limit bounds how much expensive work a server runs at once: in
// total, and for each client. A request that would go past either bound
// is refused at once (never queued), with an error that says when to try
// again: 429 Too Many Requests when the client itself has too much under
// way, 503 Service Unavailable when the server as a whole is at its
// limit. Large transactions, Patient/$everything and bulk kick-offs take
// a slot each; reads and small writes do not.
package limit

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Limiter hands out slots for expensive work. The zero value is not
// usable; build one with New. A nil *Limiter allows everything.
type Limiter struct {
	total, perClient int
	retryAfter       time.Duration

	mu       sync.Mutex
	running  int
	byClient map[string]int
}

// New returns a Limiter allowing total slots at once, at most perClient
// of them to one client (0 for either: no bound). retryAfter is what
// refusals tell the client to wait (default 5s).
func New(total, perClient int, retryAfter time.Duration) *Limiter {
	if retryAfter <= 0 {
		retryAfter = 5 * time.Second
	}
	return &Limiter{total: total, perClient: perClient, retryAfter: retryAfter, byClient: map[string]int{}}
}

// Acquire takes a slot for client, for work described by what ("a
// transaction of 5,000 entries"). It returns the function that gives the
// slot back (call it exactly once), or an errs.TooMany (the client's
// bound) or errs.Transient (the server's) error with RetryAfter set.
func (l *Limiter) Acquire(client, what string) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perClient > 0 && l.byClient[client] >= l.perClient {
		return nil, errs.E("limit.acquire", errs.TooMany, l.retryAfter, fmt.Sprintf(
			"%s is refused: this client already has %d such requests under way, the most allowed at once; try again when one has finished", what, l.byClient[client]))
	}
	if l.total > 0 && l.running >= l.total {
		return nil, errs.E("limit.acquire", errs.Transient, l.retryAfter, fmt.Sprintf(
			"%s is refused: the server is running %d such requests, the most it takes at once; try again shortly", what, l.running))
	}
	l.running++
	l.byClient[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.running--
			if l.byClient[client]--; l.byClient[client] <= 0 {
				delete(l.byClient, client)
			}
		})
	}, nil
}

// Running returns how many slots are taken.
func (l *Limiter) Running() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running
}

// ClientIP is a client key for requests without an authenticated
// identity: the remote IP address (without the port, so that a client's
// many connections count as one).
func ClientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return "ip:" + r.RemoteAddr
	}
	return "ip:" + host
}
