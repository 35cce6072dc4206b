package main

import (
	"context"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// The heap budget: with GOGC=400 (see main) the heap grows to five times
// what is live before a collection, which buys write throughput while
// little is live, and would hold hundreds of megabytes of garbage once the
// database's own bookkeeping (bbolt's free page map grows with the file)
// is live. So, unless GOMEMLIMIT is set, a soft memory limit follows the
// live heap: heapFloor, or twice the live heap when that is more, so that
// collections never come more often than GOGC=100 would make them.
//
// The limit is set again at the end of every collection (and, as a
// backstop, every heapRetune): a limit that lagged behind a live heap
// growing fast (a 10,000-entry transaction being prepared) would make the
// collector run back to back until the next retune.
const (
	heapFloor   = 128 << 20
	heapRetune  = 2 * time.Second
	heapPerLive = 2
)

// heapLimit returns the soft memory limit for a live heap of live bytes.
func heapLimit(live uint64) int64 {
	if live > math.MaxInt64/heapPerLive {
		return math.MaxInt64
	}
	return max(heapFloor, int64(live)*heapPerLive)
}

// gcSentinel is an object nothing keeps: its cleanup runs after the
// collection that finds it unreachable, that is after each collection.
// It is larger than the tiny-allocator size so that it is an object of its
// own.
type gcSentinel [64]byte

// tuneHeap keeps the soft memory limit at heapLimit of the live heap until
// ctx ends: after every collection, and every heapRetune.
func tuneHeap(ctx context.Context) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	set := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			debug.SetMemoryLimit(heapLimit(sample[0].Value.Uint64()))
		}
	}
	set()
	retuned := make(chan struct{}, 1)
	var arm func()
	arm = func() {
		runtime.AddCleanup(new(gcSentinel), func(struct{}) {
			if ctx.Err() != nil {
				return
			}
			select {
			case retuned <- struct{}{}:
			default:
			}
			arm()
		}, struct{}{})
	}
	arm()
	t := time.NewTicker(heapRetune)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retuned:
			set()
		case <-t.C:
			set()
		}
	}
}
