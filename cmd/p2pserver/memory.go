package main

import (
	"context"
	"math"
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

// tuneHeap keeps the soft memory limit at heapLimit of the live heap until
// ctx ends.
func tuneHeap(ctx context.Context) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	set := func() {
		metrics.Read(sample)
		if sample[0].Value.Kind() == metrics.KindUint64 {
			debug.SetMemoryLimit(heapLimit(sample[0].Value.Uint64()))
		}
	}
	set()
	t := time.NewTicker(heapRetune)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			set()
		}
	}
}
