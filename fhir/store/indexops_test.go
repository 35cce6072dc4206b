package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// randomIndexOps is n changes in random key order; with ids, among ids
// resources, so that one key may get several changes.
func randomIndexOps(n, ids int) []indexOp {
	r := rand.New(rand.NewPCG(1, 2))
	ops := make([]indexOp, n)
	for i := range ops {
		key := fmt.Appendf(nil, "c\x01code-%d\x00id%d", r.IntN(1000), r.IntN(ids))
		if r.IntN(3) == 0 {
			ops[i] = indexOp{kv: key, klen: -int32(len(key))}
		} else {
			ops[i] = indexOp{kv: fmt.Appendf(key, "%d", i), klen: int32(len(key))}
		}
	}
	return ops
}

// TestSortIndexOps: the changes come out by key, and the changes to one
// key in the order they were queued (a delete then a put of the same key
// must not become a put then a delete).
func TestSortIndexOps(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 100, 5000} {
		ops := randomIndexOps(n, max(n/500, 1))
		want := slices.Clone(ops)
		slices.SortStableFunc(want, func(a, b indexOp) int { return bytes.Compare(a.key(), b.key()) })
		sortIndexOps(ops)
		for i := range ops {
			if !bytes.Equal(ops[i].kv, want[i].kv) || ops[i].klen != want[i].klen {
				t.Fatalf("n=%d: change %d is %q=%q (del %v), want %q=%q (del %v)", n, i,
					ops[i].key(), ops[i].value(), ops[i].del(), want[i].key(), want[i].value(), want[i].del())
			}
		}
	}
}

// BenchmarkSortIndexOps sorts the 90,000 index changes of a transaction
// of 10,000 resources, queued in no key order.
func BenchmarkSortIndexOps(b *testing.B) {
	src := randomIndexOps(90000, 10000)
	ops := make([]indexOp, len(src))
	b.Run("stable", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			copy(ops, src)
			b.StartTimer()
			slices.SortStableFunc(ops, func(a, b indexOp) int { return bytes.Compare(a.key(), b.key()) })
		}
	})
	b.Run("sortIndexOps", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			copy(ops, src)
			b.StartTimer()
			sortIndexOps(ops)
		}
	})
}
