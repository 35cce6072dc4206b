// Package slots shares a bounded number of work slots among the job
// runners of one process (batch jobs' pages, Bulk Data jobs' slices), so
// that together they never do more than a set number of units of work at
// once. A runner takes a slot for each unit (Acquire) and gives it back
// after (Release); runners waiting for a slot get one in the order they
// asked (Go's channel wait queues are first in, first out), so that no
// kind of job starves the other.
package slots

import "context"

// Slots is a pool of work slots. A nil *Slots bounds nothing.
type Slots struct{ ch chan struct{} }

// New returns a pool of n slots (at least one).
func New(n int) *Slots { return &Slots{ch: make(chan struct{}, max(n, 1))} }

// Acquire takes a slot, waiting for one; it fails only when ctx ends
// first.
func (s *Slots) Acquire(ctx context.Context) error {
	if s == nil {
		return nil
	}
	select {
	case s.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Release gives a slot back; call it once for each successful Acquire.
func (s *Slots) Release() {
	if s != nil {
		<-s.ch
	}
}
