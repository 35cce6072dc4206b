package fhir_test

import (
	"net/http"
	"strings"
	"testing"
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
