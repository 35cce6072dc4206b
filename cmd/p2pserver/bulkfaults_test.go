package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// livePayer is a whole p2pserver that can be stopped and started again on
// the same database and port, with a fault hook in front of its routes
// that sees every request first and may answer it instead.
type livePayer struct {
	*payer
	args  []string
	addr  string
	srv   *http.Server
	h     http.Handler // the app's routes
	fault atomic.Pointer[func(w http.ResponseWriter, r *http.Request) bool]
	// logs, when set, receives the server's log at debug level.
	logs io.Writer
}

func startLive(t *testing.T, args ...string) *livePayer {
	t.Helper()
	return startLiveAt(t, filepath.Join(t.TempDir(), "p2p.db"), args...)
}

// startLiveAt is startLive on the database file db.
func startLiveAt(t *testing.T, db string, args ...string) *livePayer {
	t.Helper()
	return startLiveLogged(t, db, nil, args...)
}

// startLiveLogged is startLiveAt with the server's log written to logs
// (when not nil).
func startLiveLogged(t *testing.T, db string, logs io.Writer, args ...string) *livePayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &livePayer{addr: ln.Addr().String(), logs: logs}
	base := "http://" + l.addr
	l.args = append([]string{"-db", db, "-base-url", base}, args...)
	l.payer = &payer{t: t, URL: base}
	l.serve(ln)
	t.Cleanup(l.stop)
	return l
}

func (l *livePayer) serve(ln net.Listener) {
	t := l.t
	cfg, err := parseConfig(l.args, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	if l.logs != nil {
		log = slog.New(slog.NewTextHandler(l.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	a, err := newApp(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		a.Close()
		t.Fatal(err)
	}
	h := a.Handler()
	l.app, l.h = a, h
	l.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f := l.fault.Load(); f != nil && (*f)(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	})}
	go func() { _ = l.srv.Serve(ln) }()
}

// stop ends the server: connections cut, workers stopped where they are,
// the database closed. Its port is refused until start.
func (l *livePayer) stop() {
	if l.srv == nil {
		return
	}
	_ = l.srv.Close()
	l.app.Close()
	l.srv = nil
}

// start serves again on the same database and port.
func (l *livePayer) start() {
	l.t.Helper()
	var ln net.Listener
	var err error
	for range 100 {
		if ln, err = net.Listen("tcp", l.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		l.t.Fatal(err)
	}
	l.serve(ln)
}

func (l *livePayer) restart() {
	l.stop()
	l.start()
}

func (l *livePayer) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	if f == nil {
		l.fault.Store(nil)
		return
	}
	l.fault.Store(&f)
}

// sourceTraffic counts what a source payer was asked, by kind, and can
// hold status polls (answered 202) and file downloads (stalled after a
// number of lines) until released.
type sourceTraffic struct {
	mu        sync.Mutex
	matches   int // $bulk-member-match kick-offs
	exports   int // $davinci-data-export kick-offs
	polls     map[string]int
	statusOf  map[string]string // status URL path -> "match" or "export"
	files     int
	holdMatch atomic.Bool
	holdExprt atomic.Bool
	// stallAt, when > 0, stalls the first file download that reaches that
	// many lines until stallGo is closed (or the client goes).
	stallAt   int
	stalled   chan struct{} // closed when a download stalls
	stallGo   chan struct{}
	stallOnce sync.Once
	// then, when set, may answer a request instead (after the counting).
	then func(w http.ResponseWriter, r *http.Request) bool
}

func newTraffic() *sourceTraffic {
	return &sourceTraffic{polls: map[string]int{}, statusOf: map[string]string{}, stalled: make(chan struct{}), stallGo: make(chan struct{})}
}

func (s *sourceTraffic) count(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func (s *sourceTraffic) get(f func() int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return f()
}

// locationTap notes the Content-Location of a kick-off's answer.
type locationTap struct {
	http.ResponseWriter
	note func(string)
}

func (t *locationTap) WriteHeader(code int) {
	if loc := t.Header().Get("Content-Location"); loc != "" {
		t.note(loc)
	}
	t.ResponseWriter.WriteHeader(code)
}

// stallWriter passes a file through and stalls it once it has written n
// lines.
type stallWriter struct {
	http.ResponseWriter
	s     *sourceTraffic
	ctx   context.Context
	lines int
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if w.s.stallAt <= 0 {
		return w.ResponseWriter.Write(p)
	}
	written := 0
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			n, err := w.ResponseWriter.Write(p)
			return written + n, err
		}
		n, err := w.ResponseWriter.Write(p[:i+1])
		written += n
		if err != nil {
			return written, err
		}
		p = p[i+1:]
		w.lines++
		if w.lines == w.s.stallAt {
			stall := false
			w.s.stallOnce.Do(func() { stall = true })
			if stall {
				if f, ok := w.ResponseWriter.(http.Flusher); ok {
					f.Flush()
				}
				close(w.s.stalled)
				select {
				case <-w.s.stallGo:
				case <-w.ctx.Done():
					return written, w.ctx.Err()
				}
			}
		}
	}
	return written, nil
}

// hook is the fault hook of a source that counts and holds with s.
func (s *sourceTraffic) hook(src *livePayer) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		path := r.URL.Path
		switch {
		case r.Method == "POST" && strings.HasSuffix(path, "/Group/$bulk-member-match"):
			s.count(func() { s.matches++ })
			if s.then != nil && s.then(w, r) {
				return true
			}
			src.h.ServeHTTP(&locationTap{w, func(loc string) { s.count(func() { s.statusOf[urlPath(loc)] = "match" }) }}, r)
			return true
		case r.Method == "GET" && strings.HasSuffix(path, "/$davinci-data-export"):
			s.count(func() { s.exports++ })
			if s.then != nil && s.then(w, r) {
				return true
			}
			src.h.ServeHTTP(&locationTap{w, func(loc string) { s.count(func() { s.statusOf[urlPath(loc)] = "export" }) }}, r)
			return true
		case r.Method == "GET" && strings.Contains(path, "/bulkstatus/"):
			var kind string
			s.count(func() { kind = s.statusOf[path]; s.polls[kind]++ })
			if (kind == "match" && s.holdMatch.Load()) || (kind == "export" && s.holdExprt.Load()) {
				w.Header().Set("X-Progress", "held by the test")
				w.WriteHeader(http.StatusAccepted)
				return true
			}
		case r.Method == "GET" && strings.Contains(path, "/bulkfiles/"):
			s.count(func() { s.files++ })
			if s.then != nil && s.then(w, r) {
				return true
			}
			src.h.ServeHTTP(&stallWriter{ResponseWriter: w, s: s, ctx: r.Context()}, r)
			return true
		}
		return s.then != nil && s.then(w, r)
	}
}

// answerEdited answers r with the old payer's own answer, its body
// changed by edit when the answer is 200 (the length then differs, so
// without Content-Length).
func (fp *faultPair) answerEdited(w http.ResponseWriter, r *http.Request, edit func(body []byte) []byte) {
	rec := httptest.NewRecorder()
	fp.source.h.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	if rec.Code == http.StatusOK {
		body = edit(body)
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Del("Content-Length")
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}

// answerEditedJSON is answerEdited for a JSON object (a status answer's
// manifest), edited as a map.
func (fp *faultPair) answerEditedJSON(w http.ResponseWriter, r *http.Request, edit func(m map[string]any)) {
	fp.answerEdited(w, r, func(body []byte) []byte {
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			panic(err)
		}
		edit(m)
		out, err := json.Marshal(m)
		if err != nil {
			panic(err)
		}
		return out
	})
}

func urlPath(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
		if j := strings.IndexByte(u, '/'); j >= 0 {
			return u[j:]
		}
	}
	return u
}

// faultPair is a source and a target for the fault tests: a few members
// (Synthea bundles) at the source, the same members at the target, and
// the target's definition of the source.
type faultPair struct {
	source, target *livePayer
	traffic        *sourceTraffic
	pid            int64
	members        []*bulkMemberFixture
	list           []any
}

func newFaultPair(t *testing.T, members int, targetArgs ...string) *faultPair {
	t.Helper()
	return newFaultPairLogged(t, nil, members, targetArgs...)
}

// newFaultPairLogged is newFaultPair with the target's log written to
// logs (when not nil).
func newFaultPairLogged(t *testing.T, logs io.Writer, members int, targetArgs ...string) *faultPair {
	t.Helper()
	fp := &faultPair{traffic: newTraffic()}
	fp.source = startLive(t, "-admin-token", testAdmin, "-secret-key", testSecretKey,
		"-organization-name", oldPayerName, "-organization-id", "OLDPAYER", "-export-retention", "1h")
	fp.target = startLiveLogged(t, filepath.Join(t.TempDir(), "p2p.db"), logs, append([]string{"-admin-token", testAdmin, "-backoffice-token", testBackoffice,
		"-secret-key", "0000000000000000000000000000000000000000000000000000000000000004",
		"-mdm-identifier-system", "urn:old-payer:member-id", "-bulk-min-poll", "20ms", "-bulk-chunk", "25"}, targetArgs...)...)
	fp.pid, _ = connectAsSystem(t, fp.target.payer, fp.source.payer, "New Payer", newPayerNPI, oldPayerName, "OLDPAYER")
	fp.members = loadBulkMembers(t, fp.source.payer, members)
	createMembers(t, fp.target.payer, fp.members)
	for _, m := range fp.members {
		fp.list = append(fp.list, memberRequest(m, m.coverage, newPayerNPI))
	}
	fp.source.setFault(fp.traffic.hook(fp.source))
	return fp
}

// status reads a bulk job's status at the target.
func (fp *faultPair) status(t *testing.T, path string) map[string]any {
	t.Helper()
	var st map[string]any
	if code := fp.target.call("GET", path, testBackoffice, nil, &st); code != 200 {
		t.Fatalf("GET %s: %d %v", path, code, st)
	}
	return st
}

// waitFor polls cond until it holds (or fails the test after a minute).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkOnce checks what a completed job wrote: every resource of the
// export once at the target (by meta.source), and, when onceEach, every
// one the target of exactly one Provenance (no line ingested twice).
func (fp *faultPair) checkOnce(t *testing.T, st map[string]any, onceEach bool) {
	t.Helper()
	if st["batchStatus"] != "COMPLETED" {
		t.Fatalf("job: %v", st)
	}
	p := st["progress"].(map[string]any)
	t.Logf("job: %v resources, %v files, %v chunks, %v retries, %v restarts, %v token refreshes", st["resourcesWritten"], st["filesDone"],
		p["chunks"], p["retries"], p["restarts"], p["tokenRefreshes"])
	var sources []string
	for _, m := range fp.members {
		sources = append(sources, m.source)
	}
	_, all := sourceExport(t, fp.source.payer, fp.target.payer, fp.pid, st["sourceGroup"].(string), sources)
	want := map[string]bool{}
	types := map[string]bool{}
	for _, u := range all {
		want[u] = true
		rest := strings.TrimPrefix(u, fp.source.URL+"/fhir/")
		typ, _, _ := strings.Cut(rest, "/")
		types[typ] = true
	}
	bySource := map[string]int{}
	provTargets := map[string]int{}
	err := fp.target.app.store.View(context.Background(), func(tx *store.Tx) error {
		for typ := range types {
			tx.ScanCurrent(typ, "", func(_ string, _ time.Time, raw []byte) bool {
				var r struct {
					Meta struct {
						Source string `json:"source"`
					} `json:"meta"`
				}
				_ = json.Unmarshal(raw, &r)
				if strings.HasPrefix(r.Meta.Source, fp.source.URL) {
					bySource[r.Meta.Source]++
				}
				return true
			})
		}
		for _, pid := range st["progress"].(map[string]any)["provenanceIds"].([]any) {
			v, err := tx.Read("Provenance", pid.(string))
			if err != nil {
				return err
			}
			var p struct {
				Target []struct {
					Reference string `json:"reference"`
				} `json:"target"`
			}
			_ = json.Unmarshal(v.JSON, &p)
			for _, tg := range p.Target {
				provTargets[tg.Reference]++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(bySource) != len(want) {
		t.Errorf("%d resources of the old payer at the target, the export has %d", len(bySource), len(want))
	}
	for u, n := range bySource {
		if n != 1 || !want[u] {
			t.Errorf("%s: %d at the target (in the export: %v)", u, n, want[u])
		}
	}
	if len(provTargets) != len(want) {
		t.Errorf("%d resources with Provenance, the export has %d", len(provTargets), len(want))
	}
	if onceEach {
		for ref, n := range provTargets {
			if n != 1 {
				t.Errorf("%s was ingested %d times (Provenance)", ref, n)
			}
		}
	}
}

// TestBulkExchangeResumesAfterRestarts: the job's checkpoints (Bulk Data
// Access STU 2: a client keeps the status URL and polls it again) carry
// it over three restarts of the new payer: during the $bulk-member-match
// poll and during the export poll it polls the saved status URL again
// rather than asking anew (one kick-off of each), and in the middle of a
// file it asks for the file again and goes on after the last line it
// committed: every resource once, with one Provenance.
func TestBulkExchangeResumesAfterRestarts(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 3)
	tr := fp.traffic
	tr.holdMatch.Store(true)
	tr.holdExprt.Store(true)
	tr.stallAt = 60
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})

	waitFor(t, "a poll of the match status", func() bool { return tr.get(func() int { return tr.polls["match"] }) > 0 })
	fp.target.restart()
	before := tr.get(func() int { return tr.polls["match"] })
	waitFor(t, "a poll after the restart", func() bool { return tr.get(func() int { return tr.polls["match"] }) > before })
	tr.holdMatch.Store(false)

	waitFor(t, "a poll of the export status", func() bool { return tr.get(func() int { return tr.polls["export"] }) > 0 })
	fp.target.restart()
	before = tr.get(func() int { return tr.polls["export"] })
	waitFor(t, "a poll after the restart", func() bool { return tr.get(func() int { return tr.polls["export"] }) > before })
	tr.holdExprt.Store(false)

	select {
	case <-tr.stalled:
	case <-time.After(time.Minute):
		t.Fatal("no file stalled")
	}
	waitFor(t, "two chunks of the stalled file committed", func() bool {
		st := fp.status(t, path)
		return st["progress"].(map[string]any)["line"].(float64) == 50
	})
	mid := fp.status(t, path)
	fp.target.stop()
	close(tr.stallGo)
	fp.target.start()
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if tr.get(func() int { return tr.matches }) != 1 || tr.get(func() int { return tr.exports }) != 1 {
		t.Errorf("kick-offs: %d $bulk-member-match, %d $davinci-data-export; want one each", tr.matches, tr.exports)
	}
	if p := st["progress"].(map[string]any); p["restarts"].(float64) != 0 {
		t.Errorf("restarts %v", p["restarts"])
	}
	if mid["phase"] != "downloading" {
		t.Errorf("stopped in phase %v", mid["phase"])
	}
	fp.checkOnce(t, st, true)
}

// TestBulkExchangeFileGone: a file that answers 404 or 410 (Bulk Data
// Access STU 2: files may be removed once they expire) makes the job ask
// for the export again, whose files it ingests without duplicating what
// it had; a source that keeps answering so fails the job, saying why.
func TestBulkExchangeFileGone(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		status int
		times  int
	}{
		{"404 once", http.StatusNotFound, 1},
		{"410 once", http.StatusGone, 1},
		{"410 every time", http.StatusGone, 100},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fp := newFaultPair(t, 2)
			var gone atomic.Int64
			fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
				// The second file asked for: the first is ingested by then.
				if strings.Contains(r.URL.Path, "/bulkfiles/") && fp.traffic.get(func() int { return fp.traffic.files }) >= 2 && gone.Add(1) <= int64(c.times) {
					w.Header().Set("Content-Type", "application/fhir+json")
					w.WriteHeader(c.status)
					_, _ = io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"the file has expired"}]}`)
					return true
				}
				return false
			}
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
			st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
			exports := fp.traffic.get(func() int { return fp.traffic.exports })
			if c.times > 2 {
				reason, _ := st["failureReason"].(string)
				if st["batchStatus"] != "FAILED" || !strings.Contains(reason, "no longer has the export's file") || !strings.Contains(reason, "third time") || exports != 3 {
					t.Fatalf("%d exports; job: %v", exports, st)
				}
				return
			}
			if p := st["progress"].(map[string]any); p["restarts"].(float64) != 1 || exports != 2 {
				t.Errorf("restarts %v, %d exports", p["restarts"], exports)
			}
			fp.checkOnce(t, st, false)
		})
	}
}

// TestBulkExchangeTokenExpiresMidDownload: the download breaks off in the
// middle of a file, and when the job asks for it again its system token
// has expired (401 invalid_token, RFC 6750 section 3.1): the job gets a
// new token from the token endpoint (SMART Backend Services) and goes on
// after the last line it committed.
func TestBulkExchangeTokenExpiresMidDownload(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 2)
	var broke, refused atomic.Bool
	var tokens []string
	var mu sync.Mutex
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.Contains(r.URL.Path, "/bulkfiles/") {
			return false
		}
		mu.Lock()
		tokens = append(tokens, r.Header.Get("Authorization"))
		mu.Unlock()
		if broke.Load() && refused.CompareAndSwap(false, true) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="the access token has expired"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		if broke.Load() {
			return false
		}
		// Cut the first file with more than two chunks after 60 lines.
		rec := httptest.NewRecorder()
		fp.source.h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if bytes.Count(body, []byte("\n")) <= 60 {
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(body)
			return true
		}
		broke.Store(true)
		cut := 0
		for range 60 {
			cut += bytes.IndexByte(body[cut:], '\n') + 1
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body[:cut+10]) // and a part of the next line
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if !broke.Load() || !refused.Load() {
		t.Fatalf("the faults did not happen: broke %v, refused %v", broke.Load(), refused.Load())
	}
	p := st["progress"].(map[string]any)
	if p["tokenRefreshes"].(float64) < 1 || p["retries"].(float64) < 1 {
		t.Errorf("tokenRefreshes %v, retries %v", p["tokenRefreshes"], p["retries"])
	}
	mu.Lock()
	distinct := map[string]bool{}
	for _, tok := range tokens {
		distinct[tok] = true
	}
	mu.Unlock()
	if len(distinct) < 2 {
		t.Errorf("the files were asked for with %d token(s); a new one was expected after the 401", len(distinct))
	}
	fp.checkOnce(t, st, true)
}

// TestBulkExchangeSourceCancelsExport: the old payer cancels the export
// (Bulk Data Access STU 2 "Delete a Bulk Data Request": the status URL
// then answers 404) while the job polls it; the job asks for the export
// again and completes.
func TestBulkExchangeSourceCancelsExport(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 2)
	var cancelled atomic.Bool
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "GET" && strings.Contains(r.URL.Path, "/bulkstatus/") && fp.traffic.get(func() int { return fp.traffic.statusOfKind(r.URL.Path) }) == 2 &&
			cancelled.CompareAndSwap(false, true) {
			del := r.Clone(r.Context())
			del.Method = "DELETE"
			rec := httptest.NewRecorder()
			fp.source.h.ServeHTTP(rec, del)
			if rec.Code != http.StatusAccepted {
				panic(fmt.Sprintf("cancel at the source: %d %s", rec.Code, rec.Body))
			}
		}
		return false
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if !cancelled.Load() {
		t.Fatal("the export was not cancelled")
	}
	if p := st["progress"].(map[string]any); p["restarts"].(float64) != 1 || fp.traffic.get(func() int { return fp.traffic.exports }) != 2 {
		t.Errorf("restarts %v, exports %d", p["restarts"], fp.traffic.exports)
	}
	fp.checkOnce(t, st, true)
}

// statusOfKind is 1 for a match status URL path, 2 for an export's.
func (s *sourceTraffic) statusOfKind(path string) int {
	switch s.statusOf[path] {
	case "match":
		return 1
	case "export":
		return 2
	}
	return 0
}

// TestBulkExchangeSourceDown: the old payer goes down while the job polls
// its export. A job goes on trying (with growing waits) and completes
// when the old payer is back; a job whose -bulk-retry-for has passed
// fails, saying the old payer has not answered for that long. Neither
// hangs.
func TestBulkExchangeSourceDown(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 2, "-bulk-retry-for", "1m")
	impatient := startLive(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice,
		"-secret-key", "0000000000000000000000000000000000000000000000000000000000000005",
		"-bulk-min-poll", "20ms", "-bulk-retry-for", "2s")
	ipid, _ := connectAsSystem(t, impatient.payer, fp.source.payer, "Impatient Payer", newPayerNPI, oldPayerName, "OLDPAYER")
	createMembers(t, impatient.payer, fp.members)
	tr := fp.traffic
	tr.holdExprt.Store(true)
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	ipath := startBulk(t, impatient.payer, ipid, map[string]any{"members": fp.list})
	waitFor(t, "both jobs polling their exports", func() bool {
		return fp.status(t, path)["phase"] == "exporting" && tr.get(func() int { return tr.exports }) == 2 && tr.get(func() int { return tr.polls["export"] }) > 4
	})
	fp.source.stop()
	ist := waitBulk(t, impatient.payer, ipath, time.Minute)
	reason, _ := ist["failureReason"].(string)
	if ist["batchStatus"] != "FAILED" || !strings.Contains(reason, "has not answered for 2s") {
		t.Fatalf("impatient job: %v", ist)
	}
	if st := fp.status(t, path); st["batchStatus"] != "STARTED" {
		t.Fatalf("patient job: %v", st)
	}
	fp.source.start()
	tr.holdExprt.Store(false)
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if p := st["progress"].(map[string]any); p["retries"].(float64) < 1 || p["restarts"].(float64) != 0 {
		t.Errorf("retries %v, restarts %v", p["retries"], p["restarts"])
	}
	fp.checkOnce(t, st, true)
}

// TestBulkExchangeSchedule: concurrent coverage (PDex STU 2.1; CMS-0057-F
// asks for at least quarterly). A first pull makes the definition's
// schedule, quarterly; an admin sees it and changes it (the back office
// may not); when it is due, a delta pull starts by itself with the
// members still covered by the old payer (not the one whose coverage
// there has ended) and _since the first pull's transactionTime, and
// brings what changed since.
func TestBulkExchangeSchedule(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 3)
	ended := fp.list[0].(map[string]any)["coverageToMatch"].(map[string]any)
	ended["period"] = map[string]any{"start": "2020-01-01", "end": time.Now().UTC().AddDate(0, 0, -2).Format("2006-01-02")}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	first := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if first["batchStatus"] != "COMPLETED" || first["members"].(map[string]any)["matched"] != 3.0 {
		t.Fatalf("first pull: %v", first)
	}
	spath := fmt.Sprintf("/api/oidc_servers/%d/bulk_schedule", fp.pid)
	var sched map[string]any
	if code := fp.target.call("GET", spath, testBackoffice, nil, &sched); code != 200 {
		t.Fatalf("GET schedule: %d %v", code, sched)
	}
	next, _ := time.Parse(time.RFC3339, fmt.Sprint(sched["nextRun"]))
	if sched["enabled"] != true || sched["every"] != "91d" || sched["members"] != 3.0 || sched["covered"] != 2.0 ||
		next.Before(time.Now().Add(90*24*time.Hour)) || next.After(time.Now().Add(92*24*time.Hour)) {
		t.Fatalf("the schedule after a first pull: %v", sched)
	}
	if code := fp.target.call("PUT", spath, testBackoffice, map[string]any{"enabled": false}, nil); code != 403 {
		t.Errorf("the back office changing a schedule: %d", code)
	}
	var bad map[string]any
	if code := fp.target.call("PUT", spath, testAdmin, map[string]any{"every": "often"}, &bad); code != 400 || !strings.Contains(fmt.Sprint(bad), "every") {
		t.Errorf("a bad interval: %d %v", code, bad)
	}

	// Something new for member 1 at the old payer.
	var obs map[string]any
	if code := fp.source.call("POST", "/fhir/Observation", testAdmin, map[string]any{"resourceType": "Observation", "status": "final",
		"code": map[string]any{"text": "new since the first pull"}, "subject": map[string]any{"reference": "Patient/" + fp.members[1].source},
		"effectiveDateTime": time.Now().UTC().Format(time.RFC3339)}, &obs); code != 201 {
		t.Fatalf("new Observation: %d %v", code, obs)
	}
	if code := fp.target.call("PUT", spath, testAdmin, map[string]any{"every": "30d", "nextRun": time.Now().UTC().Format(time.RFC3339)}, &sched); code != 200 {
		t.Fatalf("PUT schedule: %d %v", code, sched)
	}
	var delta map[string]any
	waitFor(t, "the scheduled delta pull", func() bool {
		var list map[string]any
		fp.target.call("GET", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", fp.pid), testBackoffice, nil, &list)
		for _, j := range list["bulkJobs"].([]any) {
			if j := j.(map[string]any); j["scheduled"] == true {
				delta = j
				return true
			}
		}
		return false
	})
	delta = waitBulk(t, fp.target.payer, fmt.Sprintf("/api/oidc_servers/%d/bulk_job/%v", fp.pid, delta["bulkJobId"]), 2*time.Minute)
	if delta["batchStatus"] != "COMPLETED" || delta["members"].(map[string]any)["total"] != 2.0 || delta["since"] != first["transactionTime"] {
		t.Fatalf("delta pull: %v (first transactionTime %v)", delta, first["transactionTime"])
	}
	if delta["resourcesWritten"].(float64) >= first["resourcesWritten"].(float64) {
		t.Errorf("the delta pull brought %v resources, the first %v", delta["resourcesWritten"], first["resourcesWritten"])
	}
	if srcs := everythingSources(t, fp.target.payer, "m0001"); !srcs[fp.source.URL+"/fhir/Observation/"+obs["id"].(string)] {
		t.Errorf("the new Observation is not in the member's record")
	}
	fp.target.call("GET", spath, testAdmin, nil, &sched)
	last, _ := time.Parse(time.RFC3339, fmt.Sprint(sched["lastRun"]))
	next, _ = time.Parse(time.RFC3339, fmt.Sprint(sched["nextRun"]))
	if sched["lastBulkJobId"] != delta["bulkJobId"] || sched["every"] != "30d" || next.Sub(last) != 30*24*time.Hour {
		t.Errorf("the schedule after the delta pull: %v", sched)
	}
}

// TestBulkExchangeFromGroupAndParametersBody: the members given as our
// Group, each one's CoverageToMatch (the Coverage paid by the old payer),
// CoverageToLink and Consent read from our store; and an old payer that
// answers the completed $bulk-member-match with the result Parameters in
// the status body instead of a manifest (PDex STU 2.1 leaves the form of
// the result to the server) is read as well.
func TestBulkExchangeFromGroupAndParametersBody(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 2)
	// The old payer answers the completed match with the Parameters file's
	// content as the status body.
	var inBody atomic.Bool
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || fp.traffic.get(func() int { return fp.traffic.statusOfKind(r.URL.Path) }) != 1 {
			return false
		}
		rec := httptest.NewRecorder()
		fp.source.h.ServeHTTP(rec, r)
		if rec.Code != 200 {
			return false
		}
		var m struct {
			Output []struct{ Type, URL string } `json:"output"`
		}
		_ = json.Unmarshal(rec.Body.Bytes(), &m)
		for _, o := range m.Output {
			if o.Type != "Parameters" {
				continue
			}
			file, _ := http.NewRequest("GET", o.URL, nil)
			file.Header.Set("Authorization", r.Header.Get("Authorization"))
			frec := httptest.NewRecorder()
			fp.source.h.ServeHTTP(frec, file)
			w.Header().Set("Content-Type", "application/fhir+json")
			_, _ = w.Write(bytes.TrimSpace(frec.Body.Bytes()))
			inBody.Store(true)
			return true
		}
		return false
	}
	var entries, members []any
	for i, m := range fp.members {
		id := fmt.Sprintf("m%04d", m.n)
		req := fp.list[i].(map[string]any)
		cov := req["coverageToMatch"].(map[string]any)
		cov["id"] = "old-" + id
		consent := req["consent"].(map[string]any)
		consent["id"] = "consent-" + id
		ours := map[string]any{"resourceType": "Coverage", "id": "new-" + id, "status": "active", "beneficiary": map[string]any{"reference": "Patient/" + id},
			"payor": []any{map[string]any{"display": "New Payer"}}}
		for _, r := range []map[string]any{cov, consent, ours} {
			entries = append(entries, map[string]any{"request": map[string]any{"method": "PUT", "url": fmt.Sprintf("%s/%s", r["resourceType"], r["id"])}, "resource": r})
		}
		members = append(members, map[string]any{"entity": map[string]any{"reference": "Patient/" + id}})
	}
	entries = append(entries, map[string]any{"request": map[string]any{"method": "PUT", "url": "Group/to-bring"},
		"resource": map[string]any{"resourceType": "Group", "id": "to-bring", "type": "person", "actual": true, "member": members}})
	if code := fp.target.call("POST", "/fhir", testAdmin, map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries}, nil); code != 200 {
		t.Fatalf("our Group: %d", code)
	}
	var bad map[string]any
	if code := fp.target.call("POST", fmt.Sprintf("/api/oidc_servers/%d/bulk_job", fp.pid), testBackoffice, map[string]any{"groupId": "nothing-here"}, &bad); code != 400 ||
		!strings.Contains(fmt.Sprint(bad), "no Group/nothing-here") {
		t.Errorf("an unknown Group: %d %v", code, bad)
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"groupId": "to-bring"})
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	if !inBody.Load() {
		t.Error("the match result was not sent in the status body")
	}
	if st["groupId"] != "to-bring" || st["members"].(map[string]any)["matched"] != 2.0 {
		t.Fatalf("job: %v", st)
	}
	fp.checkOnce(t, st, true)
}

// TestBulkExchangeStop: a job stopped while it polls the export ends
// STOPPED, cancels the export at the old payer (Bulk Data Access STU 2
// "Delete a Bulk Data Request"), and cannot be stopped twice.
func TestBulkExchangeStop(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 1)
	tr := fp.traffic
	tr.holdExprt.Store(true)
	var deleted atomic.Int64
	tr.then = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == "DELETE" && tr.get(func() int { return tr.statusOfKind(r.URL.Path) }) == 2 {
			deleted.Add(1)
		}
		return false
	}
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	waitFor(t, "a poll of the export", func() bool { return tr.get(func() int { return tr.polls["export"] }) > 0 })
	var st map[string]any
	if code := fp.target.call("POST", path+"/stop", testBackoffice, nil, &st); code != 202 || st["batchStatus"] != "STOPPING" {
		t.Fatalf("stop: %d %v", code, st)
	}
	st = waitBulk(t, fp.target.payer, path, time.Minute)
	if st["batchStatus"] != "STOPPED" || deleted.Load() != 1 {
		t.Fatalf("%d DELETE of the export; job: %v", deleted.Load(), st)
	}
	if code := fp.target.call("POST", path+"/stop", testBackoffice, nil, nil); code != 409 {
		t.Errorf("a second stop: %d", code)
	}
}

// TestBulkExchangeStatusErrors: how the requesting job reads an error
// answer to a status poll. Bulk Data ("Response - Error Status") has a
// 4xx or 5xx mean the export failed, and a poll that failed without the
// job say so with a transient issue code (IssueType transient and its
// children, such as exception): the job fails at once, with the old
// payer's reason, on a 5xx whose OperationOutcome names only final codes,
// and waits out one with a transient code or no OperationOutcome (a proxy,
// an outage), as it waits out the old payer being down.
func TestBulkExchangeStatusErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name        string
		status      int
		contentType string
		body        string
		times       int64
		fails       bool
	}{
		{"the export failed", 500, "application/fhir+json",
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"the export stopped: its disk is full"}]}`, 1000, true},
		{"the export failed, several issues", 500, "application/fhir+json",
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"the export stopped: its disk is full"},{"severity":"information","code":"informational","diagnostics":"started 09:00"}]}`, 1000, true},
		{"a poll failed (transient)", 503, "application/fhir+json",
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"status store unavailable"}]}`, 3, false},
		{"a poll failed (exception, a transient code)", 500, "application/fhir+json",
			`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"try again"}]}`, 3, false},
		{"a proxy answered", 502, "text/html", `<html>Bad Gateway</html>`, 3, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fp := newFaultPair(t, 1)
			var answered atomic.Int64
			fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.Contains(r.URL.Path, "/bulkstatus/") || fp.traffic.get(func() int { return fp.traffic.exports }) == 0 || answered.Add(1) > c.times {
					return false
				}
				w.Header().Set("Content-Type", c.contentType)
				w.WriteHeader(c.status)
				_, _ = io.WriteString(w, c.body)
				return true
			}
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
			st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
			reason, _ := st["failureReason"].(string)
			if c.fails {
				if st["batchStatus"] != "FAILED" || !strings.Contains(reason, "its disk is full") || answered.Load() != 1 {
					t.Fatalf("after %d error answers: %v; want FAILED at the first, with the old payer's reason", answered.Load(), st)
				}
				return
			}
			if p := st["progress"].(map[string]any); st["batchStatus"] != "COMPLETED" || p["retries"].(float64) < 1 {
				t.Fatalf("job: %v; want it COMPLETED after retries", st)
			}
			fp.checkOnce(t, st, true)
		})
	}
}

// TestBulkExchangeConsentWithdrawnBeforeExport: a member matched with a
// consent that the old payer no longer holds when the export runs is left
// out of it and named in the export's error file (PDex STU 2.1: the
// export checks each member's consent when it runs); the job follows the
// error file and reports the member consent-constrained, with none of
// their data brought over, and the others' data as usual.
func TestBulkExchangeConsentWithdrawnBeforeExport(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 2)
	tr := fp.traffic
	tr.holdMatch.Store(true)
	path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
	withdrawn := fp.members[0].source
	var consents map[string]any
	waitFor(t, "the member's Consent stored at the old payer", func() bool {
		consents = nil
		fp.source.call("GET", "/fhir/Consent?patient="+withdrawn, testAdmin, nil, &consents)
		entries, _ := consents["entry"].([]any)
		return len(entries) > 0
	})
	for _, e := range consents["entry"].([]any) {
		c := e.(map[string]any)["resource"].(map[string]any)
		c["status"] = "inactive"
		if code := fp.source.call("PUT", "/fhir/Consent/"+c["id"].(string), testAdmin, c, nil); code != 200 {
			t.Fatalf("withdraw the Consent: %d", code)
		}
	}
	tr.holdMatch.Store(false)
	st := waitBulk(t, fp.target.payer, path, 2*time.Minute)
	counts := st["members"].(map[string]any)
	if st["batchStatus"] != "COMPLETED" || counts["matched"] != 1.0 || counts["consentConstrained"] != 1.0 {
		t.Fatalf("job: %v", st)
	}
	var page map[string]any
	fp.target.call("GET", path+"/members", testBackoffice, nil, &page)
	m := page["members"].([]any)[0].(map[string]any)
	if m["outcome"] != "consentConstrained" || !strings.Contains(fmt.Sprint(m["note"]), "left this member out of the export") {
		t.Errorf("the withdrawn member: %v", m)
	}
	if srcs := everythingSources(t, fp.target.payer, "m0000"); len(srcs) != 0 {
		t.Errorf("the withdrawn member's record holds %d resources of the old payer", len(srcs))
	}
	if srcs := everythingSources(t, fp.target.payer, "m0001"); len(srcs) == 0 {
		t.Error("the other member's data was not brought over")
	}
}
