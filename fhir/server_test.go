package fhir_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

var registry = search.NewRegistry(spec.R4())

// testServer is a real FHIR server over HTTP on loopback with its own
// database in a temporary folder.
type testServer struct {
	t    *testing.T
	URL  string // FHIR base
	http *httptest.Server
	fhir *fhir.Server
	st   *store.Store
	db   store.DB
	// gone counts requests whose client went away before their answer.
	gone atomic.Int64
}

func newServer(t *testing.T, opts ...func(*fhir.Config)) *testServer {
	t.Helper()
	return newServerOn(t, storetest.DSN(t), opts...)
}

// newServerOn is newServer on the database dsn: another process's server
// when two share one PostgreSQL database.
func newServerOn(t *testing.T, dsn string, opts ...func(*fhir.Config)) *testServer {
	t.Helper()
	db, err := store.OpenDB(context.Background(), dsn, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, st: st, db: db}
	mux := chi.NewRouter()
	mux.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served := make(chan struct{})
			defer close(served)
			go func() {
				select {
				case <-r.Context().Done():
					select {
					case <-served: // the answer was given
					default:
						ts.gone.Add(1)
					}
				case <-served:
				}
			}()
			next.ServeHTTP(w, r)
		})
	})
	ts.http = httptest.NewServer(mux)
	cfg := fhir.Config{BaseURL: ts.http.URL + "/fhir", MaxBody: 1 << 20}
	for _, o := range opts {
		o(&cfg)
	}
	ts.fhir = fhir.New(st, cfg)
	mux.Mount("/fhir", ts.fhir.Handler())
	ts.URL = cfg.BaseURL
	t.Cleanup(func() {
		ts.http.Close()
		st.Close()
		db.Close()
	})
	return ts
}

// result is an HTTP answer with its body decoded when it is JSON.
type result struct {
	Status int
	Header http.Header
	Body   []byte
	JSON   map[string]any
}

func (ts *testServer) do(method, path string, body any, headers ...string) *result {
	ts.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			ts.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	url := path
	if !strings.HasPrefix(path, "http") {
		url = ts.URL + path
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		ts.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	out := &result{Status: resp.StatusCode, Header: resp.Header}
	out.Body, _ = io.ReadAll(resp.Body)
	if len(out.Body) > 0 {
		dec := json.NewDecoder(bytes.NewReader(out.Body))
		dec.UseNumber()
		if err := dec.Decode(&out.JSON); err != nil {
			ts.t.Fatalf("%s %s: answer is not JSON: %v: %.300s", method, path, err, out.Body)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
			ts.t.Errorf("%s %s: Content-Type %q", method, path, ct)
		}
	}
	return out
}

func (r *result) want(t *testing.T, status int) *result {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %.600s", r.Status, status, r.Body)
	}
	return r
}

// outcome asserts the answer is an OperationOutcome and returns its text.
func (r *result) outcome(t *testing.T) string {
	t.Helper()
	if r.JSON["resourceType"] != "OperationOutcome" {
		t.Fatalf("want an OperationOutcome, got %.300s", r.Body)
	}
	return string(r.Body)
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// bundleIDs returns "Type/id" of the match entries of a searchset.
func bundleIDs(b map[string]any) []string {
	var out []string
	entries, _ := b["entry"].([]any)
	for _, e := range entries {
		em := e.(map[string]any)
		if s, _ := em["search"].(map[string]any); s != nil && s["mode"] != "match" {
			continue
		}
		res := em["resource"].(map[string]any)
		out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
	}
	return out
}

func link(b map[string]any, rel string) string {
	links, _ := b["link"].([]any)
	for _, l := range links {
		lm := l.(map[string]any)
		if lm["relation"] == rel {
			return lm["url"].(string)
		}
	}
	return ""
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var _ = waitFor
