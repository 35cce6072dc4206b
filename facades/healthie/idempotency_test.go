package healthie_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/healthie"
	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
)

// TestHealthieCreatesAreNeverRepeatedBlindly holds, for the Healthie
// mutations that create (createClient, createAppointment), the rule every
// vendor create call follows: one that may have been carried out though
// it failed (its answer came after the facade gave up, or 500/502/504) is
// never sent again; the facade looks for what it made (Healthie's advice
// against duplicate accounts: search by email and name first; a booking by
// patient, provider, type and start) and answers with it, and one refused
// before Healthie acted (503) is answered as refused. Healthie ends up
// with at most one record either way. The simulator forces the timeouts:
// it carries the mutation out and answers it late.
func TestHealthieCreatesAreNeverRepeatedBlindly(t *testing.T) {
	t.Parallel()
	const late = time.Second
	patient := func(email string) map[string]any {
		p := map[string]any{"resourceType": "Patient", "name": []any{map[string]any{"family": "Meitner", "given": []any{"Lise"}}},
			"birthDate": "1878-11-07", "gender": "female"}
		if email != "" {
			p["telecom"] = []any{map[string]any{"system": "email", "value": email}}
		}
		return p
	}
	countClients := func(e *env) int {
		n := 0
		e.sim.Mutate(func(st *healthietest.State) {
			for _, u := range st.Users {
				if u.LastName == "Meitner" {
					n++
				}
			}
		})
		return n
	}
	cases := []struct {
		name    string
		op      string // the mutation's operation name
		fault   func(s *healthietest.Simulator, op string)
		create  func(e *env) *answer
		status  int // what the facade answers
		records int // Meitner clients or new appointments at Healthie
	}{
		{"createClient answered after the facade gave up", "CreateClient",
			func(s *healthietest.Simulator, op string) { s.AnswerLate(op, late) },
			func(e *env) *answer { return e.facade(http.MethodPost, "/Patient", patient("lise@example.org")) }, 201, 1},
		{"createClient without an email answered after the facade gave up", "CreateClient",
			func(s *healthietest.Simulator, op string) { s.AnswerLate(op, late) },
			func(e *env) *answer { return e.facade(http.MethodPost, "/Patient", patient("")) }, 201, 1},
		{"createClient answered 500 without creating", "CreateClient",
			func(s *healthietest.Simulator, op string) { s.FailNext(op, http.StatusInternalServerError) },
			func(e *env) *answer { return e.facade(http.MethodPost, "/Patient", patient("lise@example.org")) }, 503, 0},
		{"createClient refused with 503", "CreateClient",
			func(s *healthietest.Simulator, op string) { s.FailNext(op, http.StatusServiceUnavailable) },
			func(e *env) *answer { return e.facade(http.MethodPost, "/Patient", patient("lise@example.org")) }, 503, 0},
		{"createAppointment answered after the facade gave up", "CreateAppointment",
			func(s *healthietest.Simulator, op string) { s.AnswerLate(op, late) },
			func(e *env) *answer {
				start := time.Now().Add(96 * time.Hour).UTC().Truncate(time.Hour).Format(time.RFC3339)
				return e.facade(http.MethodPost, "/Appointment", appointmentFor(e.demo.Patients[0], e.demo.Providers[0], e.demo.Types[0], start))
			}, 201, 1},
		{"createAppointment answered 502 without booking", "CreateAppointment",
			func(s *healthietest.Simulator, op string) { s.FailNext(op, http.StatusBadGateway) },
			func(e *env) *answer {
				start := time.Now().Add(96 * time.Hour).UTC().Truncate(time.Hour).Format(time.RFC3339)
				return e.facade(http.MethodPost, "/Appointment", appointmentFor(e.demo.Patients[0], e.demo.Providers[0], e.demo.Types[0], start))
			}, 503, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, patients(2), withOptions(func(o *healthie.Options) { o.Timeout = 300 * time.Millisecond }))
			before := len(e.appointments())
			e.sim.ResetRequests()
			c.fault(e.sim, c.op)
			a := c.create(e)
			if a.Status != c.status {
				t.Errorf("answered %d %s, want %d", a.Status, a.Body, c.status)
			}
			calls := 0
			for _, r := range e.sim.Requests() {
				if r.OperationName == c.op {
					calls++
				}
			}
			if calls != 1 {
				t.Errorf("%s was sent %d times, want once", c.op, calls)
			}
			records := countClients(e)
			if c.op == "CreateAppointment" {
				records = len(e.appointments()) - before
			}
			if records != c.records {
				t.Errorf("Healthie holds %d new records, want %d", records, c.records)
			}
			if c.status == 201 {
				if id, _ := a.JSON["id"].(string); id == "" {
					t.Errorf("201 without the record: %s", a.Body)
				}
			}
		})
	}
}
