package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// leaseHolder returns the pid of the process holding lease key in the
// database at dsn (see package lease: the owner is host-pid-random), 0
// when none holds it.
func leaseHolder(t *testing.T, db store.DB, key string) int {
	t.Helper()
	var raw []byte
	if err := db.View(context.Background(), func(tx backend.Tx) error {
		if b := tx.Bucket([]byte("leases")); b != nil {
			raw = append(raw, b.Get([]byte(key))...)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if raw == nil {
		return 0
	}
	var rec struct {
		Owner string `json:"owner"`
	}
	if err := json.Unmarshal(raw, &rec); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(rec.Owner, "-")
	if len(parts) < 3 {
		t.Fatalf("lease owner %q", rec.Owner)
	}
	pid, _ := strconv.Atoi(parts[len(parts)-2])
	return pid
}

// hookCall is one rest-hook request the receiver got.
type hookCall struct {
	id       string // X-Notification-Id
	resource string // the id of the resource in the payload
	began    time.Time
	answered bool
}

// TestTwoProcessesOneDatabaseSurviveKill9 runs two p2pserver processes
// (the binary) on one PostgreSQL database with one -secret-key, behind
// one -base-url. A batch job pulls a member's data page by page from a
// source payer, and writes through both processes match a rest-hook
// Subscription while the job runs. The process holding the job's lease is
// killed with SIGKILL mid-job, deliveries in flight. The other takes the
// job over once the lease expires and completes it with every resource
// written once; every notification is delivered, none sent twice unless
// its first attempt was in flight when its process died (then under the
// same X-Notification-Id, for the receiver to drop); and every create
// the killed process acknowledged is readable through the survivor.
func TestTwoProcessesOneDatabaseSurviveKill9(t *testing.T) {
	bin := buildP2PServer(t)
	dsn := pgtest.Database(t)
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	// The source answers each page of $everything after a while, so that
	// the job is still under way when its process is killed.
	slow := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "$everything") && r.Header.Get("Authorization") != "Bearer "+testAdmin {
				time.Sleep(150 * time.Millisecond)
			}
			h.ServeHTTP(w, r)
		})
	}
	source := startPayerWrapped(t, slow, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer())
	srcPatient := loadMember(t, source)

	var mu sync.Mutex
	var calls []*hookCall
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var res struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(body, &res)
		c := &hookCall{id: r.Header.Get("X-Notification-Id"), resource: res.ID, began: time.Now()}
		mu.Lock()
		calls = append(calls, c)
		mu.Unlock()
		time.Sleep(100 * time.Millisecond) // deliveries stay in flight a while
		mu.Lock()
		c.answered = true
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	defer receiver.Close()

	args := []string{"-db", dsn, "-secret-key", testSecretKey, "-admin-token", testAdmin, "-backoffice-token", testBackoffice,
		"-trusted-issuers", idp.Issuer(), "-base-url", "http://p2p.example", "-lease-duration", "5s", "-work-scan", "100ms", "-log-level", "warn"}
	first := startChild(t, bin, args...)
	second := startChild(t, bin, args...)
	children := map[int]*childPayer{first.cmd.Process.Pid: first, second.cmd.Process.Pid: second}
	via := map[*childPayer]*payer{first: {t: t, URL: first.URL}, second: {t: t, URL: second.URL}}
	a, b := via[first], via[second]

	if st := a.call("PUT", "/fhir/Patient/member-1", testAdmin, `{"resourceType":"Patient","id":"member-1","name":[{"family":"Mueller","given":["Angelic"]}],"birthDate":"1990-01-01"}`, nil); st != 201 {
		t.Fatalf("member: %d", st)
	}
	var sub map[string]any
	if st := b.call("POST", "/fhir/Subscription", testAdmin, map[string]any{"resourceType": "Subscription", "status": "requested", "reason": "test",
		"criteria": "Basic", "channel": map[string]any{"type": "rest-hook", "endpoint": receiver.URL, "payload": "application/fhir+json"}}, &sub); st != 201 {
		t.Fatalf("Subscription: %d %v", st, sub)
	}
	def := map[string]any{"name": "Source Payer A", "issuer": idp.Issuer(), "clientId": "payer-b", "clientSecret": "payer-b-secret",
		"fhirEndpoint": source.URL + "/fhir", "tokenEndpoint": idp.TokenEndpoint(), "authWellKnown": idp.WellKnownURL(),
		"scopes": "openid offline_access patient/*.read", "responseType": "code", "organizationId": "PAYRA"}
	var created map[string]any
	if st := a.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
		t.Fatalf("register the source: %d %v", st, created)
	}
	pid := int64(created["pid"].(float64))
	tok, err := idp.MintFor([]string{source.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: srcPatient})
	if err != nil {
		t.Fatal(err)
	}
	want := everythingTypes(t, source, srcPatient)
	job := map[string]any{
		"sourcePayer": map[string]any{"oidcToken": tok.AccessToken, "oidcRefreshToken": tok.RefreshToken,
			"fhirBundleRequest": "Patient/" + srcPatient + "/$everything?_count=4", "patientId": srcPatient},
		"targetPayer": map[string]any{"patientId": "member-1", "organizationId": "PAYRB"},
	}
	var status map[string]any
	path := fmt.Sprintf("/api/oidc_servers/%d/batch_job", pid)
	if st := a.call("POST", path, testBackoffice, job, &status); st != 202 {
		t.Fatalf("start job: %d %v", st, status)
	}
	jobID := int64(status["batchJobId"].(float64))
	jobPath := fmt.Sprintf("%s/%d", path, jobID)
	poll := func(p *payer, what string, cond func(map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for {
			var st map[string]any
			p.call("GET", jobPath, testBackoffice, nil, &st)
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("gave up waiting for %s: %v", what, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	pages := func(st map[string]any) int {
		pr, _ := st["progress"].(map[string]any)
		n, _ := pr["pagesFetched"].(float64)
		return int(n)
	}
	poll(a, "two pages written", func(st map[string]any) bool { return pages(st) >= 2 })

	// Writes through both processes, each acknowledged, while the job runs.
	acked := map[*payer][]string{}
	var wg sync.WaitGroup
	var amu sync.Mutex
	for i := range 24 {
		p := []*payer{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out map[string]any
			if st := p.call("POST", "/fhir/Basic", testAdmin, map[string]any{"resourceType": "Basic", "code": map[string]any{"text": fmt.Sprint("w", i)}}, &out); st == 201 {
				amu.Lock()
				acked[p] = append(acked[p], out["id"].(string))
				amu.Unlock()
			}
		}()
	}
	wg.Wait()

	db, err := store.OpenDB(context.Background(), dsn, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	holder := leaseHolder(t, db, fmt.Sprintf("batch/%d", jobID))
	victim := children[holder]
	if victim == nil {
		t.Fatalf("the job's lease is held by pid %d, neither process (%v)", holder, children)
	}
	var survivor *childPayer
	for _, c := range children {
		if c != victim {
			survivor = c
		}
	}
	killedAt := time.Now()
	victim.kill9()
	s := via[survivor]
	var then map[string]any
	via[survivor].call("GET", jobPath, testBackoffice, nil, &then)
	t.Logf("killed the job's holder (pid %d) with page %d written", holder, pages(then))
	if then["batchStatus"] != "STARTED" {
		t.Fatalf("the job was not under way when its process was killed: %v", then["batchStatus"])
	}

	end := poll(s, "the job's end", func(st map[string]any) bool { return st["batchStatus"] == "COMPLETED" || st["batchStatus"] == "FAILED" })
	if end["batchStatus"] != "COMPLETED" {
		t.Fatalf("job: %v", end)
	}
	// Each resource of the source written once: as many of each type as
	// the source serves with an id, each in one version. (The Provenance
	// the source makes as it serves a page has a new urn:uuid each time:
	// a page read again brings new ones, so they are not counted.)
	progress := end["progress"].(map[string]any)
	written := progress["resourcesWritten"].(map[string]any)
	total := 0
	for typ, n := range written {
		total += int(n.(float64))
		if typ != "Provenance" && int(n.(float64)) != want[typ] {
			t.Errorf("%d %s written; the source serves %d", int(n.(float64)), typ, want[typ])
		}
	}
	if v := int(progress["versionsWritten"].(float64)); v != total {
		t.Errorf("%d versions written for %d resources: some written twice", v, total)
	}

	// Every create acknowledged by either process is readable through the
	// survivor.
	var all []string
	for p, ids := range acked {
		for _, id := range ids {
			all = append(all, id)
			if st := s.call("GET", "/fhir/Basic/"+id, testAdmin, nil, nil); st != 200 {
				t.Errorf("Basic/%s, acknowledged by %s, reads %d through the survivor", id, p.URL, st)
			}
		}
	}
	if len(all) != 24 {
		t.Fatalf("%d of 24 creates acknowledged", len(all))
	}
	// Every notification delivered; one notification per write; a second
	// delivery only of one in flight at the kill.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		got := map[string]bool{}
		for _, c := range calls {
			if c.answered {
				got[c.resource] = true
			}
		}
		mu.Unlock()
		n := 0
		for _, id := range all {
			if got[id] {
				n++
			}
		}
		if n == len(all) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d writes notified", n, len(all))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a late duplicate would show now; nothing is asserted on the time
	mu.Lock()
	defer mu.Unlock()
	byResource := map[string]map[string]bool{}
	attempts := map[string][]*hookCall{}
	for _, c := range calls {
		if byResource[c.resource] == nil {
			byResource[c.resource] = map[string]bool{}
		}
		byResource[c.resource][c.id] = true
		attempts[c.id] = append(attempts[c.id], c)
	}
	resent := 0
	for _, id := range all {
		if len(byResource[id]) != 1 {
			t.Errorf("Basic/%s was notified under %d notification ids, want 1", id, len(byResource[id]))
		}
	}
	for id, list := range attempts {
		if len(list) > 1 {
			resent++
			if !list[0].began.Before(killedAt) {
				t.Errorf("notification %s was sent %d times, its first attempt after the kill", id, len(list))
			}
		}
	}
	t.Logf("%d notifications delivered, %d sent again after the kill (their first attempt was in flight)", len(attempts), resent)
}

// everythingTypes counts, by type, the resources with an id that the
// source serves in the member's $everything (all pages, admin token).
func everythingTypes(t *testing.T, source *payer, patient string) map[string]int {
	t.Helper()
	out := map[string]int{}
	next := "/fhir/Patient/" + patient + "/$everything?_count=50"
	for next != "" {
		var b map[string]any
		if st := source.call("GET", next, testAdmin, nil, &b); st != 200 {
			t.Fatalf("GET %s: %d", next, st)
		}
		next = ""
		for _, l := range b["link"].([]any) {
			if l := l.(map[string]any); l["relation"] == "next" {
				next = strings.TrimPrefix(l["url"].(string), source.URL)
			}
		}
		entries, _ := b["entry"].([]any)
		for _, e := range entries {
			r := e.(map[string]any)["resource"].(map[string]any)
			if id, _ := r["id"].(string); id != "" {
				out[r["resourceType"].(string)]++
			}
		}
	}
	return out
}
