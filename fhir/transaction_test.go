package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
)

func TestTransactionRewritesReferences(t *testing.T) {
	ts := newServer(t)
	ts.do(http.MethodPut, "/Organization/payer1", `{"resourceType":"Organization","id":"payer1","identifier":[{"system":"urn:payer","value":"P1"}]}`).want(t, http.StatusCreated)
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[
	 {"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"resourceType":"Patient","name":[{"family":"Tx"}],
	   "managingOrganization":{"reference":"Organization?identifier=urn:payer|P1"}},"request":{"method":"POST","url":"Patient"}},
	 {"fullUrl":"urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059","resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
	   "subject":{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},"request":{"method":"POST","url":"Observation"}},
	 {"resource":{"resourceType":"Organization","identifier":[{"system":"urn:payer","value":"P1"}]},
	   "request":{"method":"POST","url":"Organization","ifNoneExist":"identifier=urn:payer|P1"}},
	 {"request":{"method":"GET","url":"Organization/payer1"}}
	]}`
	r := ts.do(http.MethodPost, "/", tx).want(t, http.StatusOK)
	if r.JSON["type"] != "transaction-response" {
		t.Fatalf("type %v", r.JSON["type"])
	}
	entries := r.JSON["entry"].([]any)
	status := func(i int) string {
		return entries[i].(map[string]any)["response"].(map[string]any)["status"].(string)
	}
	if status(0) != "201 Created" || status(1) != "201 Created" || status(2) != "200 OK" || status(3) != "200 OK" {
		t.Fatalf("statuses: %s", r.Body)
	}
	loc := entries[0].(map[string]any)["response"].(map[string]any)["location"].(string)
	patRef := strings.Join(strings.Split(loc, "/")[:2], "/")
	obsLoc := entries[1].(map[string]any)["response"].(map[string]any)["location"].(string)
	obs := ts.do(http.MethodGet, "/"+strings.Join(strings.Split(obsLoc, "/")[:2], "/"), nil).want(t, http.StatusOK)
	if got := obs.JSON["subject"].(map[string]any)["reference"]; got != patRef {
		t.Errorf("subject %v, want %v", got, patRef)
	}
	pat := ts.do(http.MethodGet, "/"+patRef, nil).want(t, http.StatusOK)
	if got := pat.JSON["managingOrganization"].(map[string]any)["reference"]; got != "Organization/payer1" {
		t.Errorf("conditional reference resolved to %v", got)
	}
	// The conditional create found the existing organization.
	orgs := ts.do(http.MethodGet, "/Organization?_summary=count", nil)
	if orgs.JSON["total"] != json.Number("1") {
		t.Errorf("%v organizations", orgs.JSON["total"])
	}
}

func TestTransactionIsAllOrNothing(t *testing.T) {
	ts := newServer(t)
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[
	 {"resource":{"resourceType":"Patient","id":"keep-out","name":[{"family":"Never"}]},"request":{"method":"PUT","url":"Patient/keep-out"}},
	 {"resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}},"request":{"method":"PUT","url":"Observation/o1","ifMatch":"W/\"4\""}}
	]}`
	r := ts.do(http.MethodPost, "/", tx).want(t, http.StatusPreconditionFailed)
	if !strings.Contains(r.outcome(t), "entry 1") {
		t.Errorf("outcome does not say which entry: %s", r.Body)
	}
	ts.do(http.MethodGet, "/Patient/keep-out", nil).want(t, http.StatusNotFound)

	bad := `{"resourceType":"Bundle","type":"transaction","entry":[
	 {"resource":{"resourceType":"Patient","name":[{"family":"Never"}]},"request":{"method":"POST","url":"Patient"}},
	 {"resource":{"resourceType":"Patient","birthDate":"not a date"},"request":{"method":"POST","url":"Patient"}}
	]}`
	ts.do(http.MethodPost, "/", bad).want(t, http.StatusBadRequest).outcome(t)
	if n := ts.do(http.MethodGet, "/Patient?_summary=count", nil).JSON["total"]; n != json.Number("0") {
		t.Errorf("a failed transaction left %v patients", n)
	}
}

func TestBatchEntriesAreIndependent(t *testing.T) {
	ts := newServer(t)
	b := `{"resourceType":"Bundle","type":"batch","entry":[
	 {"resource":{"resourceType":"Patient","name":[{"family":"Ok"}]},"request":{"method":"POST","url":"Patient"}},
	 {"request":{"method":"GET","url":"Patient/missing"}},
	 {"resource":{"resourceType":"Patient","id":"b2"},"request":{"method":"PUT","url":"Patient/b2"}},
	 {"request":{"method":"GET","url":"Patient?family=ok"}}
	]}`
	r := ts.do(http.MethodPost, "/", b).want(t, http.StatusOK)
	entries := r.JSON["entry"].([]any)
	want := []string{"201 Created", "404 Not Found", "201 Created", "200 OK"}
	for i, w := range want {
		resp := entries[i].(map[string]any)["response"].(map[string]any)
		if resp["status"] != w {
			t.Errorf("entry %d: %v, want %s", i, resp["status"], w)
		}
	}
	if oo := entries[1].(map[string]any)["response"].(map[string]any)["outcome"]; oo == nil {
		t.Error("failed batch entry has no outcome")
	}
	search := entries[3].(map[string]any)["resource"].(map[string]any)
	if search["type"] != "searchset" || search["total"] != json.Number("1") {
		t.Errorf("search entry: %v", search)
	}
}

// TestBatchEntriesMayNotDependOnEachOther (more rows of
// TestBatchEntriesReferringToEachOther's rule): FHIR R4 http.html#brules, the
// entries of a batch "SHALL have no interdependencies ... Servers SHALL
// validate that this is the case". A resource referring to another entry
// by its fullUrl (a urn:uuid, or the fullUrl of a POST, whose id the
// server chooses) depends on it; nothing replaces the link in a batch, so
// that entry is refused with 400 and nothing of it is written, while the
// others are processed. A reference that names no entry is no dependency.
// The same entries as a transaction are written with the link resolved.
func TestBatchEntriesMayNotDependOnEachOther(t *testing.T) {
	pat := `{"fullUrl":"%s","resource":{"resourceType":"Patient","name":[{"family":"Dep"}]},"request":{"method":"POST","url":"Patient"}}`
	obs := func(ref string) string {
		return `{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"` + ref + `"}},"request":{"method":"POST","url":"Observation"}}`
	}
	const uuid = "urn:uuid:5f0c2a4e-0000-4000-8000-000000000001"
	for _, c := range []struct {
		name, fullURL, second string
		want                  string // the second entry's status in the batch
	}{
		{"a urn:uuid reference", uuid, obs(uuid), "400 Bad Request"},
		{"a version of a urn:uuid", uuid, obs(uuid + "/_history/1"), "400 Bad Request"},
		{"the absolute fullUrl of a POST", "http://example.org/fhir/Patient/tmp1", obs("http://example.org/fhir/Patient/tmp1"), "400 Bad Request"},
		{"a urn:oid reference", "urn:oid:1.2.3.4", obs("urn:oid:1.2.3.4"), "400 Bad Request"},
		{"in a contained resource", uuid, `{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Provenance","id":"p","recorded":"2024-01-01T00:00:00Z","target":[{"reference":"` + uuid + `"}],"agent":[{"who":{"display":"x"}}]}],"subject":{"reference":"#p"}},"request":{"method":"POST","url":"Observation"}}`, "400 Bad Request"},
		{"a urn:uuid naming no entry", uuid, obs("urn:uuid:5f0c2a4e-0000-4000-8000-000000000099"), "201 Created"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := newServer(t)
			entries := fmt.Sprintf(pat, c.fullURL) + "," + c.second
			r := ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"batch","entry":[`+entries+`]}`).want(t, http.StatusOK)
			got := r.JSON["entry"].([]any)
			first := got[0].(map[string]any)["response"].(map[string]any)
			second := got[1].(map[string]any)["response"].(map[string]any)
			if first["status"] != "201 Created" || second["status"] != c.want {
				t.Fatalf("batch answered %v and %v, want 201 Created and %s", first["status"], second["status"], c.want)
			}
			n := ts.do(http.MethodGet, "/Observation?_summary=count", nil).JSON["total"]
			if c.want != "201 Created" {
				if !strings.Contains(fmt.Sprint(second["outcome"]), "is the fullUrl of entry 0") {
					t.Errorf("the refused entry's outcome: %v", second["outcome"])
				}
				if n != json.Number("0") {
					t.Errorf("%v Observations written by the refused entry", n)
				}
			}

			ts = newServer(t)
			r = ts.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"transaction","entry":[`+entries+`]}`).want(t, http.StatusOK)
			got = r.JSON["entry"].([]any)
			patient := strings.Join(strings.Split(got[0].(map[string]any)["response"].(map[string]any)["location"].(string), "/")[:2], "/")
			loc := got[1].(map[string]any)["response"].(map[string]any)["location"].(string)
			o := ts.do(http.MethodGet, "/"+strings.Join(strings.Split(loc, "/")[:2], "/"), nil).want(t, http.StatusOK)
			if c.want != "201 Created" && !strings.Contains(string(o.Body), `"`+patient) {
				t.Errorf("in a transaction the link is not resolved to %s: %s", patient, o.Body)
			}
		})
	}
}

// TestSyntheaTransactions loads Synthea's patient transaction bundles (with
// urn:uuid references throughout) and checks every reference resolves.
func TestSyntheaTransactions(t *testing.T) {
	ts := newServer(t, func(c *fhir.Config) { c.MaxBody = 32 << 20 })
	files, _ := filepath.Glob(filepath.Join(testdata, "synthea", "*.json"))
	if len(files) < 3 {
		t.Fatal("no synthea bundles")
	}
	for _, f := range files[:3] {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := ts.do(http.MethodPost, "/", raw)
		if r.Status != http.StatusOK {
			t.Fatalf("%s: %d %.500s", filepath.Base(f), r.Status, r.Body)
		}
	}
	r := ts.do(http.MethodGet, "/Encounter?_count=1000", nil).want(t, http.StatusOK)
	if len(bundleIDs(r.JSON)) == 0 {
		t.Fatal("no encounters")
	}
	for _, e := range r.JSON["entry"].([]any) {
		enc := e.(map[string]any)["resource"].(map[string]any)
		ref := enc["subject"].(map[string]any)["reference"].(string)
		if strings.HasPrefix(ref, "urn:uuid:") {
			t.Fatalf("reference %s was not rewritten", ref)
		}
		ts.do(http.MethodGet, "/"+ref, nil).want(t, http.StatusOK)
	}
}

// TestTransactionVersionsShareLastUpdated: the resources a transaction
// creates and updates are prepared at one time and written with one
// lastUpdated (a transaction is one change of the server's state, FHIR R4
// http.html#transaction), even when other writes commit while it is
// prepared. The entries are many, so that preparing them takes long
// enough for stamps taken one by one to differ.
func TestTransactionVersionsShareLastUpdated(t *testing.T) {
	ts := newServer(t)
	ts.do(http.MethodPut, "/Patient/up", `{"resourceType":"Patient","id":"up","active":false}`).want(t, http.StatusCreated)
	var b strings.Builder
	b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	b.WriteString(`{"resource":{"resourceType":"Patient","id":"up","active":true},"request":{"method":"PUT","url":"Patient/up"}}`)
	for i := range 300 {
		fmt.Fprintf(&b, `,{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Observation","status":"final","code":{"text":"x%d"},"subject":{"reference":"Patient/up"}},"request":{"method":"POST","url":"Observation"}}`, i, i)
	}
	b.WriteString(`]}`)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // other writes commit meanwhile
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ts.do(http.MethodPost, "/Basic", fmt.Sprintf(`{"resourceType":"Basic","code":{"text":"other %d"}}`, i))
		}
	}()
	r := ts.do(http.MethodPost, "/", b.String()).want(t, http.StatusOK)
	close(stop)
	<-done
	stamps := map[string]int{}
	for _, e := range r.JSON["entry"].([]any) {
		stamps[e.(map[string]any)["response"].(map[string]any)["lastModified"].(string)]++
	}
	if len(stamps) != 1 {
		t.Fatalf("the transaction's versions have %d lastUpdated times, want one", len(stamps))
	}
	for at := range stamps {
		pat := ts.do(http.MethodGet, "/Patient/up", nil).want(t, http.StatusOK)
		if got := pat.JSON["meta"].(map[string]any)["lastUpdated"]; got == nil || !sameInstant(t, got.(string), at) {
			t.Errorf("Patient/up lastUpdated %v, the transaction's answer %s", got, at)
		}
		// The _lastUpdated index holds the time written: the transaction's
		// 301 versions are found at it.
		found := ts.do(http.MethodGet, "/Observation?_summary=count&_lastUpdated=eq"+url.QueryEscape(at), nil).want(t, http.StatusOK)
		if found.JSON["total"] != json.Number("300") {
			t.Errorf("_lastUpdated=eq%s finds %v Observations, want 300", at, found.JSON["total"])
		}
	}
}

func sameInstant(t *testing.T, a, b string) bool {
	t.Helper()
	ta, err1 := time.Parse(time.RFC3339Nano, a)
	tb, err2 := time.Parse(time.RFC3339Nano, b)
	if err1 != nil || err2 != nil {
		t.Fatalf("times %q %q: %v %v", a, b, err1, err2)
	}
	return ta.Equal(tb)
}
