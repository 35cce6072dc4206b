package fhir_test

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
)

// TestTransactionPreparedOnAStaleSnapshot: a transaction is prepared on a
// snapshot, outside the writer. When a write committed after the snapshot
// and before the transaction's turn changed what it read (here, the
// Patient its PUT names was created meanwhile), it is prepared again in
// the writer and answers as the state it was written on: an update of
// version 1 (200 OK, version 2, FHIR R4 http.html#update), and a
// version-specific reference to the entry's fullUrl names the version the
// transaction writes, 2 (http.html#trules: links to entries are replaced
// by their new locations).
func TestTransactionPreparedOnAStaleSnapshot(t *testing.T) {
	ts := newServer(t)
	g := holdWriter(ts)
	held := g.start(ts)
	first := make(chan *result, 1)
	go func() {
		first <- ts.do(http.MethodPut, "/Patient/stale-1", `{"resourceType":"Patient","id":"stale-1","gender":"male"}`)
	}()
	waitQueued(t, ts, 1)
	txc := make(chan *result, 1)
	go func() {
		txc <- ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"transaction","entry":[
		 {"fullUrl":"`+ts.URL+`/Patient/stale-1","resource":{"resourceType":"Patient","id":"stale-1","gender":"female"},"request":{"method":"PUT","url":"Patient/stale-1"}},
		 {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"`+ts.URL+`/Patient/stale-1/_history/1"}},"request":{"method":"POST","url":"Observation"}}]}`)
	}()
	waitQueued(t, ts, 2) // prepared on a snapshot without Patient/stale-1
	close(g.release)
	<-held
	(<-first).want(t, http.StatusCreated)
	r := (<-txc).want(t, http.StatusOK)
	resp := r.JSON["entry"].([]any)[0].(map[string]any)["response"].(map[string]any)
	if resp["status"] != "200 OK" || resp["etag"] != `W/"2"` {
		t.Errorf("the PUT entry answered %v %v, want 200 OK and W/\"2\" (an update of what was created meanwhile)", resp["status"], resp["etag"])
	}
	loc := r.JSON["entry"].([]any)[1].(map[string]any)["response"].(map[string]any)["location"].(string)
	obs := ts.do(http.MethodGet, "/"+strings.Join(strings.Split(loc, "/")[:2], "/"), nil).want(t, http.StatusOK)
	if got := obs.JSON["subject"].(map[string]any)["reference"]; got != "Patient/stale-1/_history/2" {
		t.Errorf("the Observation's subject is %v, want Patient/stale-1/_history/2", got)
	}
	p := ts.do(http.MethodGet, "/Patient/stale-1", nil).want(t, http.StatusOK)
	if p.JSON["gender"] != "female" || p.JSON["meta"].(map[string]any)["versionId"] != "2" {
		t.Errorf("Patient/stale-1: %s", p.Body)
	}
}

// TestTransactionConditionalCreateRace: a transaction's conditional create
// (ifNoneExist, FHIR R4 http.html#ccreate) is decided on a snapshot,
// outside the writer, and a concurrent create of the same resource may
// commit between that snapshot and the transaction's turn, or just after
// it. Either way exactly one resource is made: the transaction is prepared
// again in the writer when its search would now answer differently (and
// then answers 200 OK with the resource made meanwhile), and a
// conditional create queued behind the transaction finds what it wrote.
// Each row runs a small transaction and a large one (committed alone,
// Store.WriteAlone).
func TestTransactionConditionalCreateRace(t *testing.T) {
	for _, size := range []int{2, 8} { // LargeBundleEntries is 5
		for _, txFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("entries=%d/transaction-first=%v", size, txFirst), func(t *testing.T) {
				ts := newServer(t, func(c *fhir.Config) { c.LargeBundleEntries = 5 })
				g := holdWriter(ts)
				held := g.start(ts)
				const ident = "urn:race|m-1"
				create := func() *result {
					return ts.do(http.MethodPost, "/Patient", `{"resourceType":"Patient","identifier":[{"system":"urn:race","value":"m-1"}],"name":[{"family":"Direct"}]}`, "If-None-Exist", "identifier="+ident)
				}
				var b strings.Builder
				b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","identifier":[{"system":"urn:race","value":"m-1"}],"name":[{"family":"Transaction"}]},"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=` + ident + `"}}`)
				for i := 1; i < size; i++ {
					fmt.Fprintf(&b, `,{"resource":{"resourceType":"Basic","code":{"text":"race %d"}},"request":{"method":"POST","url":"Basic"}}`, i)
				}
				b.WriteString(`]}`)
				direct, txc := make(chan *result, 1), make(chan *result, 1)
				if txFirst {
					go func() { txc <- ts.do(http.MethodPost, "/", b.String()) }()
					waitQueued(t, ts, 1)
					go func() { direct <- create() }()
				} else {
					go func() { direct <- create() }()
					waitQueued(t, ts, 1)
					go func() { txc <- ts.do(http.MethodPost, "/", b.String()) }()
				}
				waitQueued(t, ts, 2) // both prepared on a snapshot without the Patient
				close(g.release)
				<-held
				d := <-direct
				tx := (<-txc).want(t, http.StatusOK)
				resp := tx.JSON["entry"].([]any)[0].(map[string]any)["response"].(map[string]any)
				wantTx, wantDirect := "200 OK", http.StatusCreated
				if txFirst {
					wantTx, wantDirect = "201 Created", http.StatusOK
				}
				if resp["status"] != wantTx {
					t.Errorf("the transaction's conditional create answered %v, want %s", resp["status"], wantTx)
				}
				d.want(t, wantDirect)
				found := ts.do(http.MethodGet, "/Patient?identifier="+url.QueryEscape(ident), nil).want(t, http.StatusOK)
				if ids := bundleIDs(found.JSON); len(ids) != 1 {
					t.Fatalf("%d Patients with the identifier, want exactly one: %v", len(ids), ids)
				}
				if loc, _ := resp["location"].(string); !strings.HasPrefix(loc, bundleIDs(found.JSON)[0]+"/") {
					t.Errorf("the transaction's entry names %q, not the one Patient %s", loc, bundleIDs(found.JSON)[0])
				}
			})
		}
	}
}
