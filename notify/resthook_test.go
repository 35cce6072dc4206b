package notify_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/notify"
	"github.com/p2pserver/p2pserver/notify/smtptest"

	"github.com/p2pserver/p2pserver/internal/apidoc"
)

type jsonNumber = json.Number

func TestRestHookCallsWithHeadersAndPayload(t *testing.T) {
	e := newEnv(t)
	full, ping := newHook(t), newHook(t)
	e.do("POST", "/Subscription", restHook(full.srv.URL+"/full", "CoverageEligibilityResponse", "application/fhir+json",
		"Authorization: Bearer vendor-secret", "X-Tenant: payer-b")).want(t, 201)
	e.do("POST", "/Subscription", restHook(ping.srv.URL+"/ping", "CoverageEligibilityResponse?outcome=complete", "")).want(t, 201)

	resp := map[string]any{"resourceType": "CoverageEligibilityResponse", "status": "active", "purpose": []any{"benefits"},
		"patient": map[string]any{"reference": "Patient/p1"}, "created": "2024-05-09", "request": map[string]any{"reference": "CoverageEligibilityRequest/r1"},
		"outcome": "queued", "insurer": map[string]any{"reference": "Organization/o1"}}
	created := e.do("POST", "/CoverageEligibilityResponse", resp).want(t, 201).JSON
	calls := full.wait(t, 1)
	c := calls[0]
	if c.Header.Get("Authorization") != "Bearer vendor-secret" || c.Header.Get("X-Tenant") != "payer-b" {
		t.Errorf("configured headers not sent: %v", c.Header)
	}
	if c.Header.Get("X-Notification-Id") == "" || !strings.HasPrefix(c.Header.Get("X-Subscription"), "Subscription/") {
		t.Errorf("notification headers missing: %v", c.Header)
	}
	if !strings.HasPrefix(c.Header.Get("Content-Type"), "application/fhir+json") {
		t.Errorf("Content-Type %q", c.Header.Get("Content-Type"))
	}
	var body map[string]any
	if err := json.Unmarshal(c.Body, &body); err != nil || body["id"] != created["id"] || body["outcome"] != "queued" {
		t.Fatalf("payload is not the resource written: %s", c.Body)
	}

	// The ping Subscription matches only once the outcome is complete, and
	// sends no body.
	created["outcome"] = "complete"
	e.do("PUT", "/CoverageEligibilityResponse/"+created["id"].(string), created).want(t, 200)
	pings := ping.wait(t, 1)
	if len(pings[0].Body) != 0 || pings[0].Header.Get("Content-Type") != "" {
		t.Errorf("a ping has a body: %q (%s)", pings[0].Body, pings[0].Header.Get("Content-Type"))
	}
	calls = full.wait(t, 2)
	if calls[0].Header.Get("X-Notification-Id") == calls[1].Header.Get("X-Notification-Id") {
		t.Error("two writes share a notification id")
	}
	if !bytes.Contains(calls[1].Body, []byte(`"complete"`)) {
		t.Errorf("second call does not carry the new version: %s", calls[1].Body)
	}
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
	if n := len(ping.calls()); n != 1 {
		t.Errorf("ping called %d times, want 1 (the first version did not match)", n)
	}
}

func TestFailingEndpointSetsSubscriptionErrorAndReactivationResends(t *testing.T) {
	e := newEnv(t, withConfig(func(c *notify.Config) { c.MaxAttempts = 4 }))
	h := newHook(t)
	h.setRespond(func(w http.ResponseWriter, _ *http.Request, _ int) {
		http.Error(w, "receiver overloaded", http.StatusServiceUnavailable)
	})
	sub := e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "application/fhir+json")).want(t, 201).JSON
	subID := sub["id"].(string)
	if sub["status"] != "active" {
		t.Fatalf("accepted Subscription is %v", sub["status"])
	}
	basic := map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}
	e.do("POST", "/Basic", basic).want(t, 201)

	waitFor(t, "the Subscription to go to error", func() bool {
		return e.do("GET", "/Subscription/"+subID, nil).JSON["status"] == "error"
	})
	sub = e.do("GET", "/Subscription/"+subID, nil).want(t, 200).JSON
	if msg, _ := sub["error"].(string); !strings.Contains(msg, "failed 4 times") || !strings.Contains(msg, "503") || !strings.Contains(msg, "receiver overloaded") {
		t.Errorf("Subscription.error = %q", msg)
	}
	if n := len(h.calls()); n != 4 {
		t.Errorf("%d attempts, want MaxAttempts (4)", n)
	}
	failed := e.outbox("?status=failed")
	if len(failed) != 1 || failed[0]["attempts"].(jsonNumber).String() != "4" || !strings.Contains(failed[0]["lastError"].(string), "503") {
		t.Fatalf("failed notifications: %v", failed)
	}
	// While in error, what it would send is kept, not sent.
	e.do("POST", "/Basic", basic).want(t, 201)
	if n := len(e.outbox("?status=failed")); n != 2 {
		t.Fatalf("%d failed notifications while the Subscription is in error, want 2", n)
	}
	// A client cannot set error itself.
	sub["status"] = "error"
	if a := e.do("PUT", "/Subscription/"+subID, map[string]any{"resourceType": "Subscription", "id": "other-1", "status": "error", "reason": "r", "criteria": "Basic",
		"channel": map[string]any{"type": "rest-hook", "endpoint": h.srv.URL}}); a.Status == 200 || a.Status == 201 {
		t.Errorf("a client set status error: %d", a.Status)
	}

	// Fixed and re-activated, everything is sent.
	h.setRespond(nil)
	sub["status"] = "requested"
	re := e.do("PUT", "/Subscription/"+subID, sub).want(t, 200).JSON
	if re["status"] != "active" || re["error"] != nil {
		t.Errorf("re-activated Subscription: status %v, error %v", re["status"], re["error"])
	}
	h.wait(t, 6)
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	e := newEnv(t)
	target := newHook(t)
	h := newHook(t)
	h.setRespond(func(w http.ResponseWriter, r *http.Request, _ int) {
		http.Redirect(w, r, target.srv.URL+"/elsewhere", http.StatusTemporaryRedirect)
	})
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "")).want(t, 201)
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201)
	waitFor(t, "a failed attempt", func() bool {
		p := e.outbox("?status=pending")
		msg, _ := p[0]["lastError"].(string)
		return len(p) == 1 && strings.Contains(msg, "redirects are not followed")
	})
	if n := len(target.calls()); n != 0 {
		t.Errorf("the redirect target was called %d times", n)
	}
}

func TestCrashDuringDeliveryResendsWithTheSameID(t *testing.T) {
	e := newEnv(t)
	h := newHook(t)
	release := make(chan struct{})
	h.setRespond(func(w http.ResponseWriter, r *http.Request, n int) {
		if n == 1 {
			// The server goes down while the receiver holds the call.
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "")).want(t, 201)
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201)
	h.wait(t, 1)
	e.stop()
	close(release)
	e.start()
	calls := h.wait(t, 2)
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
	if a, b := calls[0].Header.Get("X-Notification-Id"), calls[1].Header.Get("X-Notification-Id"); a == "" || a != b {
		t.Errorf("the redelivery has id %q, the first attempt %q; want the same", b, a)
	}
}

func TestNotificationsAPI(t *testing.T) {
	// Retries an hour apart: what the outbox holds stays put while the
	// test reads it.
	srv := smtptest.New(t, smtptest.Options{Refuse: []string{"angelic@example.org"}})
	e := newEnv(t, withSMTP(srv), withConfig(func(c *notify.Config) { c.Backoff, c.MaxBackoff = time.Hour, time.Hour }))
	apidoc.CheckRoutes(t, e.api)
	h := newHook(t)
	h.setRespond(func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(http.StatusBadGateway) })
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "")).want(t, 201)
	basic := e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201).JSON
	tk := e.do("POST", "/Task", task("member-1", "PAYRB", "angelic@example.org")).want(t, 201).JSON
	srv.Wait(2, waitLimit) // the admins'
	h.wait(t, 1)

	url := e.root + "/api/notifications"
	if a := e.do("GET", url, nil); a.Status != 401 {
		t.Errorf("without a token: %d", a.Status)
	}
	if a := e.do("GET", url, nil, "Authorization", "Bearer not-the-admin-token-at-all"); a.Status != 401 {
		t.Errorf("with a wrong token: %d", a.Status)
	}
	for _, q := range []string{"?status=delivered", "?limit=0", "?limit=x", "?colour=red"} {
		a := e.do("GET", url+q, nil, "Authorization", "Bearer "+adminToken)
		if a.Status != 400 || a.JSON["error"] == nil {
			t.Errorf("%s: %d %s", q, a.Status, a.Body)
		}
	}
	waitFor(t, "one failed and one retried notification", func() bool {
		c := e.notifications("")["counts"].(map[string]any)
		p := e.outbox("?status=pending")
		return c["failed"].(jsonNumber).String() == "1" && len(p) == 1 && p[0]["attempts"].(jsonNumber).String() == "1"
	})
	pending := e.outbox("?status=pending")[0]
	if pending["resource"] != "Basic/"+basic["id"].(string) || pending["channel"] != "rest-hook" || !strings.Contains(pending["lastError"].(string), "502") || pending["nextAttempt"] == nil {
		t.Errorf("pending: %v", pending)
	}
	failed := e.outbox("?status=failed")
	if len(failed) != 1 {
		t.Fatalf("failed: %v", failed)
	}
	f := failed[0]
	if f["resource"] != "Task/"+tk["id"].(string) || f["endpoint"] != "angelic@example.org" || !strings.Contains(f["lastError"].(string), "550") {
		t.Errorf("failed: %v", f)
	}
	for _, k := range []string{"id", "subscription", "lastError", "failedAt", "lastAttempt", "created"} {
		if f[k] == nil || f[k] == "" {
			t.Errorf("failed notification lacks %s: %v", k, f)
		}
	}
	if got := e.outbox("?resource=Task/" + tk["id"].(string)); len(got) != 1 {
		t.Errorf("filter by resource: %v", got)
	}
	if got := e.outbox("?subscription=Subscription/p2p-add-payer-notifications&status=pending,failed"); len(got) != 1 {
		t.Errorf("filter by subscription: %v", got)
	}
	got := e.notifications("?limit=1")
	if list := got["notifications"].([]any); len(list) != 1 || list[0].(map[string]any)["resource"] != "Task/"+tk["id"].(string) || !got["truncated"].(bool) {
		t.Errorf("limit=1 (newest first, truncated): %v", got)
	}
}

// TestRestHookDialPolicy: the rest-hook's address is checked after name
// resolution (rule 10). With "localhost:<port>" listed in
// -subscription-hosts the URL is accepted, but localhost resolves to
// loopback, a range the list does not name: nothing is sent, and the
// Subscription is set to error saying why. Naming the loopback addresses
// too lets the same Subscription deliver. (FHIR R4 subscription.html,
// rest-hook: the server POSTs to the endpoint the client named; which
// endpoints it may reach is this server's policy.)
func TestRestHookDialPolicy(t *testing.T) {
	h := newHook(t)
	port := h.srv.Listener.Addr().(*net.TCPAddr).Port
	for _, c := range []struct {
		hosts string
		sent  bool
	}{
		{fmt.Sprintf("localhost:%d", port), false},
		{fmt.Sprintf("localhost:%d, 127.0.0.1, ::1", port), true},
		{fmt.Sprintf("localhost:%d, 127.0.0.0/8, ::1", port), true},
	} {
		t.Run(c.hosts, func(t *testing.T) {
			e := newEnv(t, withHosts(c.hosts), withoutMail())
			before := len(h.calls())
			sub := e.do("POST", "/Subscription", restHook(fmt.Sprintf("http://localhost:%d/hook", port), "Basic", "application/fhir+json")).want(t, 201).JSON
			e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201)
			if c.sent {
				h.wait(t, before+1)
				return
			}
			var cur map[string]any
			waitFor(t, "the Subscription in error", func() bool {
				cur = e.do("GET", "/Subscription/"+sub["id"].(string), nil).want(t, 200).JSON
				return cur["status"] == "error"
			})
			if msg, _ := cur["error"].(string); !strings.Contains(msg, "127.0.0.1 is a loopback address") && !strings.Contains(msg, "::1 is a loopback address") {
				t.Errorf("Subscription.error %q does not say why", msg)
			}
			if n := len(h.calls()); n != before {
				t.Errorf("the endpoint was called %d times", n-before)
			}
		})
	}
}
