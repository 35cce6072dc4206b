package notify_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/notify"
)

// TestWideFanOutCostsTheWriteOneRow: a write that matches many
// Subscriptions adds one outbox row in its own transaction (the event,
// listed as queued), and the delivery worker makes the notifications from
// it afterwards: every Subscription is called exactly once, across a
// restart in between, and the criteria are matched from the write's index
// entries (Subscriptions on other codes and other types get nothing).
func TestWideFanOutCostsTheWriteOneRow(t *testing.T) {
	e := newEnv(t, withoutMail())
	h := newHook(t)
	const wide = 30
	for i := range wide {
		e.do("POST", "/Subscription", restHook(fmt.Sprintf("%s/s%d", h.srv.URL, i), "Basic?code=urn:fan|wide", "")).want(t, 201)
	}
	for i := range 5 {
		e.do("POST", "/Subscription", restHook(h.srv.URL+"/other", fmt.Sprintf("Basic?code=urn:fan|other-%d", i), "")).want(t, 201)
		e.do("POST", "/Subscription", restHook(h.srv.URL+"/other", "Observation?code=urn:fan|wide", "")).want(t, 201)
	}
	e.n.Close() // no deliveries, no fan-out: the write's own cost is seen
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"coding": []any{map[string]any{"system": "urn:fan", "code": "wide"}}}}).want(t, 201)
	counts := e.notifications("")["counts"].(map[string]any)
	if counts["queued"] != jsonNumber(fmt.Sprint(wide)) || counts["pending"] != jsonNumber("0") {
		t.Fatalf("after the write: %v, want %d queued and no notification made yet", counts, wide)
	}
	e.restart()
	calls := h.wait(t, wide)
	waitFor(t, "an empty outbox", func() bool {
		c := e.notifications("")["counts"].(map[string]any)
		return c["queued"] == jsonNumber("0") && c["pending"] == jsonNumber("0")
	})
	seen := map[string]int{}
	for _, c := range h.calls() {
		seen[c.Header.Get(notify.HeaderSubscription)]++
	}
	if len(calls) != wide || len(seen) != wide {
		t.Errorf("%d calls to %d Subscriptions, want one to each of %d", len(h.calls()), len(seen), wide)
	}
	// A write that matches a few Subscriptions makes their notifications
	// at once.
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"coding": []any{map[string]any{"system": "urn:fan", "code": "other-1"}}}}).want(t, 201)
	h.wait(t, wide+1)
}

// TestSubscriptionsPerTypeAreCapped: past -max-subscriptions-per-type
// active Subscriptions on a type, one more is refused with 422 naming the
// limit; one turned off makes room; other types are not affected.
func TestSubscriptionsPerTypeAreCapped(t *testing.T) {
	e := newEnv(t, withoutMail(), withConfig(func(c *notify.Config) { c.MaxPerType = 3 }))
	h := newHook(t)
	var ids []string
	for range 3 {
		ids = append(ids, e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "")).want(t, 201).JSON["id"].(string))
	}
	r := e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic?code=x", "")).want(t, 422)
	if !strings.Contains(string(r.Body), "max-subscriptions-per-type") {
		t.Errorf("the refusal does not name the limit: %s", r.Body)
	}
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Observation", "")).want(t, 201)
	// Updating one of the three is not adding one.
	sub := e.do("GET", "/Subscription/"+ids[0], nil).want(t, 200).JSON
	sub["reason"] = "changed"
	e.do("PUT", "/Subscription/"+ids[0], sub).want(t, 200)
	sub["status"] = "off"
	e.do("PUT", "/Subscription/"+ids[0], sub).want(t, 200)
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic?code=x", "")).want(t, 201)
}

// TestFullOutboxRefusesWrites: when the outbox holds -notify-max-outbox
// rows (deliveries failing or slower than writes), a write that would add
// to it is refused with 503 and Retry-After, and nothing of it is stored;
// writes that match no Subscription go on; once deliveries catch up,
// writes are taken again.
func TestFullOutboxRefusesWrites(t *testing.T) {
	e := newEnv(t, withoutMail(), withConfig(func(c *notify.Config) { c.MaxOutbox = 3 }))
	h := newHook(t)
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic?code=urn:full|x", "")).want(t, 201)
	e.n.Close() // deliveries stop
	basic := func(code string) map[string]any {
		return map[string]any{"resourceType": "Basic", "code": map[string]any{"coding": []any{map[string]any{"system": "urn:full", "code": code}}}}
	}
	for range 3 {
		e.do("POST", "/Basic", basic("x")).want(t, 201)
	}
	r := e.do("POST", "/Basic", basic("x")).want(t, 503)
	if r.Header.Get("Retry-After") == "" || !strings.Contains(string(r.Body), "notify-max-outbox") {
		t.Errorf("refusal %v %s", r.Header, r.Body)
	}
	if n := e.do("GET", "/Basic?code=urn:full|x&_summary=count", nil).JSON["total"]; n != jsonNumber("3") {
		t.Errorf("%v stored, want the 3 accepted", n)
	}
	e.do("POST", "/Basic", basic("unwatched")).want(t, 201)
	e.restart()
	h.wait(t, 3)
	waitFor(t, "the outbox to drain", func() bool { return len(e.outbox("")) == 0 })
	e.do("POST", "/Basic", basic("x")).want(t, 201)
}

// TestDeliveryFailuresAreSummarized: an endpoint that keeps failing is
// logged once when it starts failing, then summed up per period, not once
// per attempt.
func TestDeliveryFailuresAreSummarized(t *testing.T) {
	logs := &syncBuffer{}
	e := newEnv(t, withoutMail(), withLog(slog.New(slog.NewTextHandler(logs, nil))), withConfig(func(c *notify.Config) {
		c.Backoff, c.MaxBackoff, c.FailureLogEvery = time.Millisecond, time.Millisecond, time.Hour
	}))
	h := newHook(t)
	h.setRespond(func(w http.ResponseWriter, _ *http.Request, _ int) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "")).want(t, 201)
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201)
	h.wait(t, 25)
	if n := strings.Count(logs.String(), "delivery failed"); n != 1 {
		t.Errorf("%d warnings for %d failed attempts, want 1:\n%.2000s", n, len(h.calls()), logs.String())
	}
	// The summary comes at the end of the period (here: when the service
	// stops after an hour it never reaches; a short period shows it).
	e.stop()
	logs2 := &syncBuffer{}
	e2 := newEnv(t, withoutMail(), withLog(slog.New(slog.NewTextHandler(logs2, nil))), withConfig(func(c *notify.Config) {
		c.Backoff, c.MaxBackoff, c.FailureLogEvery = time.Millisecond, time.Millisecond, 300*time.Millisecond
	}))
	h2 := newHook(t)
	h2.setRespond(func(w http.ResponseWriter, _ *http.Request, _ int) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	e2.do("POST", "/Subscription", restHook(h2.srv.URL, "Basic", "")).want(t, 201)
	e2.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201)
	waitFor(t, "a summary line", func() bool { return strings.Contains(logs2.String(), "deliveries failed") })
	if strings.Count(logs2.String(), "failures=") == 0 {
		t.Errorf("the summary does not count the failures: %.1000s", logs2.String())
	}
}
