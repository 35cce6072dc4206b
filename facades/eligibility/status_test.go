package eligibility

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rows is a connector reduced to its status table, to test the table's
// own rules; vendor behaviour is tested against the simulators.
type rows []StatusMapping

func (r rows) Vendor() string                  { return "test" }
func (r rows) Statuses() []StatusMapping       { return r }
func (r rows) Check(Route, *Request) []Problem { return nil }
func (r rows) Submit(context.Context, Route, *Request) (Result, error) {
	return Result{}, nil
}
func (r rows) Poll(context.Context, Route, string, *Request) (Result, error) {
	return Result{}, nil
}
func (r rows) Webhook(context.Context, http.Header, []byte) ([]Notice, error) { return nil, nil }

func TestStatusTableRefusesContradictions(t *testing.T) {
	cases := map[string]StatusMapping{
		"final without outcome":    {Status: "a", Task: TaskCompleted},
		"waiting with outcome":     {Status: "a", Task: TaskInProgress, Outcome: "complete", InForce: "true"},
		"error without code":       {Status: "a", Task: TaskFailed, Outcome: "error"},
		"complete with code":       {Status: "a", Task: TaskCompleted, Outcome: "complete", InForce: "true", Error: ErrMemberID},
		"complete without inforce": {Status: "a", Task: TaskCompleted, Outcome: "complete"},
		"failed task, complete":    {Status: "a", Task: TaskFailed, Outcome: "complete", InForce: "true"},
		"completed task, error":    {Status: "a", Task: TaskCompleted, Outcome: "error", Error: ErrMemberID},
		"unknown task status":      {Status: "a", Task: "accepted"},
		"unknown outcome":          {Status: "a", Task: TaskCompleted, Outcome: "partial", InForce: "true"},
	}
	for name, m := range cases {
		if _, err := StatusTable(rows{m}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := StatusTable(rows{{Status: "a", Task: TaskOnHold}, {Status: "a", Task: TaskInProgress}}); err == nil {
		t.Error("a status mapped twice was accepted")
	}
	ok := rows{{Status: "p", Task: TaskInProgress}, {Status: "h", Task: TaskOnHold},
		{Status: "y", Task: TaskCompleted, Outcome: "complete", InForce: "true"},
		{Status: "n", Task: TaskFailed, Outcome: "error", Error: ErrMemberDOB}}
	table, err := StatusTable(ok)
	if err != nil || len(table) != 4 || table[0].Vendor != "test" {
		t.Fatalf("%v %v", table, err)
	}
	md := Markdown(table)
	if !strings.Contains(md, "`member-dob` (Patient.birthDate)") {
		t.Fatalf("markdown: %s", md)
	}
}

func TestBenefitAmounts(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	it := benefitItem(Benefit{ServiceType: "30", Network: "in", Unit: "family", Coinsurance: f(0.125), Copay: f(20.5),
		Deductible: f(1000), DeductibleRemaining: f(1200), OutOfPocketRemaining: f(300)})
	got := map[string]benefitJSON{}
	for _, b := range it.Benefit {
		got[b.Type.Coding[0].Code] = b
	}
	if got["copay-percent"].AllowedString != "12.5%" || got["copay-percent"].AllowedUnsignedInt != nil {
		t.Errorf("coinsurance 0.125: %+v", got["copay-percent"])
	}
	if got["copay"].AllowedMoney.Value != "20.5" {
		t.Errorf("copay: %+v", got["copay"].AllowedMoney)
	}
	// More remaining than the total (a vendor's rounding): used is 0, not negative.
	if got["deductible"].UsedMoney.Value != "0" {
		t.Errorf("deductible used: %+v", got["deductible"].UsedMoney)
	}
	if got["out-of-pocket"].AllowedString != "remaining 300.00 USD" || got["out-of-pocket"].AllowedMoney != nil {
		t.Errorf("remaining only: %+v", got["out-of-pocket"])
	}
	if it.Unit.Coding[0].Code != "family" || it.Term.Coding[0].Code != "annual" || it.Network.Coding[0].Code != "in" {
		t.Errorf("item: %+v", it)
	}
}

func TestSubmitWaitPreference(t *testing.T) {
	limit := 20 * time.Second
	cases := map[string]time.Duration{"": limit, "respond-async": 0, "wait=5": 5 * time.Second, "wait=600": limit,
		"return=representation, wait=3": 3 * time.Second, "handling=lenient; respond-async": 0, "wait=x": limit}
	for h, want := range cases {
		r, _ := http.NewRequest("POST", "/", nil)
		if h != "" {
			r.Header.Set("Prefer", h)
		}
		if got := submitWait(r, limit); got != want {
			t.Errorf("Prefer %q: %s, want %s", h, got, want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		if got := backoff(time.Second, n, 10*time.Second); got != want {
			t.Errorf("backoff(%d) = %s, want %s", n, got, want)
		}
	}
}
