package eligibility_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy/tuuthfairytest"
	"github.com/p2pserver/p2pserver/facades/verifytreatment/verifytreatmenttest"
)

// TestVendorRetryAfterIsHonoured holds the rule that a vendor's
// Retry-After (RFC 9110 section 10.2.3: delay-seconds or an HTTP-date) on a
// refused call holds the retry back at least that long, whatever the
// worker's own backoff (10 ms here), for every vendor. The vendor refuses
// the create call once; the retry must not arrive before the time it gave.
func TestVendorRetryAfterIsHonoured(t *testing.T) {
	type vendor struct {
		e       *env
		refuse  func(status int, retryAfter string) // the next call answers status with Retry-After
		times   func() []time.Time                  // arrivals of the create call
		request map[string]any
	}
	sohar := func(t *testing.T) vendor {
		e, sim := soharEnv(t, nil)
		o := defaults()
		return vendor{e: e, request: eligibilityRequest(o),
			refuse: func(st int, ra string) { sim.RetryAfter(ra); sim.FailNext(st) },
			times:  func() []time.Time { return sim.CallTimes("POST /v2/verifications") }}
	}
	vt := func(t *testing.T) vendor {
		e, sim := vtEnv(t, nil)
		sim.Script("RA-1", verifytreatmenttest.Script{})
		return vendor{e: e, request: vtRequest("87726", "RA-1"),
			refuse: func(st int, ra string) { sim.RetryAfter(ra); sim.FailNext(st) },
			times:  func() []time.Time { return sim.CallTimes("POST /vobs") }}
	}
	tf := func(t *testing.T) vendor {
		e, sim := tfEnv(t)
		sim.Script("RA-2", tuuthfairytest.Script{})
		return vendor{e: e, request: dental("62308", "RA-2"),
			refuse: func(st int, ra string) { sim.RetryAfter(ra); sim.FailNext(st) },
			times:  func() []time.Time { return sim.CallTimes("requestEligibility") }}
	}
	_ = sohartest.StatusEligible
	// inTwo is an HTTP-date some two seconds ahead, fixed when the row
	// runs.
	inTwo := func(time.Time) (string, time.Time) {
		at := time.Now().Add(2500 * time.Millisecond).UTC().Truncate(time.Second)
		return at.Format(http.TimeFormat), at
	}
	cases := []struct {
		name   string
		vendor func(t *testing.T) vendor
		status int
		// retryAfter gives the header and the earliest time a retry may
		// come, from the refused call's arrival.
		retryAfter func(refused time.Time) (string, time.Time)
	}{
		{"Sohar 429 with Retry-After: 1 (the issue's example)", sohar, http.StatusTooManyRequests,
			func(r time.Time) (string, time.Time) { return "1", r.Add(time.Second) }},
		{"Sohar 503 with an HTTP-date", sohar, http.StatusServiceUnavailable, inTwo},
		{"VerifyTreatment 429 with Retry-After: 1", vt, http.StatusTooManyRequests,
			func(r time.Time) (string, time.Time) { return "1", r.Add(time.Second) }},
		{"VerifyTreatment 503 with an HTTP-date", vt, http.StatusServiceUnavailable, inTwo},
		{"tuuthfairy 429 with Retry-After: 2", tf, http.StatusTooManyRequests,
			func(r time.Time) (string, time.Time) { return "2", r.Add(2 * time.Second) }},
		{"a malformed Retry-After falls back to the backoff", sohar, http.StatusTooManyRequests,
			func(r time.Time) (string, time.Time) { return "soon", r }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := c.vendor(t)
			header, dateEarliest := c.retryAfter(time.Now())
			v.refuse(c.status, header)
			r := v.e.do("POST", "/fhir/CoverageEligibilityRequest/$submit", v.request)
			if r.Status != http.StatusOK || r.JSON["outcome"] != "complete" {
				t.Fatalf("$submit: %d %s", r.Status, r.Body)
			}
			times := v.times()
			if len(times) != 2 {
				t.Fatalf("the create call was made %d times, want 2 (refused, retried)", len(times))
			}
			earliest := dateEarliest
			if _, err := http.ParseTime(header); err != nil {
				_, earliest = c.retryAfter(times[0]) // delay-seconds count from the refusal
			}
			if times[1].Before(earliest) {
				t.Errorf("retried %v after the refusal, before the Retry-After %q allowed (%v)", times[1].Sub(times[0]), header, earliest.Sub(times[0]))
			}
		})
	}
}
