package healthie_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// BenchmarkSearchPage measures one FHIR search page served by the facade:
// FHIR request over loopback, one Healthie GraphQL page from the simulator
// over loopback, mapping, Bundle. It reports resources per second.
func BenchmarkSearchPage(b *testing.B) {
	for _, count := range []int{20, 100} {
		b.Run(fmt.Sprintf("Patient_count=%d", count), func(b *testing.B) {
			e := newEnv(b, patients(200), rateLimit(1_000_000))
			url := fmt.Sprintf("%s/Patient?_count=%d", e.base, count)
			n := 0
			start := time.Now()
			for b.Loop() {
				a := do(b, http.MethodGet, url, nil).want(b, http.StatusOK)
				n += len(entries(a.JSON))
			}
			b.ReportMetric(float64(n)/time.Since(start).Seconds(), "resources/s")
		})
	}
}

// BenchmarkFullSync measures a full sync into the local store of a
// practice of 200 patients (4 resources each, plus providers, locations
// and the organization): the first (every resource written) and a second
// (nothing changed).
func BenchmarkFullSync(b *testing.B) {
	for _, phase := range []string{"first", "unchanged"} {
		b.Run(phase, func(b *testing.B) {
			var total, took float64
			for b.Loop() {
				b.StopTimer()
				e := newEnv(b, patients(200), rateLimit(1_000_000), syncMode())
				if phase == "unchanged" {
					if _, err := e.h.Syncer().SyncAll(context.Background()); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				rep, err := e.h.Syncer().SyncAll(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				took += time.Since(start).Seconds()
				total += float64(rep.Written + rep.Unchanged)
			}
			b.ReportMetric(total/took, "resources/s")
		})
	}
}
