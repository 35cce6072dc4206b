package notify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/fhir/workflow"
	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/secrets"
	"github.com/p2pserver/p2pserver/notify"
	"github.com/p2pserver/p2pserver/notify/addpayer"
	"github.com/p2pserver/p2pserver/notify/smtptest"
)

var registry = search.NewRegistry(spec.R4())

// quiet drops the service's logs; tests check what it does, not what it
// says.
var quiet = slog.New(slog.DiscardHandler)

const adminToken = "admin-token-for-notify-tests"

// waitLimit bounds every wait: far above what any step takes, so that no
// test depends on timing, only on the condition it waits for.
const waitLimit = 20 * time.Second

// env is a p2pserver as cmd/p2pserver wires it (FHIR, Task workflow,
// add-payer rules, notify with its API), over a database file that
// outlives a stop, so a test can stop everything and start again.
type env struct {
	t      testing.TB
	dbPath string
	smtp   *smtptest.Server
	admins []string
	hosts  string
	tune   func(*notify.Config)
	noMail bool
	// key is the -secret-key the env runs with ("" none); log, when set,
	// receives the service's logs.
	key string
	log *slog.Logger
	// leases, when set, makes the lease manager of each start.
	leases func(st *store.Store) *lease.Manager
	// guard, when set, is attached to the FHIR server before its handler
	// is built (a smart.Guard's Attach).
	guard func(fs *fhir.Server)

	// startErr is why the last start failed, when mayFail let it.
	startErr error
	mayFail  bool

	db   store.DB
	st   *store.Store
	fs   *fhir.Server
	n    *notify.Service
	http *httptest.Server
	api  chi.Router
	base string // FHIR base URL
	root string // server root URL
}

type envOption func(*env)

func withAdmins(a ...string) envOption      { return func(e *env) { e.admins = a } }
func withHosts(h string) envOption          { return func(e *env) { e.hosts = h } }
func withSMTP(s *smtptest.Server) envOption { return func(e *env) { e.smtp = s } }
func withoutMail() envOption                { return func(e *env) { e.noMail = true } }
func withKey(k string) envOption            { return func(e *env) { e.key = k } }
func withLog(l *slog.Logger) envOption      { return func(e *env) { e.log = l } }
func withLeases(f func(*store.Store) *lease.Manager) envOption {
	return func(e *env) { e.leases = f }
}
func withGuard(g func(*fhir.Server)) envOption {
	return func(e *env) { e.guard = g }
}

// testKey is the secret key envs run with by default (32 bytes, base64).
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

func withConfig(f func(*notify.Config)) envOption {
	return func(e *env) { e.tune = f }
}

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, dbPath: storetest.DSN(t), admins: []string{"admin1@payer.example.org", "admin2@payer.example.org"}, key: testKey}
	for _, o := range opts {
		o(e)
	}
	if e.smtp == nil && !e.noMail {
		e.smtp = smtptest.New(t, smtptest.Options{})
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start opens the database and wires everything, in the order
// cmd/p2pserver does.
func (e *env) start() {
	t := e.t
	t.Helper()
	db, err := store.OpenDB(context.Background(), e.dbPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	root := chi.NewRouter()
	srv := httptest.NewServer(root)
	e.db, e.st, e.http, e.root, e.base = db, st, srv, srv.URL, srv.URL+"/fhir"
	e.fs = fhir.New(st, fhir.Config{BaseURL: e.base, MaxBody: 1 << 20})
	workflow.Register(e.fs, workflow.Options{})
	addpayer.Register(e.fs)

	hosts, err := notify.ParseHosts(e.hosts)
	if err != nil {
		t.Fatal(err)
	}
	cfg := notify.Config{Hosts: hosts, Logger: quiet, MaxAttempts: 1000, Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Timeout: 5 * time.Second}
	if e.log != nil {
		cfg.Logger = e.log
	}
	if e.key != "" {
		if cfg.Cipher, err = secrets.NewCipher(e.key); err != nil {
			t.Fatal(err)
		}
	}
	if !e.noMail {
		m, err := notify.NewMailer(notify.MailConfig{URL: e.smtp.URL(), From: "P2P Exchange <noreply@payer.example.org>", Timeout: 5 * time.Second, TLSConfig: e.smtp.ClientTLS()})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Mailer = m
	}
	if e.tune != nil {
		e.tune(&cfg)
	}
	if e.leases != nil {
		cfg.Leases = e.leases(st)
	}
	e.n, err = notify.New(e.fs, cfg)
	if err != nil {
		e.startErr = err
		st.Close()
		db.Close()
		srv.Close()
		e.db = nil
		if e.mayFail {
			return
		}
		t.Fatal(err)
	}
	if err := addpayer.Setup(context.Background(), e.n, e.admins, quiet); err != nil {
		t.Fatal(err)
	}
	e.n.Start(context.Background())

	authz, err := httpapi.NewAuthorizer(nil, httpapi.Role{Name: "admin", Tokens: []string{adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	e.api = httpapi.NewRouter(nil)
	notify.NewAPI(e.n, authz.Require("admin"), nil).Mount(e.api)
	if e.guard != nil {
		e.guard(e.fs)
	}
	root.Mount("/fhir", e.fs.Handler())
	root.Mount("/api", e.api)
}

// stop shuts everything down as the server does: HTTP, the worker, the
// store, the database. Stopping a stopped env does nothing.
func (e *env) stop() {
	if e.db == nil {
		return
	}
	e.http.Close()
	e.n.Close()
	e.st.Close()
	e.db.Close()
	e.db = nil
}

func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

// answer is an HTTP answer with its JSON body decoded.
type answer struct {
	Status int
	Header http.Header
	Body   []byte
	JSON   map[string]any
}

func (e *env) do(method, url string, body any, headers ...string) *answer {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	if !strings.HasPrefix(url, "http") {
		url = e.base + url
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	a := &answer{Status: resp.StatusCode, Header: resp.Header}
	a.Body, _ = io.ReadAll(resp.Body)
	if len(a.Body) > 0 {
		dec := json.NewDecoder(bytes.NewReader(a.Body))
		dec.UseNumber()
		_ = dec.Decode(&a.JSON)
	}
	return a
}

func (a *answer) want(t testing.TB, status int) *answer {
	t.Helper()
	if a.Status != status {
		t.Fatalf("status %d, want %d: %.800s", a.Status, status, a.Body)
	}
	return a
}

// notifications lists the outbox through the admin API.
func (e *env) notifications(query string) map[string]any {
	e.t.Helper()
	a := e.do("GET", e.root+"/api/notifications"+query, nil, "Authorization", "Bearer "+adminToken).want(e.t, 200)
	return a.JSON
}

func (e *env) outbox(query string) []map[string]any {
	e.t.Helper()
	var out []map[string]any
	for _, n := range e.notifications(query)["notifications"].([]any) {
		out = append(out, n.(map[string]any))
	}
	return out
}

func waitFor(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// task returns an add-payer Task as a member portal creates it.
func task(patient, org, email string) map[string]any {
	in := func(code, v string) map[string]any {
		return map[string]any{
			"type":        map[string]any{"coding": []any{map[string]any{"system": addpayer.CodeSystem, "code": code, "display": "display"}}, "text": v},
			"valueString": v,
		}
	}
	return map[string]any{
		"resourceType": "Task",
		"identifier":   []any{map[string]any{"system": addpayer.CodeSystem, "value": patient + "-" + org + "-2024-05-09T20:36:18Z"}},
		"status":       "requested",
		"intent":       "original-order",
		"priority":     "routine",
		"code": map[string]any{"coding": []any{map[string]any{"system": addpayer.CodeSystem, "code": addpayer.Code, "display": addpayer.Code}},
			"text": "Add Payer"},
		"authoredOn": "2024-05-09T20:36:18Z",
		"requester":  map[string]any{"reference": "Patient/" + patient, "type": "Patient"},
		"owner":      map[string]any{"reference": "Organization/" + org},
		"input": []any{
			in(addpayer.InputFirstName, "Angelic"), in(addpayer.InputLastName, "Mueller"),
			in(addpayer.InputPayerName, "Acme Health Plan"), in(addpayer.InputEmail, email),
			in(addpayer.InputPhone, "1111111111"),
		},
	}
}

// setStatus moves Task/id to status through a REST update.
func (e *env) setStatus(id, status, reason string) *answer {
	e.t.Helper()
	cur := e.do("GET", "/Task/"+id, nil).want(e.t, 200).JSON
	cur["status"] = status
	if reason != "" {
		cur["statusReason"] = map[string]any{"text": reason}
	}
	return e.do("PUT", "/Task/"+id, cur)
}

// hook is a rest-hook receiver on loopback.
type hook struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []hookCall
	// respond answers a call; 200 when nil.
	respond func(w http.ResponseWriter, r *http.Request, n int)
}

type hookCall struct {
	Header http.Header
	Body   []byte
}

func newHook(t testing.TB) *hook {
	h := &hook{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		h.mu.Lock()
		h.got = append(h.got, hookCall{Header: r.Header.Clone(), Body: body})
		n, respond := len(h.got), h.respond
		h.mu.Unlock()
		if respond != nil {
			respond(w, r, n)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hook) calls() []hookCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookCall(nil), h.got...)
}

func (h *hook) setRespond(f func(w http.ResponseWriter, r *http.Request, n int)) {
	h.mu.Lock()
	h.respond = f
	h.mu.Unlock()
}

func (h *hook) wait(t testing.TB, n int) []hookCall {
	t.Helper()
	waitFor(t, "rest-hook calls", func() bool { return len(h.calls()) >= n })
	return h.calls()
}

func restHook(endpoint, criteria, payload string, headers ...string) map[string]any {
	ch := map[string]any{"type": "rest-hook", "endpoint": endpoint}
	if payload != "" {
		ch["payload"] = payload
	}
	if len(headers) > 0 {
		var hs []any
		for _, h := range headers {
			hs = append(hs, h)
		}
		ch["header"] = hs
	}
	return map[string]any{"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria, "channel": ch}
}

var _ = apidoc.CheckRoutes
