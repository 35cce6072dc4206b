package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// receiver is a rest-hook endpoint on loopback recording what each
// Subscription (by path) was sent.
type receiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got map[string][]string // path -> "Type/id" of each payload
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{got: map[string][]string{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var res struct{ ResourceType, ID string }
		_ = json.Unmarshal(body, &res)
		r.mu.Lock()
		r.got[req.URL.Path] = append(r.got[req.URL.Path], res.ResourceType+"/"+res.ID)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) calls(path string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got[path]...)
}

// TestSubscriptionAccess (rule 7) over real HTTP, for each kind of
// principal. Creating a Subscription needs the scopes to write it and to
// read what its criteria match; a member's criteria must be confined to
// their own record (SMART App Launch: patient/ scopes grant access to the
// patient's own data only; the Subscriptions Backport IG,
// safety_security.html: a Subscription's filters are weighed when its
// creation is authorized, and authorization is checked again when a
// notification is sent). What each Subscription is sent is only what its
// owner may read: a member's, their own data; a client's, the types its
// scopes let it read.
func TestSubscriptionAccess(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("portal", "portal-secret")
	idp.AddClient("backend", "backend-secret")
	p := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-trusted-issuers", idp.Issuer(),
		"-secret-key", testSecretKey)
	aud := []string{p.URL + "/fhir"}
	// A's record includes A2 (mutual MDM links, as a batch job writes
	// them); B is another member.
	link := func(other string) string {
		return `,"link":[{"other":{"reference":"Patient/` + other + `"},"type":"seealso"}]`
	}
	for id, extra := range map[string]string{"A": link("A2"), "A2": link("A"), "B": ""} {
		if st := p.call("PUT", "/fhir/Patient/"+id, testAdmin, `{"resourceType":"Patient","id":"`+id+`","name":[{"family":"Member `+id+`"}]`+extra+`}`, nil); st != 201 {
			t.Fatalf("Patient/%s: %d", id, st)
		}
	}
	member := func(scopes ...string) string {
		tok, err := idp.MintFor(aud, oidctest.Grant{ClientID: "portal", Patient: "A", Scopes: scopes})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	client := func(scopes ...string) string {
		tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "backend", Scopes: scopes, Audience: aud})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken
	}
	memberRO, memberRW := member("patient/*.read"), member("patient/*.*")
	subsOnly := client("system/Subscription.cruds")
	obsClient := client("system/Subscription.cruds", "system/Observation.rs")
	obsPatientClient := client("system/Subscription.cruds", "system/Observation.rs", "system/Patient.rs")

	hooks := newReceiver(t)
	subs := map[string]string{} // row -> Subscription id
	for _, c := range []struct {
		row, who, token, criteria string
		status                    int
		says                      string // part of the refusal
	}{
		{"member-ro", "member read-only", memberRO, "Observation?subject=Patient/A", 403, "Subscription"},
		{"member-own-obs", "member read-write", memberRW, "Observation?subject=Patient/A", 201, ""},
		{"member-own-patient", "member read-write", memberRW, "Patient?_id=A", 201, ""},
		// A2's record is read as A's, but a member writes only in their own
		// compartment.
		{"member-linked", "member read-write", memberRW, "Observation?subject=Patient/A2", 403, "does not confine"},
		{"member-all", "member read-write", memberRW, "Observation", 403, "confine the Subscription to the member's own record"},
		{"member-by-code", "member read-write", memberRW, "Observation?code=http://loinc.org|8867-4", 403, "Observation?subject=Patient/A"},
		{"member-other", "member read-write", memberRW, "Observation?subject=Patient/B", 403, "does not confine"},
		{"member-both", "member read-write", memberRW, "Observation?subject=Patient/A,Patient/B", 403, "does not confine"},
		{"subs-only-obs", "system client with one type", subsOnly, "Observation", 403, "must allow reading Observation"},
		{"subs-only-patient", "system client with one type", subsOnly, "Patient?_id=A", 403, "must allow reading Patient"},
		{"client-obs", "system client with Observation.rs", obsClient, "Observation", 201, ""},
		{"client-patient", "system client with Observation.rs", obsClient, "Patient", 403, "must allow reading Patient"},
		// A chain in the criteria reaches only what the owner may read, as
		// the same search would: without Patient read, whether B's
		// Observation is sent must not tell B's name.
		{"client-obs-chain", "system client with Observation.rs", obsClient, "Observation?subject:Patient.name=Member B", 201, ""},
		{"client-obs-patient-chain", "system client with Observation.rs and Patient.rs", obsPatientClient, "Observation?subject:Patient.name=Member B", 201, ""},
		{"backoffice", "back office", testBackoffice, "Observation", 401, ""},
		{"admin", "admin", testAdmin, "Observation", 201, ""},
	} {
		t.Run(c.row, func(t *testing.T) {
			sub := map[string]any{"resourceType": "Subscription", "status": "requested", "reason": c.who, "criteria": c.criteria,
				"channel": map[string]any{"type": "rest-hook", "endpoint": hooks.srv.URL + "/" + c.row, "payload": "application/fhir+json",
					"header": []any{"Authorization: Bearer " + c.row + "-receiver-secret"}}}
			var out map[string]any
			st := p.call("POST", "/fhir/Subscription", c.token, sub, &out)
			if st != c.status || !strings.Contains(fmt.Sprint(out), c.says) {
				t.Fatalf("%s creating %q: %d %v, want %d saying %q", c.who, c.criteria, st, out, c.status, c.says)
			}
			if st == 201 {
				subs[c.row] = out["id"].(string)
				if strings.Contains(fmt.Sprint(out), "receiver-secret") {
					t.Errorf("the answer shows the header value: %v", out)
				}
			}
		})
	}

	// A member may not take over an admin's Subscription (it is not in
	// their record, so for them it does not exist); a client that may write
	// Subscriptions but not read Observations may switch it off and on,
	// but not point it at itself: whoever sets where it sends becomes
	// whom it acts for, and must be allowed to read what it matches.
	var adminSub map[string]any
	p.call("GET", "/fhir/Subscription/"+subs["admin"], testAdmin, nil, &adminSub)
	stolen := map[string]any{}
	for k, v := range adminSub {
		stolen[k] = v
	}
	stolen["channel"] = map[string]any{"type": "rest-hook", "endpoint": hooks.srv.URL + "/stolen", "payload": "application/fhir+json"}
	if st := p.call("PUT", "/fhir/Subscription/"+subs["admin"], memberRW, stolen, nil); st != 404 && st != 403 {
		t.Errorf("a member pointing an admin's Subscription at itself: %d", st)
	}
	var oo map[string]any
	if st := p.call("PUT", "/fhir/Subscription/"+subs["admin"], subsOnly, stolen, &oo); st != 403 || !strings.Contains(fmt.Sprint(oo), "must allow reading Observation") {
		t.Errorf("a Subscription-only client pointing an admin's Subscription at itself: %d %v", st, oo)
	}
	for _, status := range []string{"off", "requested"} {
		adminSub["status"] = status
		if st := p.call("PUT", "/fhir/Subscription/"+subs["admin"], subsOnly, adminSub, &oo); st != 200 {
			t.Fatalf("the client sets the admin's Subscription %s: %d %v", status, st, oo)
		}
	}
	// An admin switching the member's Subscription off and on again changes
	// nothing of what it may send: it still acts for the member.
	var own map[string]any
	p.call("GET", "/fhir/Subscription/"+subs["member-own-obs"], memberRW, nil, &own)
	for _, status := range []string{"off", "requested"} {
		own["status"] = status
		if st := p.call("PUT", "/fhir/Subscription/"+subs["member-own-obs"], testAdmin, own, nil); st != 200 {
			t.Fatalf("admin sets the member's Subscription %s: %d", status, st)
		}
	}

	// The data: A's and B's Observations, and both Patients changed.
	write := func(body string) string {
		var out map[string]any
		if st := p.call("POST", "/fhir/"+strings.Split(strings.Split(body, `"resourceType":"`)[1], `"`)[0], testAdmin, body, &out); st != 201 {
			t.Fatalf("write %s: %d %v", body, st, out)
		}
		return out["resourceType"].(string) + "/" + out["id"].(string)
	}
	obsA2 := write(`{"resourceType":"Observation","status":"final","code":{"text":"A2's"},"subject":{"reference":"Patient/A2"}}`)
	obsA := write(`{"resourceType":"Observation","status":"final","code":{"text":"A's"},"subject":{"reference":"Patient/A"}}`)
	obsB := write(`{"resourceType":"Observation","status":"final","code":{"text":"B's"},"subject":{"reference":"Patient/B"}}`)
	for _, id := range []string{"A", "B"} {
		if st := p.call("PUT", "/fhir/Patient/"+id, testAdmin, `{"resourceType":"Patient","id":"`+id+`","name":[{"family":"Changed `+id+`"}]}`, nil); st != 200 {
			t.Fatalf("update Patient/%s: %d", id, st)
		}
	}
	want := map[string][]string{
		"member-own-obs":           {obsA},
		"member-own-patient":       {"Patient/A"},
		"client-obs":               {obsA, obsB, obsA2},
		"client-obs-chain":         nil,
		"client-obs-patient-chain": {obsB},
		"admin":                    {obsA, obsB, obsA2},
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var pending map[string]any
		p.call("GET", "/api/notifications", testAdmin, nil, &pending)
		list, _ := pending["notifications"].([]any)
		done := len(hooks.calls("/admin")) == 3 && len(hooks.calls("/client-obs")) == 3 && len(hooks.calls("/client-obs-patient-chain")) == 1 && len(list) == 0
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deliveries did not settle: %v", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for row, w := range want {
		got := hooks.calls("/" + row)
		if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(w)) {
			t.Errorf("%s was sent %v, want %v", row, got, w)
		}
	}
	for _, row := range []string{"stolen", "member-linked", "member-ro", "member-all", "member-by-code", "member-other", "member-both", "subs-only-obs", "subs-only-patient", "client-patient", "backoffice"} {
		if got := hooks.calls("/" + row); len(got) > 0 {
			t.Errorf("%s (refused) was sent %v", row, got)
		}
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}
