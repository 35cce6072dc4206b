package notify_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/notify"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// syncBuffer is a log destination tests can read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHeaderValuesAreWriteOnlySecrets (rule 7): rest-hook channel.header
// values (FHIR R4 subscription.html: "Additional headers / information to
// send as part of the notification", typically the receiver's bearer
// token) are secrets. They are sent to the endpoint and nowhere else: every
// answer that carries the Subscription — the create's, read, vread,
// history, search, a transaction's representation — shows each header's
// name with the HeaderMask value; the database file and the logs never
// hold the value. (The Subscriptions Backport IG, safety_security.html:
// "Subscription resources are not intended to be secure storage for
// secrets"; so the values live encrypted outside it.) A read written back
// keeps the stored values; a new value replaces one; a masked value with
// nothing stored for its name is refused.
func TestHeaderValuesAreWriteOnlySecrets(t *testing.T) {
	logs := &syncBuffer{}
	e := newEnv(t, withoutMail(), withLog(slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	h := newHook(t)
	const secret1, secret2 = "vendor-secret-one-4711", "vendor-secret-two-0815"
	created := e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "application/fhir+json",
		"Authorization: Bearer "+secret1, "X-Tenant: payer-b")).want(t, 201)
	id := created.JSON["id"].(string)
	shown := []string{"Authorization: " + notify.HeaderMask, "X-Tenant: " + notify.HeaderMask}
	if got := created.JSON["channel"].(map[string]any)["header"]; !sameStrings(got, shown) {
		t.Fatalf("the create's answer shows headers %v, want %v", got, shown)
	}
	basic := map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}
	e.do("POST", "/Basic", basic).want(t, 201)
	if c := h.wait(t, 1)[0]; c.Header.Get("Authorization") != "Bearer "+secret1 || c.Header.Get("X-Tenant") != "payer-b" {
		t.Fatalf("the endpoint did not get the header values: %v", c.Header)
	}

	// A client reads the Subscription, changes it, and writes it back: the
	// masked values stand for the stored ones.
	cur := e.do("GET", "/Subscription/"+id, nil).want(t, 200).JSON
	cur["reason"] = "changed"
	e.do("PUT", "/Subscription/"+id, cur).want(t, 200)
	e.do("POST", "/Basic", basic).want(t, 201)
	if c := h.wait(t, 2)[1]; c.Header.Get("Authorization") != "Bearer "+secret1 || c.Header.Get("X-Tenant") != "payer-b" {
		t.Fatalf("after a read-modify-write: %v", c.Header)
	}
	// A new value replaces the stored one.
	cur["channel"].(map[string]any)["header"] = []any{"Authorization: Bearer " + secret2, "X-Tenant: " + notify.HeaderMask}
	e.do("PUT", "/Subscription/"+id, cur).want(t, 200)
	e.do("POST", "/Basic", basic).want(t, 201)
	if c := h.wait(t, 3)[2]; c.Header.Get("Authorization") != "Bearer "+secret2 || c.Header.Get("X-Tenant") != "payer-b" {
		t.Fatalf("after a new value: %v", c.Header)
	}
	// A masked value with nothing stored under its name is refused, and
	// changes nothing.
	cur["channel"].(map[string]any)["header"] = []any{"Authorization: " + notify.HeaderMask, "X-Other: " + notify.HeaderMask}
	if r := e.do("PUT", "/Subscription/"+id, cur).want(t, 422); !strings.Contains(string(r.Body), "X-Other") {
		t.Errorf("refusal does not name the header: %s", r.Body)
	}
	// Off, the values are kept sealed all the same.
	cur["channel"].(map[string]any)["header"] = []any{"Authorization: " + notify.HeaderMask, "X-Tenant: " + notify.HeaderMask}
	cur["status"] = "off"
	e.do("PUT", "/Subscription/"+id, cur).want(t, 200)

	// Every way of reading the Subscription shows the mask only.
	tx := map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": []any{map[string]any{
		"resource": restHook(h.srv.URL, "Basic", "", "Authorization: Bearer "+secret1),
		"request":  map[string]any{"method": "POST", "url": "Subscription"}}}}
	answers := []*answer{
		e.do("GET", "/Subscription/"+id, nil).want(t, 200),
		e.do("GET", "/Subscription/"+id+"/_history/1", nil).want(t, 200),
		e.do("GET", "/Subscription/"+id+"/_history", nil).want(t, 200),
		e.do("GET", "/Subscription?_id="+id, nil).want(t, 200),
		e.do("GET", "/Subscription?status=off", nil).want(t, 200),
		e.do("GET", "/_history", nil).want(t, 200),
		e.do("POST", "/", tx, "Prefer", "return=representation").want(t, 200),
	}
	for i, a := range answers {
		if body := string(a.Body); strings.Contains(body, secret1) || strings.Contains(body, secret2) || !strings.Contains(body, "Authorization: "+notify.HeaderMask) {
			t.Errorf("answer %d shows a header value, or no masked header: %.600s", i, body)
		}
	}
	if l := logs.String(); strings.Contains(l, secret1) || strings.Contains(l, secret2) {
		t.Error("a header value was logged")
	}
	e.stop()
	raw := storetest.Dump(t, e.dbPath)
	if bytes.Contains(raw, []byte(secret1)) || bytes.Contains(raw, []byte(secret2)) {
		t.Error("the database file holds a header value in plain text")
	}
}

// TestHeadersNeedASecretKey: without -secret-key there is nowhere to keep
// header values encrypted, so a Subscription with headers is refused with
// an OperationOutcome saying so; one without headers is accepted.
func TestHeadersNeedASecretKey(t *testing.T) {
	e := newEnv(t, withoutMail(), withKey(""))
	h := newHook(t)
	r := e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "", "Authorization: Bearer x")).want(t, 422)
	if !strings.Contains(string(r.Body), "-secret-key") || !strings.Contains(string(r.Body), "Subscription.channel.header") {
		t.Errorf("refusal: %s", r.Body)
	}
	e.do("POST", "/Subscription", restHook(h.srv.URL, "Basic", "")).want(t, 201)
}

// TestPlainHeadersStoredEarlierAreSealedAtStart: Subscriptions stored
// with header values in the resource (by an earlier version of the
// server) are secured when the server starts with a key: every version is
// masked, the current values are sealed, and delivery goes on with them.
// Without a key the server refuses to start rather than keep serving
// them.
func TestPlainHeadersStoredEarlierAreSealedAtStart(t *testing.T) {
	e := newEnv(t, withoutMail())
	h := newHook(t)
	e.stop()
	const old, current = "old-plain-secret-1234", "current-plain-secret-5678"
	db, err := store.OpenDB(context.Background(), e.dbPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs := fhir.New(st, fhir.Config{BaseURL: e.base})
	err = st.Write(context.Background(), func(tx *store.Tx) error {
		for _, secret := range []string{old, current} {
			raw := `{"resourceType":"Subscription","id":"legacy","status":"active","reason":"r","criteria":"Basic",` +
				`"channel":{"type":"rest-hook","endpoint":"` + h.srv.URL + `","header":["Authorization: Bearer ` + secret + `"]}}`
			doc, err := fs.ParseResource([]byte(raw), "Subscription")
			if err != nil {
				return err
			}
			if _, err := tx.Put(doc, store.PutOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	st.Close()
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	e.key, e.mayFail = "", true
	e.start()
	if e.startErr == nil || !strings.Contains(e.startErr.Error(), "-secret-key") {
		t.Fatalf("start without a key: %v", e.startErr)
	}
	e.key, e.mayFail = testKey, false
	e.start()
	for _, path := range []string{"/Subscription/legacy", "/Subscription/legacy/_history/1", "/Subscription/legacy/_history"} {
		if body := string(e.do("GET", path, nil).want(t, 200).Body); strings.Contains(body, old) || strings.Contains(body, current) {
			t.Errorf("%s still shows a header value: %s", path, body)
		}
	}
	// Stored before owners were recorded, it sends nothing until it is
	// written again, and says so; written back as read, it acts for the
	// writer and sends what it held back, with the sealed value.
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "x"}}).want(t, 201)
	var sub map[string]any
	waitFor(t, "the legacy Subscription in error", func() bool {
		sub = e.do("GET", "/Subscription/legacy", nil).want(t, 200).JSON
		return sub["status"] == "error"
	})
	if msg, _ := sub["error"].(string); !strings.Contains(msg, "write it again") {
		t.Errorf("Subscription.error %q", msg)
	}
	if n := len(h.calls()); n != 0 {
		t.Fatalf("sent %d notifications without an owner", n)
	}
	sub["status"] = "requested"
	delete(sub, "error")
	e.do("PUT", "/Subscription/legacy", sub).want(t, 200)
	if c := h.wait(t, 1)[0]; c.Header.Get("Authorization") != "Bearer "+current {
		t.Fatalf("delivery after sealing: %v", c.Header)
	}
}

func sameStrings(got any, want []string) bool {
	l, _ := got.([]any)
	if len(l) != len(want) {
		return false
	}
	for i := range l {
		if l[i] != want[i] {
			return false
		}
	}
	return true
}

// TestDeliveryRechecksTheOwnersRights (rule 7): a notification is checked
// against its Subscription's owner again when it is sent (the
// Subscriptions Backport IG, safety_security.html: servers "SHOULD ensure
// that authorization is (still) in place when sending any event
// notifications"). An admin's Subscription on Observation holds a
// notification its endpoint keeps refusing; a client that may write
// Subscriptions and read Patients, not Observations, points the
// Subscription at its own endpoint (it may: it becomes the owner, and it
// may read what the new criteria match). The held Observation is then not
// its to receive: it is dropped, never sent to the new endpoint.
func TestDeliveryRechecksTheOwnersRights(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("backend", "backend-secret")
	const admin = "admin-token-for-notify-guard-0123"
	e := newEnv(t, withoutMail(), withGuard(func(fs *fhir.Server) {
		g, err := smart.New(smart.Config{BaseURL: fs.BaseURL(), Issuers: []smart.Issuer{{URL: idp.Issuer()}}, AdminTokens: []string{admin}})
		if err != nil {
			t.Fatal(err)
		}
		g.Attach(fs)
	}))
	tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "backend", Scopes: []string{"system/Subscription.cruds", "system/Patient.rs"}, Audience: []string{e.base}})
	if err != nil {
		t.Fatal(err)
	}
	refusing, other := newHook(t), newHook(t)
	refusing.setRespond(func(w http.ResponseWriter, _ *http.Request, _ int) {
		http.Error(w, "not now", http.StatusServiceUnavailable)
	})
	sub := e.do("POST", "/Subscription", restHook(refusing.srv.URL, "Observation", "application/fhir+json"), "Authorization", "Bearer "+admin).want(t, 201).JSON
	e.do("POST", "/Observation", map[string]any{"resourceType": "Observation", "status": "final", "code": map[string]any{"text": "held"},
		"subject": map[string]any{"reference": "Patient/B"}}, "Authorization", "Bearer "+admin).want(t, 201)
	refusing.wait(t, 1) // the notification is held, being retried

	sub["criteria"] = "Patient"
	sub["channel"] = map[string]any{"type": "rest-hook", "endpoint": other.srv.URL, "payload": "application/fhir+json"}
	e.do("PUT", "/Subscription/"+sub["id"].(string), sub, "Authorization", "Bearer "+tok.AccessToken).want(t, 200)
	waitFor(t, "the held notification dropped", func() bool { return len(e.outbox("")) == 0 })
	if got := other.calls(); len(got) != 0 {
		t.Fatalf("the new owner's endpoint was sent %d notifications: %s", len(got), got[0].Body)
	}
}
