package slots

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// Never more units at once than slots, whoever asks.
func TestSlotsBound(t *testing.T) {
	s := New(2)
	var in, most atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			n := in.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			in.Add(-1)
			s.Release()
		}()
	}
	wg.Wait()
	if most.Load() > 2 {
		t.Errorf("%d units at once with 2 slots", most.Load())
	}
}

// A waiter gives up when its context ends; a nil pool bounds nothing.
func TestSlotsCancelAndNil(t *testing.T) {
	s := New(1)
	if err := s.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Acquire(ctx); err == nil {
		t.Error("Acquire on a full pool with an ended context succeeded")
	}
	var none *Slots
	if err := none.Acquire(ctx); err != nil {
		t.Errorf("nil pool: %v", err)
	}
	none.Release()
}
