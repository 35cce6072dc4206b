package healthie_test

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

	"github.com/p2pserver/p2pserver/facades/healthie"
	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/notify"
)

var registry = search.NewRegistry(spec.R4())

// quiet drops logs: tests check what the facade does, not what it says.
var quiet = slog.New(slog.DiscardHandler)

const webhookSecret = "whsec_test-secret"

// waitLimit bounds every wait; no test depends on timing, only on the
// condition it waits for.
const waitLimit = 20 * time.Second

// env is a p2pserver wired as cmd/p2pserver does (FHIR server over a real
// store, the Healthie facade at healthie.Path, /api with the webhook
// route, and in sync mode notify for Subscriptions), talking over
// loopback to a Healthie simulator that sends its webhooks back to it.
type env struct {
	t    testing.TB
	sim  *healthietest.Simulator
	demo healthietest.Demo
	st   *store.Store
	fs   *fhir.Server
	h    *healthie.Healthie
	n    *notify.Service
	srv  *httptest.Server
	base string // the facade's FHIR base
	fhir string // the local FHIR base
	hook string // the webhook URL
	gql  string // the simulator's GraphQL URL
}

type envConfig struct {
	sync     bool
	patients int
	rate     int
	retries  int
	tune     func(*healthie.Options)
	middle   func(http.Handler) http.Handler
}

type envOption func(*envConfig)

func syncMode() envOption                             { return func(c *envConfig) { c.sync = true } }
func patients(n int) envOption                        { return func(c *envConfig) { c.patients = n } }
func rateLimit(perSecond int) envOption               { return func(c *envConfig) { c.rate = perSecond } }
func retries(n int) envOption                         { return func(c *envConfig) { c.retries = n } }
func withOptions(f func(*healthie.Options)) envOption { return func(c *envConfig) { c.tune = f } }
func withMiddleware(mw func(http.Handler) http.Handler) envOption {
	return func(c *envConfig) { c.middle = mw }
}

func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	cfg := envConfig{patients: 5, retries: 6}
	for _, o := range opts {
		o(&cfg)
	}
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, quiet)
	if err != nil {
		t.Fatal(err)
	}
	root := chi.NewRouter()
	srv := httptest.NewServer(root)
	e := &env{t: t, st: st, srv: srv, base: srv.URL + healthie.Path, fhir: srv.URL + "/fhir", hook: srv.URL + "/api/webhooks/healthie"}
	e.sim = healthietest.New(healthietest.Options{RatePerSecond: cfg.rate, WebhookURL: e.hook, WebhookSecret: webhookSecret})
	simSrv := e.sim.Start()
	e.gql = simSrv.URL + "/graphql"
	e.demo = e.sim.Seed(cfg.patients)

	e.fs = fhir.New(st, fhir.Config{BaseURL: e.fhir, MaxBody: 1 << 20, Logger: quiet})
	e.fs.EnableEverything(fhir.EverythingOptions{})
	if cfg.sync {
		if e.n, err = notify.New(e.fs, notify.Config{Logger: quiet, Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Timeout: 5 * time.Second}); err != nil {
			t.Fatal(err)
		}
		e.n.Start(context.Background())
	}
	o := healthie.Options{
		URL: e.gql, APIKey: e.sim.APIKey(), WebhookSecret: webhookSecret, Sync: cfg.sync,
		SyncInterval: time.Hour, BaseURL: srv.URL, MaxRetries: cfg.retries,
		BaseBackoff: 5 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, Logger: quiet,
	}
	if cfg.tune != nil {
		cfg.tune(&o)
	}
	if e.h, err = healthie.Setup(e.fs, o); err != nil {
		t.Fatal(err)
	}
	if cfg.middle != nil {
		e.h.Use(cfg.middle)
	}
	api := httpapi.NewRouter(quiet)
	e.h.Mount(api)
	root.Mount("/fhir", e.fs.Handler())
	root.Mount(healthie.Path, e.h.Handler())
	root.Mount("/api", api)
	t.Cleanup(func() {
		srv.Close()
		e.sim.WaitWebhooks()
		e.h.Close()
		if e.n != nil {
			e.n.Close()
		}
		simSrv.Close()
		e.sim.Close()
		st.Close()
		db.Close()
	})
	return e
}

// answer is an HTTP answer with its JSON body decoded.
type answer struct {
	Status int
	Header http.Header
	Body   []byte
	JSON   map[string]any
}

func (a *answer) want(t testing.TB, status int) *answer {
	t.Helper()
	if a.Status != status {
		t.Fatalf("status %d, want %d: %s", a.Status, status, a.Body)
	}
	return a
}

// outcome checks the answer is an OperationOutcome and returns its
// diagnostics and expressions joined, for assertions on what it says.
func (a *answer) outcome(t testing.TB) string {
	t.Helper()
	if a.JSON["resourceType"] != "OperationOutcome" {
		t.Fatalf("not an OperationOutcome: %s", a.Body)
	}
	var b strings.Builder
	for _, is := range a.JSON["issue"].([]any) {
		m := is.(map[string]any)
		b.WriteString(m["code"].(string) + ": ")
		if d, ok := m["diagnostics"].(string); ok {
			b.WriteString(d)
		}
		if ex, ok := m["expression"].([]any); ok {
			for _, x := range ex {
				b.WriteString(" @" + x.(string))
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

func do(t testing.TB, method, url string, body any, headers ...string) *answer {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a := &answer{Status: resp.StatusCode, Header: resp.Header}
	a.Body, _ = io.ReadAll(resp.Body)
	if len(a.Body) > 0 {
		_ = json.Unmarshal(a.Body, &a.JSON)
	}
	return a
}

// facade and local request the facade's endpoint and the local FHIR store.
func (e *env) facade(method, path string, body any, headers ...string) *answer {
	e.t.Helper()
	return do(e.t, method, e.base+path, body, headers...)
}

func (e *env) local(method, path string, body any, headers ...string) *answer {
	e.t.Helper()
	return do(e.t, method, e.fhir+path, body, headers...)
}

// entries returns a Bundle's match entries' resources.
func entries(b map[string]any) []map[string]any {
	var out []map[string]any
	list, _ := b["entry"].([]any)
	for _, x := range list {
		en := x.(map[string]any)
		if s, _ := en["search"].(map[string]any); s != nil && s["mode"] != "match" {
			continue
		}
		out = append(out, en["resource"].(map[string]any))
	}
	return out
}

func link(b map[string]any, rel string) string {
	list, _ := b["link"].([]any)
	for _, x := range list {
		l := x.(map[string]any)
		if l["relation"] == rel {
			return l["url"].(string)
		}
	}
	return ""
}

// searchAll follows next links from url and returns every match and the
// number of pages read.
func searchAll(t testing.TB, url string) ([]map[string]any, int) {
	t.Helper()
	var all []map[string]any
	pages := 0
	for url != "" {
		a := do(t, http.MethodGet, url, nil).want(t, http.StatusOK)
		if a.JSON["resourceType"] != "Bundle" || a.JSON["type"] != "searchset" {
			t.Fatalf("not a searchset Bundle: %s", a.Body)
		}
		all = append(all, entries(a.JSON)...)
		pages++
		if pages > 100 {
			t.Fatal("more than 100 pages: the next links loop")
		}
		url = link(a.JSON, "next")
	}
	return all, pages
}

func ids(res []map[string]any) []string {
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = r["id"].(string)
	}
	return out
}

// waitFor polls cond until it holds or waitLimit passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// receiver is a rest-hook endpoint on loopback that records what
// Subscriptions send it.
type receiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	calls [][]byte
}

func newReceiver(t testing.TB) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.calls = append(r.calls, b)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) received() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.calls...)
}

func subscription(endpoint, criteria string) map[string]any {
	return map[string]any{"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria,
		"channel": map[string]any{"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}}
}
