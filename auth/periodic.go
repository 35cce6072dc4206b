package auth

import (
	"context"
	"sync"
	"time"
)

// periodic runs a housekeeping function every period in its own goroutine
// until the context it was started with ends or close is called; close
// waits for the goroutine to end.
type periodic struct {
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// start runs fn every period, first after one period has passed.
func (p *periodic) start(ctx context.Context, period time.Duration, fn func(context.Context)) {
	ctx, p.stop = context.WithCancel(ctx)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			fn(ctx)
		}
	}()
}

// close stops the goroutine, if started, and waits for it.
func (p *periodic) close() {
	if p.stop != nil {
		p.stop()
	}
	p.wg.Wait()
}
