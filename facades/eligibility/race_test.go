package eligibility_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/sohar"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy/tuuthfairytest"
)

// TestWebhookOvertakingAPollIsNotLost holds the rule that no vendor
// webhook is lost to a race: a webhook that arrives, and is acknowledged,
// while the worker's call about the same check is in flight must make the
// worker ask again at once, though the call's answer (read before the
// change) says the check is still pending. The simulators force the race:
// the vendor resolves the check during the call and delivers its webhook,
// answered, before the call's answer. Polls are an hour apart, so only the
// webhook can bring the answer while the test waits.
func TestWebhookOvertakingAPollIsNotLost(t *testing.T) {
	hour := eligibility.Duration(time.Hour)
	slowPolls := func(c *eligibility.Config) { c.PollInterval, c.MaxPollInterval = hour, hour }
	type vendor struct {
		start     func(t *testing.T) (e *env, deliveries func() []int)
		request   map[string]any
		calls     func() int // the vendor calls that read the check
		readsWant int
	}
	sohar := func(script sohartest.Script) func(t *testing.T) (vendor, string) {
		return func(t *testing.T) (vendor, string) {
			var sim *sohartest.Sim
			o := defaults()
			o.member = "RACE-1"
			v := vendor{request: eligibilityRequest(o), readsWant: 2}
			v.start = func(t *testing.T) (*env, func() []int) {
				var e *env
				e, sim = soharEnv(t, func(c *eligibility.Config, _ *sohar.Config) { slowPolls(c) })
				sim.Script("RACE-1", script)
				return e, func() []int {
					var st []int
					for _, d := range sim.Deliveries() {
						st = append(st, d.Status)
					}
					return st
				}
			}
			v.calls = func() int { return sim.Calls("GET /v2/verifications/{id}") }
			return v, "sohar"
		}
	}
	tuuthfairy := func(script tuuthfairytest.Script, late ...time.Duration) func(t *testing.T) (vendor, string) {
		return func(t *testing.T) (vendor, string) {
			var sim *tuuthfairytest.Sim
			v := vendor{request: dental("62308", "RACE-2"), readsWant: 2}
			v.start = func(t *testing.T) (*env, func() []int) {
				var e *env
				e, sim = tfEnvWith(t, func(c *eligibility.Config, _ *tuuthfairy.Config) { slowPolls(c) })
				sim.Script("RACE-2", script)
				for _, d := range late {
					sim.AnswerLate("requestEligibility", d)
				}
				return e, func() []int {
					var st []int
					for _, d := range sim.Deliveries() {
						st = append(st, d.Status)
					}
					return st
				}
			}
			v.calls = func() int { return sim.Calls("eligibility") }
			return v, "tuuthfairy"
		}
	}
	cases := []struct {
		name    string
		vendor  func(t *testing.T) (vendor, string)
		task    string // the Task's final status
		outcome string
		inforce any
		errCode string
	}{
		{"Sohar verification.updated overtakes Get Verification (eligible)",
			sohar(sohartest.Script{Pending: true, ResolveDuringGet: 1}), "completed", "complete", true, ""},
		{"Sohar verification.updated overtakes Get Verification (ineligible)",
			sohar(sohartest.Script{Pending: true, ResolveDuringGet: 1, Status: sohartest.StatusIneligible, Reason: sohartest.ReasonInactive}),
			"completed", "complete", false, ""},
		{"Sohar verification.updated overtakes Get Verification (member dob error)",
			sohar(sohartest.Script{Pending: true, ResolveDuringGet: 1, Status: sohartest.StatusErrorMemberDOB}), "failed", "error", nil, "member-dob"},
		{"tuuthfairy eligibility_ok overtakes the eligibility query",
			tuuthfairy(tuuthfairytest.Script{ResolveDuringRead: true}), "completed", "complete", true, ""},
		{"tuuthfairy eligibility_failed overtakes the eligibility query",
			tuuthfairy(tuuthfairytest.Script{ResolveDuringRead: true, Failure: "invalid_member_id"}), "failed", "error", nil, "member-id"},
		// The webhook about a new eligibility request comes while
		// requestEligibility's answer, which names it, is still on its
		// way: the job learns the ref after the news.
		{"tuuthfairy eligibility_requested overtakes requestEligibility's answer",
			tuuthfairy(tuuthfairytest.Script{ResolveDuringRead: true}, 300*time.Millisecond), "completed", "complete", true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, _ := c.vendor(t)
			e, deliveries := v.start(t)
			r := e.do("POST", "/fhir/CoverageEligibilityRequest", v.request)
			if r.Status != http.StatusCreated {
				t.Fatalf("create: %d %s", r.Status, r.Body)
			}
			reqID := idOf(r.JSON)
			e.eventually("the answer the overtaking webhook announced", func() bool { return e.responseFor(reqID) != nil })
			resp := e.responseFor(reqID)
			if resp["outcome"] != c.outcome || inforce(resp) != c.inforce || errorCode(resp) != c.errCode {
				t.Errorf("response: %v", resp)
			}
			if task := e.taskFor(reqID); task["status"] != c.task {
				t.Errorf("task %v, want %s", task["status"], c.task)
			}
			// The race did happen: the first read answered pending after
			// the webhook was acknowledged, and a second read followed.
			if n := v.calls(); n != v.readsWant {
				t.Errorf("the vendor was read %d times, want %d (the overtaken read, then the one the webhook asked for)", n, v.readsWant)
			}
			for _, st := range deliveries() {
				if st != http.StatusOK {
					t.Errorf("a webhook was answered %d: %v", st, deliveries())
				}
			}
		})
	}
}
