package main

import (
	"context"
	"sync"
	"time"
)

// healthTTL is how long /healthz answers from the database's last answer
// to a read before it asks again.
const healthTTL = time.Second

// healthTimeout bounds one read of the health check.
const healthTimeout = 5 * time.Second

// healthCheck answers whether the database answers a read, from its last
// answer while that is younger than healthTTL: a load balancer or monitor
// polling /healthz hard costs the database one read a second, not one per
// request (on PostgreSQL each read is a round trip, and /healthz is the
// HTTP floor p2pload measures). Requests that come while a read is under
// way wait for its answer.
type healthCheck struct {
	ping func(context.Context) error
	now  func() time.Time

	mu  sync.Mutex
	at  time.Time // when err was answered; zero: never
	err error
}

func newHealthCheck(ping func(context.Context) error) *healthCheck {
	return &healthCheck{ping: ping, now: time.Now}
}

// check returns nil when the database answered a read within healthTTL,
// else the error of its last read. The read does not end with the
// request that started it (others may be waiting for it), only with
// healthTimeout.
func (h *healthCheck) check(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.at.IsZero() && h.now().Sub(h.at) < healthTTL {
		return h.err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), healthTimeout)
	defer cancel()
	h.err = h.ping(ctx)
	h.at = h.now()
	return h.err
}
