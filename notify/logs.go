package notify

import (
	"log/slog"
	"sort"
	"sync"
	"time"
)

// failureLog keeps delivery failures from flooding the log: the first
// failure of a Subscription is logged at once, the next ones of the same
// period are counted, and at the end of the period one line sums them up
// (how many, to where, the last error). A Subscription whose endpoint is
// down for an hour costs one line a period, not one per attempt.
type failureLog struct {
	log   *slog.Logger
	every time.Duration

	mu   sync.Mutex
	subs map[string]*failures
}

// failures are one Subscription's in the current period.
type failures struct {
	since    time.Time // when its period began (its first failure logged)
	count    int       // failures since, not yet logged
	endpoint string
	last     string
}

func newFailureLog(log *slog.Logger, every time.Duration) *failureLog {
	return &failureLog{log: log, every: every, subs: map[string]*failures{}}
}

// note records a failed attempt to deliver for Subscription sub.
func (f *failureLog) note(sub, endpoint, err string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.subs[sub]
	if s == nil || now.Sub(s.since) >= f.every {
		if s != nil && s.count > 0 {
			f.summary(sub, s, now)
		}
		f.subs[sub] = &failures{since: now}
		f.log.Warn("notify: delivery failed", "subscription", sub, "endpoint", endpoint, "err", err,
			"next", "further failures of this Subscription are summed up every "+f.every.String())
		return
	}
	s.count++
	s.endpoint, s.last = endpoint, err
}

// flush logs the sums of the periods that have ended.
func (f *failureLog) flush(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]string, 0, len(f.subs))
	for id := range f.subs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		s := f.subs[id]
		if now.Sub(s.since) < f.every {
			continue
		}
		if s.count > 0 {
			f.summary(id, s, now)
		}
		delete(f.subs, id)
	}
}

func (f *failureLog) summary(sub string, s *failures, now time.Time) {
	f.log.Warn("notify: deliveries failed", "subscription", sub, "failures", s.count,
		"period", now.Sub(s.since).Round(time.Second).String(), "endpoint", s.endpoint, "last_err", s.last)
}
