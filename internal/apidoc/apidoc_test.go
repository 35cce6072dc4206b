package apidoc_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/internal/apidoc/apidoctest"
)

func TestDocumentIsValidOpenAPI(t *testing.T) {
	t.Parallel()
	apidoctest.New(t) // fails t when the document does not load or validate
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestServesDocumentAndUI(t *testing.T) {
	t.Parallel()
	root := chi.NewRouter()
	api := chi.NewRouter()
	apidoc.Mount(api, "/api")
	root.Mount("/api", api)
	srv := httptest.NewServer(root)
	t.Cleanup(srv.Close)

	resp, body := get(t, srv.URL+"/api/openapi.json")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || body != string(apidoc.Document) {
		t.Fatalf("GET /api/openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}

	resp, page := get(t, srv.URL+"/api/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /api/: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(page, "/api/openapi.json") {
		t.Error("the UI page does not point at /api/openapi.json")
	}
	if strings.Contains(page, "cdn") || strings.Contains(page, "unpkg") {
		t.Error("the UI page loads assets from a CDN")
	}
	// Every asset the page references is served from the binary.
	for _, asset := range []string{"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"} {
		if !strings.Contains(page, "/api/"+asset) {
			t.Errorf("page does not reference /api/%s", asset)
			continue
		}
		resp, body := get(t, srv.URL+"/api/"+asset)
		if resp.StatusCode != 200 || len(body) < 1000 {
			t.Errorf("GET /api/%s: %d, %d bytes", asset, resp.StatusCode, len(body))
		}
	}
}

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...) }

func TestCheckRoutes(t *testing.T) {
	t.Parallel()
	h := func(http.ResponseWriter, *http.Request) {}

	documented := chi.NewRouter()
	apidoc.Mount(documented, "/api")
	documented.Get("/oidc_servers", h)
	documented.Get("/oidc_servers/{id:[0-9]+}", h)
	documented.Post("/oidc_servers/{pid}/verify", h) // other parameter name, same path
	rec := &recorder{TB: t}
	apidoc.CheckRoutes(rec, documented)
	if len(rec.errors) != 0 {
		t.Errorf("documented routes flagged: %v", rec.errors)
	}

	undocumented := chi.NewRouter()
	undocumented.Get("/oidc_servers", h)
	undocumented.Patch("/oidc_servers/{id}", h)
	undocumented.Get("/no_such_thing", h)
	rec = &recorder{TB: t}
	apidoc.CheckRoutes(rec, undocumented)
	got := strings.Join(rec.errors, "\n")
	if len(rec.errors) != 2 || !strings.Contains(got, "PATCH /oidc_servers/{id}") || !strings.Contains(got, "GET /no_such_thing") {
		t.Errorf("undocumented routes not flagged exactly: %v", rec.errors)
	}

	// On a root router, only routes under the document's server URL count.
	root := chi.NewRouter()
	root.Get("/fhir/metadata", h)
	api := chi.NewRouter()
	api.Get("/oidc_servers", h)
	api.Delete("/oidc_servers", h)
	root.Mount("/api", api)
	rec = &recorder{TB: t}
	apidoc.CheckRoutes(rec, root)
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "DELETE /api/oidc_servers") {
		t.Errorf("root router: %v", rec.errors)
	}
}

func TestOperationsMatchDocumentPaths(t *testing.T) {
	t.Parallel()
	base, ops, err := apidoc.Operations()
	if err != nil {
		t.Fatal(err)
	}
	if base != "/api" {
		t.Errorf("server URL = %q, want /api", base)
	}
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	_ = json.Unmarshal(apidoc.Document, &d)
	for _, want := range []string{"GET /oidc_servers", "POST /oidc_servers", "GET /oidc_servers/{}", "PUT /oidc_servers/{}", "DELETE /oidc_servers/{}", "POST /oidc_servers/{}/verify"} {
		if !ops[want] {
			t.Errorf("operation %s missing from %v", want, ops)
		}
	}
}
