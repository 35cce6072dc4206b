package fhir_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/limit"
)

// writerGate holds the store's single writer on demand: a Basic resource
// with code "hold" blocks inside its write until Release. Tests use it to
// queue writes behind one another deterministically.
type writerGate struct {
	entered chan struct{}
	release chan struct{}
}

func holdWriter(ts *testServer) *writerGate {
	g := &writerGate{entered: make(chan struct{}, 1), release: make(chan struct{})}
	ts.fhir.AddValidator("Basic", func(tx *store.Tx, doc *store.Doc, _ *store.Version) error {
		if c, _ := doc.Map["code"].(map[string]any); c != nil && c["text"] == "hold" {
			g.entered <- struct{}{}
			<-g.release
		}
		return nil
	})
	return g
}

// start sends the holding write and returns once the writer runs it.
func (g *writerGate) start(ts *testServer) chan *result {
	done := make(chan *result, 1)
	go func() { done <- ts.do(http.MethodPost, "/Basic", `{"resourceType":"Basic","code":{"text":"hold"}}`) }()
	<-g.entered
	return done
}

// waitQueued waits until n writes wait behind the held one.
func waitQueued(t *testing.T, ts *testServer, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d queued writes", n), func() bool { return ts.fhir.Store().Queued() >= n })
}

// TestFailingWriteDoesNotRerunItsGroup: writes waiting together are
// committed together (group commit); one that fails (a stale If-Match,
// 412) is taken back alone. The others are run exactly once: a
// transaction of 40 entries is validated 40 times, not 40 more per
// failing neighbour.
func TestFailingWriteDoesNotRerunItsGroup(t *testing.T) {
	ts := newServer(t)
	var validated atomic.Int64
	ts.fhir.AddValidator("Observation", func(*store.Tx, *store.Doc, *store.Version) error {
		validated.Add(1)
		return nil
	})
	gate := holdWriter(ts)
	ts.do(http.MethodPut, "/Patient/p", `{"resourceType":"Patient","id":"p"}`).want(t, http.StatusCreated)

	held := gate.start(ts)
	const n = 40
	txDone := make(chan *result, 1)
	go func() { txDone <- ts.do(http.MethodPost, "/", transactionOf(n, 0)) }()
	waitQueued(t, ts, 1)
	stale := make(chan *result, 3)
	for range 3 {
		go func() {
			stale <- ts.do(http.MethodPut, "/Patient/p", `{"resourceType":"Patient","id":"p","active":true}`, "If-Match", `W/"7"`)
		}()
	}
	waitQueued(t, ts, 4)
	// A read is served while the writer is held.
	ts.do(http.MethodGet, "/Patient/p", nil).want(t, http.StatusOK)
	close(gate.release)

	(<-held).want(t, http.StatusCreated)
	(<-txDone).want(t, http.StatusOK)
	for range 3 {
		(<-stale).want(t, http.StatusPreconditionFailed).outcome(t)
	}
	if got := validated.Load(); got != n {
		t.Errorf("the transaction's %d entries were validated %d times: failing writes in its commit group made it run again", n, got)
	}
	if v := ts.do(http.MethodGet, "/Patient/p", nil).want(t, http.StatusOK); v.Header.Get("ETag") != `W/"1"` {
		t.Errorf("Patient/p is at %s after three refused updates", v.Header.Get("ETag"))
	}
	if total := ts.do(http.MethodGet, "/Observation?_summary=count", nil).JSON["total"]; total != json.Number(fmt.Sprint(n)) {
		t.Errorf("%v Observations stored, want %d", total, n)
	}
}

// TestWriteOfAGoneClientIsNotMade: a client that disconnects while its
// write waits for the writer cancels it; nothing is stored.
func TestWriteOfAGoneClientIsNotMade(t *testing.T) {
	ts := newServer(t)
	gate := holdWriter(ts)
	held := gate.start(ts)

	cancelled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(cancelled)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+"/Patient",
			strings.NewReader(`{"resourceType":"Patient","name":[{"family":"Gone"}]}`))
		req.Header.Set("Content-Type", "application/fhir+json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitQueued(t, ts, 1)
	cancel()
	<-cancelled
	// The server learns of the disconnect from the closed connection; the
	// write is still queued behind the held one.
	waitFor(t, "the server to see the client leave", func() bool { return ts.gone.Load() > 0 })
	ts.do(http.MethodGet, "/metadata", nil).want(t, http.StatusOK)
	close(gate.release)
	(<-held).want(t, http.StatusCreated)
	// The writer goes on serving others; writes take their turns in order,
	// so once this one is answered the cancelled one has had its turn.
	ts.do(http.MethodPost, "/Patient", `{"resourceType":"Patient","name":[{"family":"Stays"}]}`).want(t, http.StatusCreated)

	if total := ts.do(http.MethodGet, "/Patient?family=gone&_summary=count", nil).JSON["total"]; total != json.Number("0") {
		t.Errorf("the write of a client that went away was made (%v found)", total)
	}
}

// TestBundleEntryLimit: a transaction or batch with more entries than
// -max-bundle-entries is refused whole with 413 and an OperationOutcome
// (FHIR R4 http.html#transaction leaves the limit to the server; 413 is
// HTTP's answer to a request larger than the server will process), and
// nothing of it is written.
func TestBundleEntryLimit(t *testing.T) {
	ts := newServer(t, func(c *fhir.Config) { c.MaxBundleEntries = 5 })
	for _, c := range []struct {
		name    string
		body    string
		status  int
		written int
	}{
		{"transaction at the limit", transactionOf(5, 0), http.StatusOK, 5},
		{"transaction over the limit", transactionOf(6, 100), http.StatusRequestEntityTooLarge, 0},
		{"batch over the limit", strings.Replace(transactionOf(6, 200), `"transaction"`, `"batch"`, 1), http.StatusRequestEntityTooLarge, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := count(t, ts, "Observation")
			r := ts.do(http.MethodPost, "/", c.body).want(t, c.status)
			if c.status != http.StatusOK && !strings.Contains(r.outcome(t), "max-bundle-entries") {
				t.Errorf("the outcome does not name the limit: %s", r.Body)
			}
			if got := count(t, ts, "Observation") - before; got != c.written {
				t.Errorf("%d written, want %d", got, c.written)
			}
		})
	}
}

// TestTransactionReferenceForms: references between entries are
// rewritten in the resources the transaction prepares outside the writer,
// and the index entries computed there follow the rewritten form:
// urn:uuid and absolute fullUrls, escaped or not, and a conditional
// reference to a resource the same transaction creates (FHIR R4
// http.html#trules).
func TestTransactionReferenceForms(t *testing.T) {
	ts := newServer(t)
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[
	 {"fullUrl":"urn:uuid:aaaaaaaa-0000-4000-8000-000000000001","resource":{"resourceType":"Patient","identifier":[{"system":"urn:t","value":"1"}]},"request":{"method":"POST","url":"Patient"}},
	 {"fullUrl":"http://elsewhere.example/fhir/Practitioner/dr1","resource":{"resourceType":"Practitioner","id":"dr1"},"request":{"method":"PUT","url":"Practitioner/dr1"}},
	 {"resource":{"resourceType":"Organization","identifier":[{"system":"urn:org","value":"O1"}]},"request":{"method":"POST","url":"Organization"}},
	 {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},
	   "subject":{"reference":"urn:uuid:aaaaaaaa-0000-4000-8000-000000000001"},
	   "performer":[{"reference":"http://elsewhere.example/fhir/Practitioner/dr1"},{"reference":"Organization?identifier=urn:org|O1"}],
	   "focus":[{"reference":"urn:uuid:aaaa\u0061aaa-0000-4000-8000-000000000001"}]},"request":{"method":"POST","url":"Observation"}}
	]}`
	r := ts.do(http.MethodPost, "/", tx).want(t, http.StatusOK)
	entries := r.JSON["entry"].([]any)
	loc := func(i int) string {
		l := entries[i].(map[string]any)["response"].(map[string]any)["location"].(string)
		return strings.Join(strings.Split(l, "/")[:2], "/")
	}
	obs := ts.do(http.MethodGet, "/"+loc(3), nil).want(t, http.StatusOK).JSON
	ref := func(v any) string { return v.(map[string]any)["reference"].(string) }
	performers := obs["performer"].([]any)
	for _, c := range []struct{ name, got, want string }{
		{"urn:uuid", ref(obs["subject"]), loc(0)},
		{"absolute fullUrl", ref(performers[0]), "Practitioner/dr1"},
		{"conditional reference to an entry of the same transaction", ref(performers[1]), loc(2)},
		{"escaped urn:uuid", ref(obs["focus"].([]any)[0]), loc(0)},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
	// The index follows the rewritten references.
	found := ts.do(http.MethodGet, "/Observation?subject="+loc(0), nil).want(t, http.StatusOK)
	if ids := bundleIDs(found.JSON); len(ids) != 1 || ids[0] != loc(3) {
		t.Errorf("search by the rewritten subject found %v", ids)
	}
}

// transactionOf is a transaction of n Observations, numbered from first.
func transactionOf(n, first int) string {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Observation","status":"final","code":{"text":"n%d"}},"request":{"method":"POST","url":"Observation"}}`, first+i, first+i)
	}
	b.WriteString("]}")
	return b.String()
}

func count(t *testing.T, ts *testServer, typ string) int {
	t.Helper()
	var n int
	fmt.Sscan(string(ts.do(http.MethodGet, "/"+typ+"?_summary=count", nil).want(t, http.StatusOK).JSON["total"].(json.Number)), &n)
	return n
}

// TestDecodingBudget: a body is decoded only if it has no more JSON
// values than the budget its size limit implies (one per 16 bytes of
// -max-body): bodies of tiny values cost tens of times their size to
// decode, and are refused with 413 before that. An invalid resource lists
// at most 100 problems and counts the rest, so that an answer is not
// larger than what was sent.
func TestDecodingBudget(t *testing.T) {
	const limit = 1 << 20 // budget: 65,536 values
	ts := newServer(t, func(c *fhir.Config) { c.MaxBody = limit })
	fill := func(head, elem, tail string, size int) string {
		return head + strings.Repeat(elem, (size-len(head)-len(tail))/len(elem)) + tail
	}
	for _, c := range []struct {
		name   string
		body   string
		status int
	}{
		{"numbers", fill(`{"resourceType":"Patient","name":[{"given":[`, `0,`, `0]}]}`, 900_000), http.StatusRequestEntityTooLarge},
		{"empty objects", fill(`{"resourceType":"Patient","name":[`, `{},`, `{}]}`, 900_000), http.StatusRequestEntityTooLarge},
		{"unknown members", fill(`{"resourceType":"Patient","name":[`, `{"x":1},`, `{"x":1}]}`, 900_000), http.StatusRequestEntityTooLarge},
		{"a Bundle of empty entries", fill(`{"resourceType":"Bundle","type":"batch","entry":[`, `{},`, `{}]}`, 900_000), http.StatusRequestEntityTooLarge},
		{"many problems within the budget", fill(`{"resourceType":"Patient","name":[`, `{"x":1},`, `{"x":1}]}`, 200_000), http.StatusBadRequest},
		{"a large valid resource", fill(`{"resourceType":"Patient","name":[{"given":[`, `"Bartholomew-Maximilian-Alexander",`, `"A"]}]}`, 900_000), http.StatusCreated},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := "/Patient"
			if strings.Contains(c.body, `"Bundle"`) {
				path = "/"
			}
			r := ts.do(http.MethodPost, path, c.body).want(t, c.status)
			if c.status == http.StatusCreated {
				return
			}
			r.outcome(t)
			if issues := r.JSON["issue"].([]any); len(issues) > 101 {
				t.Errorf("%d issues listed", len(issues))
			}
			if c.status == http.StatusBadRequest && !strings.Contains(string(r.Body), "more problems were found") {
				t.Errorf("the outcome does not say problems were left out: %.300s", r.Body)
			}
			if len(r.Body) > 64<<10 {
				t.Errorf("a %d-byte answer to a %d-byte request", len(r.Body), len(c.body))
			}
		})
	}
	// The server still answers.
	ts.do(http.MethodGet, "/metadata", nil).want(t, http.StatusOK)
}

// TestDecodingBudgetFloor: the decoding budget is max(-max-body/16, 1024)
// values, so a small -max-body still admits 1,024; past the budget the
// 413 says the budget and its rule.
func TestDecodingBudgetFloor(t *testing.T) {
	for _, c := range []struct {
		limit int64
		want  int
	}{{1000, 1024}, {16 << 10, 1024}, {32 << 10, 2048}, {8 << 20, 524288}} {
		if got := fhir.ValueBudget(c.limit); got != c.want {
			t.Errorf("ValueBudget(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
	ts := newServer(t, func(c *fhir.Config) { c.MaxBody = 4 << 10 }) // 256 by the ratio, 1024 by the floor
	given := func(n int) string {
		return `{"resourceType":"Patient","name":[{"given":[` + strings.TrimSuffix(strings.Repeat(`0,`, n), ",") + `]}]}`
	}
	// 1,000 numbers and 4 more values: over 256, within the floor (400 is
	// the refusal of numbers as given names, after decoding).
	ts.do(http.MethodPost, "/Patient", given(1000)).want(t, http.StatusBadRequest)
	r := ts.do(http.MethodPost, "/Patient", given(1100)).want(t, http.StatusRequestEntityTooLarge)
	if body := r.outcome(t); !strings.Contains(body, "more than 1024 JSON values") || !strings.Contains(body, "one value per 16 bytes of -max-body, at least 1024") {
		t.Errorf("the refusal does not state the budget: %.400s", body)
	}
}

// TestResultSetsBoundedInBytes: paging a search keeps nothing (its
// links carry its parameters, sealed), so long queries evict no one's
// paging: the links of every search stay valid; a query that alone would
// take more than a quarter of -search-cache-bytes is refused as too costly
// (422, issue too-costly).
func TestResultSetsBoundedInBytes(t *testing.T) {
	ts := newServer(t, func(c *fhir.Config) { c.SearchCacheBytes = 400 << 10 })
	for range 30 {
		ts.do(http.MethodPost, "/Observation", `{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:t","code":"page"}]}}`).want(t, http.StatusCreated)
	}
	longQuery := func(i, n int) string {
		var b strings.Builder
		fmt.Fprintf(&b, "/Observation?_count=10&code=urn:t|page")
		for j := range n {
			fmt.Fprintf(&b, ",urn:long-query-%d|code-%d", i, j)
		}
		return b.String()
	}
	var nexts []string
	for i := range 20 {
		r := ts.do(http.MethodGet, longQuery(i, 800), nil).want(t, http.StatusOK)
		next := link(r.JSON, "next")
		if next == "" {
			t.Fatalf("search %d has no next link", i)
		}
		nexts = append(nexts, next)
	}
	for _, next := range nexts {
		ts.do(http.MethodGet, next, nil).want(t, http.StatusOK)
	}

	r := ts.do(http.MethodGet, longQuery(99, 6000), nil).want(t, http.StatusUnprocessableEntity)
	if !strings.Contains(r.outcome(t), "too-costly") {
		t.Errorf("not refused as too costly: %.300s", r.Body)
	}
	// Pages that fit are still served, and so is everyone else.
	ts.do(http.MethodGet, "/Observation?code=urn:t|page&_count=5", nil).want(t, http.StatusOK)
	ts.do(http.MethodGet, nexts[len(nexts)-1], nil).want(t, http.StatusOK)
}

// TestTooCostlySaysWhy: a search or $everything refused as too costly
// (422, too-costly) says, in the OperationOutcome's diagnostics, what it
// would take and what the limit is (a quarter of -search-cache-bytes, in
// bytes), and never claims a result count it did not finish counting.
func TestTooCostlySaysWhy(t *testing.T) {
	for _, c := range []struct {
		name       string
		cacheBytes int64
		path       string
		want       []string
		wantNot    []string
	}{
		{name: "a tiny query, a tiny budget", cacheBytes: 1 << 10, path: "/Observation?_count=5",
			want:    []string{"this search's query is too large to page: keeping it for paging takes about ", "more than one search may take (256 bytes, a quarter of -search-cache-bytes (1024))"},
			wantNot: []string{"results"}},
		{name: "$everything stops counting past the budget", cacheBytes: 8 << 10, path: "/Patient/tc/$everything?_count=5",
			want:    []string{"this Patient/$everything has at least ", " results (counting stopped there, at about ", "(2048 bytes, a quarter of -search-cache-bytes (8192))"},
			wantNot: []string{"has 201 results", "too many to page"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := newServer(t, func(cfg *fhir.Config) { cfg.SearchCacheBytes = c.cacheBytes })
			ts.fhir.EnableEverything(fhir.EverythingOptions{})
			withTestAccess(ts.fhir)
			entries := []string{`{"resource":{"resourceType":"Patient","id":"tc"},"request":{"method":"PUT","url":"Patient/tc"}}`}
			for i := range 200 {
				entries = append(entries, fmt.Sprintf(`{"resource":{"resourceType":"Observation","id":"tc-%d","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/tc"}},"request":{"method":"PUT","url":"Observation/tc-%d"}}`, i, i))
			}
			ts.do(http.MethodPost, "", `{"resourceType":"Bundle","type":"batch","entry":[`+strings.Join(entries, ",")+`]}`).want(t, http.StatusOK)
			r := ts.do(http.MethodGet, c.path, nil).want(t, http.StatusUnprocessableEntity)
			body := r.outcome(t)
			issues, _ := r.JSON["issue"].([]any)
			if len(issues) != 1 {
				t.Fatalf("want one issue: %s", body)
			}
			issue, _ := issues[0].(map[string]any)
			diag, _ := issue["diagnostics"].(string)
			if issue["code"] != "too-costly" {
				t.Errorf("issue code %v, want too-costly", issue["code"])
			}
			for _, w := range c.want {
				if !strings.Contains(diag, w) {
					t.Errorf("diagnostics %q lack %q", diag, w)
				}
			}
			for _, w := range c.wantNot {
				if strings.Contains(diag, w) {
					t.Errorf("diagnostics %q say %q", diag, w)
				}
			}
		})
	}
}

// clientFrom returns an HTTP client whose connections come from ip (a
// loopback address such as 127.0.0.2): another client, as far as
// per-client limits go.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

func post(t *testing.T, c *http.Client, url, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/fhir+json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestExpensiveRequestsAreLimited: large Bundles and Patient/$everything
// take a slot of the server's limiter while they run. A client with too
// many under way is refused with 429, a server with too many with 503,
// both with Retry-After and an OperationOutcome (FHIR R4 http.html: the
// server may refuse with 429 "throttled"); nothing is queued, and other
// requests are served.
func TestExpensiveRequestsAreLimited(t *testing.T) {
	ts := newServer(t, func(c *fhir.Config) {
		c.Limiter = limit.New(2, 1, 3*time.Second)
		c.LargeBundleEntries = 5
	})
	ts.fhir.EnableEverything(fhir.EverythingOptions{})
	ts.do(http.MethodPut, "/Patient/m", `{"resourceType":"Patient","id":"m"}`).want(t, http.StatusCreated)
	gate := holdWriter(ts)
	held := gate.start(ts)

	a, b, c := clientFrom("127.0.0.1"), clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
	first := make(chan int, 2)
	go func() { s, _, _ := post(t, a, ts.URL, transactionOf(5, 0)); first <- s }()
	waitQueued(t, ts, 1)

	for _, r := range []struct {
		name   string
		client *http.Client
		path   string
		body   string
		status int
	}{
		{"a second large transaction of the same client", a, "/", transactionOf(5, 10), http.StatusTooManyRequests},
		{"$everything of the same client", a, "/Patient/m/$everything", `{"resourceType":"Parameters"}`, http.StatusTooManyRequests},
		{"a read of the same client", a, "/Patient/m/_history", "", http.StatusOK},
	} {
		t.Run(r.name, func(t *testing.T) {
			var status int
			var h http.Header
			var body string
			if r.body == "" {
				resp, err := r.client.Get(ts.URL + r.path)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				status = resp.StatusCode
			} else {
				status, h, body = post(t, r.client, ts.URL+r.path, r.body)
			}
			if status != r.status {
				t.Fatalf("status %d, want %d: %.300s", status, r.status, body)
			}
			if status >= 400 && (h.Get("Retry-After") != "3" || !strings.Contains(body, "OperationOutcome")) {
				t.Errorf("refusal without Retry-After or OperationOutcome: %v %s", h, body)
			}
		})
	}
	// Another client may run one; then the server is at its total.
	go func() { s, _, _ := post(t, b, ts.URL, transactionOf(5, 20)); first <- s }()
	waitQueued(t, ts, 2)
	status, h, body := post(t, c, ts.URL+"/Patient/m/$everything", `{"resourceType":"Parameters"}`)
	if status != http.StatusServiceUnavailable || h.Get("Retry-After") == "" {
		t.Errorf("a third client at the server's limit: %d %v %.200s", status, h, body)
	}
	ts.do(http.MethodGet, "/metadata", nil).want(t, http.StatusOK)

	close(gate.release)
	(<-held).want(t, http.StatusCreated)
	for range 2 {
		if s := <-first; s != http.StatusOK {
			t.Errorf("a transaction that had its slot: %d", s)
		}
	}
	// Slots are given back.
	if s, _, body := post(t, a, ts.URL, transactionOf(5, 30)); s != http.StatusOK {
		t.Errorf("after the slots were given back: %d %.200s", s, body)
	}
	if s, _, _ := post(t, c, ts.URL+"/Patient/m/$everything", `{"resourceType":"Parameters"}`); s != http.StatusOK {
		t.Errorf("$everything after the slots were given back: %d", s)
	}
}
