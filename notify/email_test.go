package notify_test

import (
	"fmt"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"testing"

	"context"
	"github.com/p2pserver/p2pserver/internal/netguard"
	"github.com/p2pserver/p2pserver/notify"
	"github.com/p2pserver/p2pserver/notify/addpayer"
	"github.com/p2pserver/p2pserver/notify/smtptest"
	"time"
)

// byRecipient indexes messages by their one envelope recipient.
func byRecipient(t *testing.T, msgs []smtptest.Message) map[string][]smtptest.Message {
	t.Helper()
	out := map[string][]smtptest.Message{}
	for _, m := range msgs {
		if len(m.To) != 1 {
			t.Fatalf("a message went to %v; each notification goes to one address", m.To)
		}
		out[m.To[0]] = append(out[m.To[0]], m)
	}
	return out
}

func TestAddPayerRequestEmailsAdminsAndMember(t *testing.T) {
	e := newEnv(t)
	created := e.do("POST", "/Task", task("member-1", "PAYRB", "angelic@example.org")).want(t, 201).JSON
	id := created["id"].(string)

	msgs := byRecipient(t, e.smtp.Wait(3, waitLimit))
	for _, to := range []string{"admin1@payer.example.org", "admin2@payer.example.org", "angelic@example.org"} {
		if len(msgs[to]) != 1 {
			t.Fatalf("%s got %d messages, want 1 (all: %v)", to, len(msgs[to]), keys(msgs))
		}
	}
	member := msgs["angelic@example.org"][0]
	admin := msgs["admin1@payer.example.org"][0]
	for _, m := range []smtptest.Message{member, admin} {
		from, err := mail.ParseAddress(m.Header.Get("From"))
		if err != nil || from.Address != "noreply@payer.example.org" || m.From != "noreply@payer.example.org" {
			t.Errorf("From %q, envelope %q: want the one sender address", m.Header.Get("From"), m.From)
		}
		if m.Header.Get("X-Notification-Id") == "" || !strings.Contains(m.Header.Get("Message-Id"), m.Header.Get("X-Notification-Id")) {
			t.Errorf("Message-ID %q does not carry the notification id %q", m.Header.Get("Message-Id"), m.Header.Get("X-Notification-Id"))
		}
		if m.Header.Get("Auto-Submitted") != "auto-generated" {
			t.Errorf("Auto-Submitted = %q", m.Header.Get("Auto-Submitted"))
		}
		if m.Text == "" || m.HTML == "" {
			t.Errorf("want plain text and HTML, got text %d bytes, HTML %d bytes", len(m.Text), len(m.HTML))
		}
		if strings.Contains(m.Text, "<p>") || !strings.Contains(m.HTML, "<p>") {
			t.Errorf("the text part has HTML or the HTML part has none")
		}
	}
	if got := msgs["admin1@payer.example.org"][0].Header.Get("X-Notification-Id"); got == msgs["admin2@payer.example.org"][0].Header.Get("X-Notification-Id") {
		t.Errorf("two deliveries share the notification id %s", got)
	}

	// The member reads what happened and what happens next, in words.
	if want := "Your request to add Acme Health Plan: we received it"; member.Subject != want {
		t.Errorf("member subject %q, want %q", member.Subject, want)
	}
	for _, want := range []string{"Dear Angelic", "We have received your request to add Acme Health Plan", "What happens next:", "member-1-PAYRB-2024-05-09T20:36:18Z"} {
		if !strings.Contains(member.Text, want) || !strings.Contains(member.HTML, want) {
			t.Errorf("member message lacks %q:\n%s", want, member.Text)
		}
	}
	for _, secret := range []string{"1111111111", "Subscription/", "Patient/member-1"} {
		if strings.Contains(member.Text, secret) {
			t.Errorf("the member's message shows %q, which is for staff", secret)
		}
	}
	// Staff read who asked, for which payer, and what to do.
	if want := "New add-payer request from Angelic Mueller for Acme Health Plan (requested)"; admin.Subject != want {
		t.Errorf("admin subject %q, want %q", admin.Subject, want)
	}
	for _, want := range []string{"Angelic Mueller (Patient/member-1)", "Acme Health Plan (Organization/PAYRB)", "angelic@example.org", "1111111111",
		"What to do: Review the request", e.base + "/Task/" + id + "/_history/1"} {
		if !strings.Contains(admin.Text, want) {
			t.Errorf("admin message lacks %q:\n%s", want, admin.Text)
		}
	}

	// Each status change is told, with the reason.
	e.setStatus(id, "accepted", "").want(t, 200)
	e.setStatus(id, "in-progress", "").want(t, 200)
	msgs = byRecipient(t, e.smtp.Wait(9, waitLimit))
	subjects := subjectsOf(msgs["angelic@example.org"])
	for _, want := range []string{"Your request to add Acme Health Plan: accepted", "Your request to add Acme Health Plan: copying your records"} {
		if !slices.Contains(subjects, want) {
			t.Errorf("member subjects %q lack %q", subjects, want)
		}
	}
	// An edit that changes neither status nor reason sends nothing; the
	// next change is told with its reason.
	cur := e.do("GET", "/Task/"+id, nil).want(t, 200).JSON
	cur["note"] = []any{map[string]any{"text": "called the member"}}
	e.do("PUT", "/Task/"+id, cur).want(t, 200)
	e.setStatus(id, "failed", "Acme Health Plan did not answer").want(t, 200)
	msgs = byRecipient(t, e.smtp.Wait(12, waitLimit))
	if n := len(msgs["angelic@example.org"]); n != 4 {
		t.Fatalf("the member got %d messages, want 4 (created, accepted, in progress, failed): %q", n, subjectsOf(msgs["angelic@example.org"]))
	}
	last := msgs["angelic@example.org"][3]
	for _, want := range []string{"We could not finish copying your health records from Acme Health Plan", "Reason: Acme Health Plan did not answer"} {
		if !strings.Contains(last.Text, want) {
			t.Errorf("failure message lacks %q:\n%s", want, last.Text)
		}
	}
	var links []string
	for _, m := range msgs["admin2@payer.example.org"] {
		if l := historyLink.FindStringSubmatch(m.Text); l != nil {
			links = append(links, l[1])
		}
	}
	if fmt.Sprint(links) != "[1 2 3 5]" {
		t.Errorf("admin messages are about versions %v, want [1 2 3 5] (version 4 only added a note)", links)
	}
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
}

// TestEmailsToOneRecipientKeepTheOutboxOrder: the notifications to one
// recipient arrive in the order of the writes that caused them, even
// when the first attempt at one fails and waits to be tried again: a
// member is not told "copying your records" before "we received it".
// admin1's mail server greylists (refuses the first attempt for a while);
// the Task changes three more times within the wait. admin1 gets the four
// in version order, and admin2, whose server takes every attempt, is not
// held back by admin1's wait.
func TestEmailsToOneRecipientKeepTheOutboxOrder(t *testing.T) {
	srv := smtptest.New(t, smtptest.Options{Greylist: []string{"admin1@payer.example.org"}})
	e := newEnv(t, withSMTP(srv), withConfig(func(c *notify.Config) {
		// The retry comes after every later write was made.
		c.Backoff, c.MaxBackoff = 2*time.Second, 2*time.Second
	}))
	id := e.do("POST", "/Task", task("member-1", "PAYRB", "angelic@example.org")).want(t, 201).JSON["id"].(string)
	for _, status := range []string{"accepted", "in-progress", "completed"} {
		e.setStatus(id, status, "").want(t, 200)
	}
	admin2 := func() []string {
		var vs []string
		for _, m := range byRecipient(t, srv.Messages())["admin2@payer.example.org"] {
			if l := historyLink.FindStringSubmatch(m.Text); l != nil {
				vs = append(vs, l[1])
			}
		}
		return vs
	}
	waitFor(t, "admin2's four messages", func() bool { return len(admin2()) == 4 })
	msgs := byRecipient(t, srv.Wait(12, waitLimit))
	for _, to := range []string{"admin1@payer.example.org", "admin2@payer.example.org"} {
		var vs []string
		for _, m := range msgs[to] {
			if l := historyLink.FindStringSubmatch(m.Text); l != nil {
				vs = append(vs, l[1])
			}
		}
		if fmt.Sprint(vs) != "[1 2 3 4]" {
			t.Errorf("%s got the messages about versions %v, want [1 2 3 4] in that order", to, vs)
		}
	}
	if got := subjectsOf(msgs["angelic@example.org"]); len(got) != 4 || !strings.HasSuffix(got[0], "we received it") {
		t.Errorf("the member's messages in order: %q", got)
	}
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
}

var historyLink = regexp.MustCompile(`/Task/[^/\s]+/_history/(\d+)`)

func subjectsOf(ms []smtptest.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Subject)
	}
	return out
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestDefaultSubscriptionIsSeededOnceAndKeepsTheAdminsChoice(t *testing.T) {
	e := newEnv(t)
	list := func() []any {
		b := e.do("GET", "/Subscription", nil).want(t, 200).JSON
		entries, _ := b["entry"].([]any)
		return entries
	}
	if n := len(list()); n != 1 {
		t.Fatalf("%d Subscriptions after the first start, want 1", n)
	}
	sub := e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200).JSON
	if sub["status"] != "active" || sub["criteria"] != addpayer.Criteria {
		t.Fatalf("default Subscription: %v", sub)
	}
	ch := sub["channel"].(map[string]any)
	if ch["type"] != "email" || ch["endpoint"] != "mailto:admin1@payer.example.org,admin2@payer.example.org" || ch["payload"] != "text/html" {
		t.Fatalf("default channel: %v", ch)
	}

	e.restart()
	if n := len(list()); n != 1 {
		t.Fatalf("%d Subscriptions after a restart, want 1", n)
	}
	// The admin list follows the configuration; an administrator's "off"
	// survives restarts.
	sub = e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200).JSON
	sub["status"] = "off"
	e.do("PUT", "/Subscription/"+addpayer.SubscriptionID, sub).want(t, 200)
	e.admins = []string{"ops@payer.example.org"}
	e.restart()
	sub = e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200).JSON
	if sub["status"] != "off" {
		t.Errorf("status %v after a restart, want the administrator's off", sub["status"])
	}
	if ep := sub["channel"].(map[string]any)["endpoint"]; ep != "mailto:ops@payer.example.org" {
		t.Errorf("endpoint %v, want the configured admins", ep)
	}
	// Off means off: a new request emails nobody.
	e.do("POST", "/Task", task("member-2", "PAYRB", "m2@example.org")).want(t, 201)
	if n := e.notifications("")["counts"].(map[string]any); n["pending"].(jsonNumber).String() != "0" || n["failed"].(jsonNumber).String() != "0" {
		t.Errorf("outbox counts %v with the Subscription off", n)
	}
	// Deleted, it comes back at the next start.
	e.do("DELETE", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200)
	e.restart()
	sub = e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200).JSON
	if sub["status"] != "active" {
		t.Errorf("re-created Subscription is %v", sub["status"])
	}
}

func TestSMTPDownThenUpDeliversEverything(t *testing.T) {
	e := newEnv(t, withAdmins("admin@payer.example.org"))
	e.smtp.Stop()
	e.do("POST", "/Task", task("member-1", "PAYRB", "angelic@example.org")).want(t, 201)
	waitFor(t, "failed attempts recorded", func() bool {
		for _, n := range e.outbox("?status=pending") {
			msg, _ := n["lastError"].(string)
			if n["attempts"].(jsonNumber).String() != "0" && strings.Contains(msg, e.smtp.Addr()) {
				return true
			}
		}
		return false
	})
	if len(e.smtp.Messages()) != 0 {
		t.Fatal("mail arrived while the server was down")
	}
	e.smtp.Start()
	msgs := byRecipient(t, e.smtp.Wait(2, waitLimit))
	if len(msgs["admin@payer.example.org"]) != 1 || len(msgs["angelic@example.org"]) != 1 {
		t.Fatalf("after the mail server came back: %v", keys(msgs))
	}
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
	if sub := e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200).JSON; sub["status"] != "active" {
		t.Errorf("Subscription %v after a short outage", sub["status"])
	}
}

func TestRestartBetweenCommitAndDeliveryLosesNothing(t *testing.T) {
	e := newEnv(t, withAdmins("admin@payer.example.org"))
	e.smtp.Stop()
	e.do("POST", "/Task", task("member-1", "PAYRB", "angelic@example.org")).want(t, 201)
	pending := e.outbox("?status=pending")
	if len(pending) != 2 {
		t.Fatalf("%d pending notifications after the write, want 2", len(pending))
	}
	ids := map[string]bool{}
	for _, n := range pending {
		ids[n["id"].(string)] = true
	}
	// The server goes away before anything is delivered, and comes back
	// with the mail server up.
	e.stop()
	e.smtp.Start()
	e.start()
	msgs := e.smtp.Wait(2, waitLimit)
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
	got := map[string]int{}
	for _, m := range e.smtp.Messages() {
		got[m.Header.Get("X-Notification-Id")]++
	}
	for id := range ids {
		if got[id] != 1 {
			t.Errorf("notification %s arrived %d times, want once", id, got[id])
		}
	}
	if len(msgs) != 2 || len(got) != 2 {
		t.Errorf("%d messages with ids %v, want the 2 notifications", len(e.smtp.Messages()), got)
	}
}

func TestMemberAddressRefusedLeavesSubscriptionActive(t *testing.T) {
	srv := smtptest.New(t, smtptest.Options{Refuse: []string{"nobody@example.org"}})
	e := newEnv(t, withSMTP(srv), withAdmins("admin@payer.example.org"))
	e.do("POST", "/Task", task("member-1", "PAYRB", "nobody@example.org")).want(t, 201)
	msgs := byRecipient(t, srv.Wait(1, waitLimit))
	if len(msgs["admin@payer.example.org"]) != 1 {
		t.Fatalf("admin mail: %v", keys(msgs))
	}
	var failed []map[string]any
	waitFor(t, "the member's notification to fail", func() bool {
		failed = e.outbox("?status=failed")
		return len(failed) == 1
	})
	f := failed[0]
	if f["endpoint"] != "nobody@example.org" || f["audience"] != "resource" || !strings.Contains(f["lastError"].(string), "550") {
		t.Errorf("failed notification: %v", f)
	}
	if f["attempts"].(jsonNumber).String() != "1" {
		t.Errorf("a permanent refusal was tried %v times, want 1", f["attempts"])
	}
	if sub := e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil).want(t, 200).JSON; sub["status"] != "active" {
		t.Errorf("one member's bad address set the Subscription to %v", sub["status"])
	}
}

func TestSTARTTLSAndAuthentication(t *testing.T) {
	srv := smtptest.New(t, smtptest.Options{TLS: true, Username: "mailer", Password: "s3cret-pass"})
	e := newEnv(t, withSMTP(srv), withAdmins("admin@payer.example.org"))
	e.do("POST", "/Task", task("member-1", "PAYRB", "angelic@example.org")).want(t, 201)
	for _, m := range srv.Wait(2, waitLimit) {
		if !m.TLS || !m.Auth {
			t.Errorf("message to %v: TLS %v, authenticated %v; want both", m.To, m.TLS, m.Auth)
		}
	}
}

func TestWithoutMailServerEmailSubscriptionsAreRefused(t *testing.T) {
	e := newEnv(t, withoutMail())
	if a := e.do("GET", "/Subscription/"+addpayer.SubscriptionID, nil); a.Status != 404 {
		t.Errorf("default Subscription without a mail server: %d", a.Status)
	}
	sub := map[string]any{"resourceType": "Subscription", "status": "requested", "reason": "r", "criteria": "Task",
		"channel": map[string]any{"type": "email", "endpoint": "mailto:ops@payer.example.org"}}
	a := e.do("POST", "/Subscription", sub).want(t, 422)
	if !strings.Contains(string(a.Body), "-smtp-url") {
		t.Errorf("refusal does not say what to configure: %s", a.Body)
	}
}

// TestMailerDialsThroughTheOutboundPolicy (rule 10): the connection to the
// mail server is checked like every outbound connection, on the address
// dialled: with a policy that allows public addresses only, a mail server
// on loopback is never reached; with loopback allowed the email arrives.
func TestMailerDialsThroughTheOutboundPolicy(t *testing.T) {
	srv := smtptest.New(t, smtptest.Options{})
	for _, c := range []struct {
		policy *netguard.Policy
		sent   bool
	}{
		{&netguard.Policy{Public: true, Setting: "-outbound-allow"}, false},
		{&netguard.Policy{Public: true, Allow: netguard.Loopback}, true},
	} {
		m, err := notify.NewMailer(notify.MailConfig{URL: srv.URL(), From: "p2p@payer.example.org", Timeout: 5 * time.Second, Dial: c.policy.DialContext})
		if err != nil {
			t.Fatal(err)
		}
		before := len(srv.Messages())
		err = m.Send(context.Background(), notify.Outgoing{ID: "n-1", To: "member@example.org",
			Mail: notify.Mail{Subject: "hello", Text: "hello", HTML: "<p>hello</p>"}})
		if c.sent && (err != nil || len(srv.Wait(before+1, waitLimit)) != before+1) {
			t.Fatalf("under %s: %v", c.policy, err)
		}
		if !c.sent && (!netguard.IsRefused(err) || len(srv.Messages()) != before) {
			t.Fatalf("under %s: %v, %d messages", c.policy, err, len(srv.Messages())-before)
		}
	}
}
