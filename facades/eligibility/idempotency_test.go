package eligibility_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/sohar"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy/tuuthfairytest"
	"github.com/p2pserver/p2pserver/facades/verifytreatment"
	"github.com/p2pserver/p2pserver/facades/verifytreatment/verifytreatmenttest"
)

// TestVendorCreatesAreNeverRepeatedBlindly holds the rule that a vendor
// call that creates something (each may be billed) is never repeated in a
// way that could create it twice, for every vendor's create call: when
// such a call fails in a way that leaves open whether the vendor carried
// it out (its answer came after the client gave up, or it was answered
// 500/502), the server finds what it made by what the vendor documents
// before sending anything again (VerifyTreatment: List VOB by the member,
// View VOB), or waits for the vendor's webhook that names the check by
// this server's id (Sohar: every verification's webhook carries the
// Create Verification "id"), or, when the vendor documents neither
// (tuuthfairy), fails the check saying so. A call the vendor refused
// before acting (503, 429) is simply repeated. The simulators force the
// timeouts: they carry the call out and answer it late.
func TestVendorCreatesAreNeverRepeatedBlindly(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const late = 1200 * time.Millisecond
	type outcome struct {
		task, code, text string // the Task's status, the response's error code and a part of its text
	}
	completed := outcome{task: "completed"}
	cases := []struct {
		name string
		run  func(t *testing.T) (created, calls int, got outcome)
		// created is how many checks the vendor holds, calls how many
		// create calls it received.
		created, calls int
		want           outcome
	}{
		{name: "Sohar: Create Verification answered after the client gave up (the issue's example)", created: 1, calls: 1, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := soharTimed(t, timeout, 20*time.Second)
				sim.AnswerLate("POST /v2/verifications", late)
				got := check(t, e, eligibilityRequest(defaults()))
				return len(sim.Verifications()), sim.Calls("POST /v2/verifications"), got
			}},
		{name: "Sohar: the webhook naming the verification comes only after the call failed", created: 1, calls: 1, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := soharTimed(t, timeout, 20*time.Second)
				o := defaults()
				o.member = "LATE-HOOK"
				sim.Script("LATE-HOOK", sohartest.Script{Pending: true})
				sim.SetWebhook("") // the pending webhook is not delivered
				sim.AnswerLate("POST /v2/verifications", late)
				r := e.do("POST", "/fhir/CoverageEligibilityRequest", eligibilityRequest(o))
				if r.Status != http.StatusCreated {
					t.Fatalf("create: %d %s", r.Status, r.Body)
				}
				reqID := idOf(r.JSON)
				e.eventually("the create call to fail", func() bool { return sim.Calls("POST /v2/verifications") == 1 && len(sim.Verifications()) == 1 })
				time.Sleep(late + timeout) // the call has failed on our side and is held unconfirmed
				sim.SetWebhook(e.URL + "/api/webhooks/sohar")
				sim.Resolve(sim.Verifications()[0].VerificationID)
				e.eventually("the answer", func() bool { return e.responseFor(reqID) != nil })
				return len(sim.Verifications()), sim.Calls("POST /v2/verifications"), outcomeOf(e, reqID)
			}},
		{name: "Sohar: Create Verification answered 500, and no webhook ever names it", created: 0, calls: 1,
			want: outcome{task: "failed", code: "payer-unreachable", text: "was not sent again"},
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := soharTimed(t, timeout, time.Second)
				sim.FailNext(http.StatusInternalServerError)
				got := check(t, e, eligibilityRequest(defaults()))
				return len(sim.Verifications()), sim.Calls("POST /v2/verifications"), got
			}},
		{name: "Sohar: 503 (refused before acting) is simply repeated", created: 1, calls: 2, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := soharTimed(t, timeout, 20*time.Second)
				sim.FailNext(http.StatusServiceUnavailable)
				got := check(t, e, eligibilityRequest(defaults()))
				return len(sim.Verifications()), sim.Calls("POST /v2/verifications"), got
			}},
		{name: "VerifyTreatment: Create VOB answered after the client gave up", created: 1, calls: 1, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := vtTimed(t, timeout)
				sim.AnswerLate("POST /vobs", late)
				got := check(t, e, vtRequest("87726", "IDEM-1"))
				if sim.Calls("GET /vobs") == 0 {
					t.Error("the VOB was not looked for with List VOB")
				}
				return len(sim.VOBs()), sim.Calls("POST /vobs"), got
			}},
		{name: "VerifyTreatment: Create VOB answered 502 without creating one", created: 1, calls: 2, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := vtTimed(t, timeout)
				sim.FailNext(http.StatusBadGateway)
				got := check(t, e, vtRequest("87726", "IDEM-2"))
				return len(sim.VOBs()), sim.Calls("POST /vobs"), got
			}},
		{name: "VerifyTreatment: Re-Verify VOB answered after the client gave up", created: 1, calls: 1, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := vtTimed(t, timeout)
				if got := check(t, e, vtRequest("87726", "IDEM-3")); got != completed {
					t.Fatalf("first check: %+v", got)
				}
				sim.AnswerLate("POST /vobs/verify", late)
				got := check(t, e, vtRequest("87726", "IDEM-3"))
				if v := sim.VOBs(); len(v) != 1 || v[0].Reverified != 1 {
					t.Errorf("the VOB was re-verified %d times, want once", v[0].Reverified)
				}
				return len(sim.VOBs()), sim.Calls("POST /vobs/verify"), got
			}},
		{name: "tuuthfairy: requestEligibility answered after the client gave up", created: 1, calls: 1,
			want: outcome{task: "failed", code: "payer-unreachable", text: "was not sent again"},
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := tfTimed(t, timeout)
				sim.AnswerLate("requestEligibility", late)
				got := check(t, e, dental("62308", "IDEM-4"))
				n := sim.Calls("requestEligibility")
				return n, n, got
			}},
		{name: "tuuthfairy: 503 (refused before acting) is simply repeated", created: 1, calls: 2, want: completed,
			run: func(t *testing.T) (int, int, outcome) {
				e, sim := tfTimed(t, timeout)
				sim.Script("IDEM-5", tuuthfairytest.Script{})
				sim.FailNext(http.StatusServiceUnavailable)
				got := check(t, e, dental("62308", "IDEM-5"))
				return 1, sim.Calls("requestEligibility"), got
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			created, calls, got := c.run(t)
			if created != c.created || calls != c.calls {
				t.Errorf("the vendor holds %d checks after %d create calls; want %d after %d", created, calls, c.created, c.calls)
			}
			if got.task != c.want.task || got.code != c.want.code || !strings.Contains(got.text, c.want.text) {
				t.Errorf("outcome %+v, want %+v", got, c.want)
			}
		})
	}
}

// check creates a request and waits for its response.
func check(t *testing.T, e *env, req map[string]any) struct{ task, code, text string } {
	t.Helper()
	r := e.do("POST", "/fhir/CoverageEligibilityRequest", req)
	if r.Status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.Status, r.Body)
	}
	reqID := idOf(r.JSON)
	e.eventually("the answer", func() bool { return e.responseFor(reqID) != nil })
	return outcomeOf(e, reqID)
}

func outcomeOf(e *env, reqID string) struct{ task, code, text string } {
	resp := e.responseFor(reqID)
	task, _ := e.taskFor(reqID)["status"].(string)
	return struct{ task, code, text string }{task, errorCode(resp), errorText(resp)}
}

// soharTimed is soharEnv with calls timing out after timeout and
// unconfirmed checks waiting confirmWait for the webhook.
func soharTimed(t *testing.T, timeout, confirmWait time.Duration) (*env, *sohartest.Sim) {
	return soharEnv(t, func(c *eligibility.Config, s *sohar.Config) {
		s.Timeout = eligibility.Duration(timeout)
		c.ConfirmWait = eligibility.Duration(confirmWait)
	})
}

func vtTimed(t *testing.T, timeout time.Duration) (*env, *verifytreatmenttest.Sim) {
	return vtEnv(t, func(c *verifytreatment.Config) { c.Timeout = eligibility.Duration(timeout) })
}

func tfTimed(t *testing.T, timeout time.Duration) (*env, *tuuthfairytest.Sim) {
	return tfEnvWith(t, func(_ *eligibility.Config, c *tuuthfairy.Config) { c.Timeout = eligibility.Duration(timeout) })
}

// TestCreateCallCutShortIsNeverRepeated holds the same rule when the
// process making a create call stops (dies, or is restarted) before the
// vendor answers: whoever takes the check over (the same server after a
// restart, or another process on the database once the lease expires)
// knows a create call may have been carried out, and finds it (Finder) or
// fails saying it was not sent again, rather than making it twice.
func TestCreateCallCutShortIsNeverRepeated(t *testing.T) {
	const late = 3 * time.Second
	cases := []struct {
		name           string
		run            func(t *testing.T) (created, calls int, got struct{ task, code, text string })
		created, calls int
		task, text     string
	}{
		{name: "VerifyTreatment: the VOB made before the stop is found with List VOB", created: 1, calls: 1, task: "completed",
			run: func(t *testing.T) (int, int, struct{ task, code, text string }) {
				e, sim := vtTimed(t, time.Minute)
				sim.AnswerLate("POST /vobs", late)
				r := e.do("POST", "/fhir/CoverageEligibilityRequest", vtRequest("87726", "CUT-1"))
				if r.Status != http.StatusCreated {
					t.Fatalf("create: %d %s", r.Status, r.Body)
				}
				reqID := idOf(r.JSON)
				e.eventually("the create call", func() bool { return sim.Calls("POST /vobs") == 1 })
				e.restart()
				e.eventually("the answer", func() bool { return e.responseFor(reqID) != nil })
				if sim.Calls("GET /vobs") == 0 {
					t.Error("the VOB was not looked for with List VOB")
				}
				return len(sim.VOBs()), sim.Calls("POST /vobs"), outcomeOf(e, reqID)
			}},
		{name: "tuuthfairy: no way to find it, so the check fails saying so", created: 1, calls: 1, task: "failed", text: "was not sent again",
			run: func(t *testing.T) (int, int, struct{ task, code, text string }) {
				e, sim := tfTimed(t, time.Minute)
				sim.AnswerLate("requestEligibility", late)
				r := e.do("POST", "/fhir/CoverageEligibilityRequest", dental("62308", "CUT-2"))
				if r.Status != http.StatusCreated {
					t.Fatalf("create: %d %s", r.Status, r.Body)
				}
				reqID := idOf(r.JSON)
				e.eventually("the create call", func() bool { return sim.Calls("requestEligibility") == 1 })
				e.restart()
				e.eventually("the answer", func() bool { return e.responseFor(reqID) != nil })
				n := sim.Calls("requestEligibility")
				return n, n, outcomeOf(e, reqID)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			created, calls, got := c.run(t)
			if created != c.created || calls != c.calls {
				t.Errorf("the vendor holds %d checks after %d create calls; want %d after %d", created, calls, c.created, c.calls)
			}
			if got.task != c.task || !strings.Contains(got.text, c.text) {
				t.Errorf("outcome %+v, want task %s and a text with %q", got, c.task, c.text)
			}
		})
	}
}
