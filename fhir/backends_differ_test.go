package fhir_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// TestBackendsAnswerAlike: the same requests, sent to a server on bbolt
// and to one on the backend the tests run on (PostgreSQL with
// P2P_TEST_DB=postgres), get the same answers (status and body as JSON,
// less the times and ids the server stamps): writes that delete and
// create the same id again in one batch Bundle (whose entries commit in
// one group), updates that change no index entry, conditional creates
// and updates, a transaction's searches of its own writes, and then
// every read, vread, history and search of them.
func TestBackendsAnswerAlike(t *testing.T) {
	bolt := newServerOn(t, filepath.Join(t.TempDir(), "bolt.db"))
	other := newServerOn(t, storetest.DSN(t))
	obs := func(id, status string, v int) string {
		return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":%q,"code":{"text":"c%d"},"valueInteger":%d,"subject":{"reference":"Patient/p1"}}`, id, status, v%3, v)
	}
	entry := func(method, url, body string, hdr ...string) string {
		req := fmt.Sprintf(`"request":{"method":%q,"url":%q%s}`, method, url, strings.Join(hdr, ""))
		if body == "" {
			return "{" + req + "}"
		}
		return `{"resource":` + body + "," + req + "}"
	}
	bundle := func(typ string, es ...string) string {
		return `{"resourceType":"Bundle","type":"` + typ + `","entry":[` + strings.Join(es, ",") + `]}`
	}
	type step struct{ method, path, body string }
	steps := []step{
		{"PUT", "/Patient/p1", `{"resourceType":"Patient","id":"p1","name":[{"family":"One"}]}`},
		{"PUT", "/Observation/a", obs("a", "final", 1)},
		{"PUT", "/Observation/b", obs("b", "final", 2)},
		// Deleted and made again in one batch: its entries commit in
		// one group.
		{"POST", "/", bundle("batch",
			entry("DELETE", "Observation/a", ""),
			entry("PUT", "Observation/a", obs("a", "amended", 3)),
			entry("PUT", "Observation/b", obs("b", "final", 2)), // no entry changes
			entry("DELETE", "Observation/b", ""),
			entry("PUT", "Observation/c", obs("c", "final", 4)),
			entry("DELETE", "Observation/c", ""),
			entry("PUT", "Observation/d", obs("d", "final", 5)),
			entry("PUT", "Observation/d", obs("d", "preliminary", 5)),
			entry("DELETE", "Observation/nothing", ""),
		)},
		{"POST", "/", bundle("batch",
			entry("PUT", "Observation/b", obs("b", "corrected", 6)),
			entry("DELETE", "Observation/d", ""),
			entry("PUT", "Observation/d", obs("d", "final", 7)),
			entry("POST", "Observation", `{"resourceType":"Observation","status":"final","code":{"text":"cond"},"identifier":[{"system":"urn:x","value":"1"}]}`, `,"ifNoneExist":"identifier=urn:x|1"`),
			entry("POST", "Observation", `{"resourceType":"Observation","status":"final","code":{"text":"cond"},"identifier":[{"system":"urn:x","value":"1"}]}`, `,"ifNoneExist":"identifier=urn:x|1"`),
		)},
		{"PUT", "/Observation?identifier=urn:x|2", `{"resourceType":"Observation","id":"e","status":"final","code":{"text":"cu"},"identifier":[{"system":"urn:x","value":"2"}]}`},
		{"PUT", "/Observation?identifier=urn:x|2", `{"resourceType":"Observation","id":"e","status":"amended","code":{"text":"cu"},"identifier":[{"system":"urn:x","value":"2"}]}`},
		{"DELETE", "/Observation?identifier=urn:x|2", ""},
		{"PUT", "/Observation/e", `{"resourceType":"Observation","id":"e","status":"final","code":{"text":"back"}}`},
		// A transaction's searches (its GET entries, run after its
		// writes, in its transaction) see its writes.
		{"POST", "/", bundle("transaction",
			entry("PUT", "Observation/a", obs("a", "final", 8)),
			entry("DELETE", "Observation/d", ""),
			entry("PUT", "Observation/f", obs("f", "final", 9)),
			entry("PUT", "Patient/p1", `{"resourceType":"Patient","id":"p1","name":[{"family":"Changed"}]}`),
			entry("GET", "Observation?status=final&_include=Observation:subject", ""),
			entry("GET", "Observation?code=c0,c1,c2&_count=2", ""),
			entry("GET", "Patient?_revinclude=Observation:subject", ""),
			entry("GET", "Observation?subject:Patient.name=Changed&_sort=-_id", ""),
		)},
	}
	reads := []string{"/Patient/p1", "/Patient/p1/_history", "/Observation/_history", "/_history",
		"/Observation", "/Observation?status=final", "/Observation?status=amended,preliminary,corrected",
		"/Observation?code=c0,c1,c2,cond,cu,back", "/Observation?_sort=-status,_id", "/Observation?_summary=count",
		"/Observation?subject=Patient/p1&_include=Observation:subject", "/Patient?_revinclude=Observation:subject",
		"/Observation?identifier=urn:x|1", "/Observation?identifier=urn:x|2", "/Observation?_count=2", "/Observation?_id=a,b,c,d,e"}
	for _, id := range []string{"a", "b", "c", "d", "e", "nothing"} {
		reads = append(reads, "/Observation/"+id, "/Observation/"+id+"/_history")
		for v := 1; v <= 4; v++ {
			reads = append(reads, fmt.Sprintf("/Observation/%s/_history/%d", id, v))
		}
	}
	answer := func(ts *testServer, method, path, body string) string {
		r := ts.do(method, path, body)
		return fmt.Sprint(r.Status, " ", normalAnswer(t, r.Body, ts.URL))
	}
	for _, s := range steps {
		var wg sync.WaitGroup
		var a, b string
		wg.Add(2)
		go func() { defer wg.Done(); a = answer(bolt, s.method, s.path, s.body) }()
		go func() { defer wg.Done(); b = answer(other, s.method, s.path, s.body) }()
		wg.Wait()
		if !strings.HasPrefix(a, "2") {
			t.Errorf("%s %s: bbolt answers %.300s", s.method, s.path, a)
		}
		if a != b {
			t.Errorf("%s %s: bbolt answers\n%s\n%s answers\n%s", s.method, s.path, a, storetest.Backend(), b)
		}
	}
	for _, p := range reads {
		if a, b := answer(bolt, "GET", p, ""), answer(other, "GET", p, ""); a != b {
			t.Errorf("GET %s: bbolt answers\n%s\n%s answers\n%s", p, a, storetest.Backend(), b)
		}
	}
}

// normalAnswer returns body as JSON with what two servers stamp
// differently taken out: times, the ids they give, Bundle ids, links'
// and locations' bases.
func normalAnswer(t *testing.T, body []byte, base string) string {
	t.Helper()
	if len(body) == 0 {
		return ""
	}
	var v any
	if err := json.Unmarshal([]byte(strings.ReplaceAll(string(body), base, "BASE")), &v); err != nil {
		return string(body)
	}
	ids := map[string]string{}
	var walk func(v any, parent string) any
	walk = func(v any, parent string) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				switch {
				case k == "lastUpdated" || k == "timestamp" || k == "link" || k == "etag" || k == "lastModified":
					delete(x, k)
				case k == "id" && (x["resourceType"] == "Bundle" || x["resourceType"] == "OperationOutcome"):
					delete(x, k)
				case k == "id" || k == "location" || k == "fullUrl" || k == "reference":
					s, _ := e.(string)
					for _, part := range strings.Split(s, "/") {
						if len(part) == 36 && strings.Count(part, "-") == 4 {
							if ids[part] == "" {
								ids[part] = fmt.Sprintf("ID%d", len(ids))
							}
							s = strings.ReplaceAll(s, part, ids[part])
						}
					}
					x[k] = s
				default:
					x[k] = walk(e, k)
				}
			}
		case []any:
			for i := range x {
				x[i] = walk(x[i], parent)
			}
		}
		return v
	}
	out, _ := json.Marshal(walk(v, ""))
	return string(out)
}
