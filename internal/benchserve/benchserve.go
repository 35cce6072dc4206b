// Package benchserve times an http.Handler inside a benchmark: the
// requests made before the timing, each answer dropped after its status
// and size are checked, and the process's CPU time per request reported
// beside the wall time (a loaded machine disturbs it less).
package benchserve

import (
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// Serve serves GET paths in turn for b's loop, each expected to answer
// 200 with a body, and reports allocations and "cpu-ns/op", the CPU time
// (user and system, all goroutines) per request in nanoseconds.
func Serve(b *testing.B, h http.Handler, paths []string) {
	reqs := make([]*http.Request, len(paths))
	for i, p := range paths {
		reqs[i] = httptest.NewRequest(http.MethodGet, p, nil)
	}
	w := NewDiscard()
	b.ReportAllocs()
	cpu0 := CPU(b)
	for i := 0; b.Loop(); i++ {
		w.Reset()
		h.ServeHTTP(w, reqs[i%len(reqs)])
		if w.Status != http.StatusOK || w.N == 0 {
			b.Fatalf("GET %s: %d, %d bytes", paths[i%len(paths)], w.Status, w.N)
		}
	}
	b.ReportMetric(float64(CPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// CPU is the CPU time the process has used, user and system, in
// nanoseconds.
func CPU(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// Discard is an http.ResponseWriter that drops the answer, keeping its
// Status and counting its body's bytes (N). It takes deadlines, as a
// connection's writer does.
type Discard struct {
	h         http.Header
	Status, N int
}

// NewDiscard returns a Discard with no answer yet.
func NewDiscard() *Discard { return &Discard{h: http.Header{}} }

// Reset forgets the last answer, for the next request.
func (w *Discard) Reset() {
	clear(w.h)
	w.Status, w.N = 0, 0
}

func (w *Discard) Header() http.Header { return w.h }
func (w *Discard) WriteHeader(status int) {
	if w.Status == 0 {
		w.Status = status
	}
}
func (w *Discard) Write(p []byte) (int, error) {
	if w.Status == 0 {
		w.Status = http.StatusOK
	}
	w.N += len(p)
	return len(p), nil
}
func (w *Discard) SetReadDeadline(time.Time) error  { return nil }
func (w *Discard) SetWriteDeadline(time.Time) error { return nil }
