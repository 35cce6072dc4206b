package apidoc

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
)

// document is the part of the OpenAPI document CheckRoutes reads.
type document struct {
	Servers []struct {
		URL string `json:"url"`
	} `json:"servers"`
	Paths map[string]map[string]json.RawMessage `json:"paths"`
}

var paramRE = regexp.MustCompile(`\{[^}]*\}`)

// normalizePath makes chi and OpenAPI patterns comparable: every path
// parameter becomes "{}" (chi's may carry a regexp, "{id:[0-9]+}"), and a
// trailing slash is dropped except on the root.
func normalizePath(p string) string {
	p = paramRE.ReplaceAllString(p, "{}")
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	return p
}

// Operations returns the documented operations as "METHOD /path" with path
// parameters written "{}", relative to the server URL (see normalizePath).
func Operations() (base string, ops map[string]bool, err error) {
	var d document
	if err := json.Unmarshal(Document, &d); err != nil {
		return "", nil, err
	}
	if len(d.Servers) > 0 {
		base = strings.TrimSuffix(d.Servers[0].URL, "/")
	}
	ops = map[string]bool{}
	for path, item := range d.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "options", "head", "patch", "trace":
				ops[strings.ToUpper(method)+" "+normalizePath(path)] = true
			}
		}
	}
	return base, ops, nil
}

// CheckRoutes fails t for every route of r that openapi.json does not
// document, so the document stays truthful as packages add routes. r may be
// the /api router itself or a root router with /api mounted on it; on a root
// router, routes outside the document's server URL (such as /fhir) are
// ignored. The Swagger UI's own routes are skipped.
func CheckRoutes(t testing.TB, r chi.Routes) {
	t.Helper()
	base, ops, err := Operations()
	if err != nil {
		t.Fatalf("apidoc: openapi.json: %v", err)
	}
	type route struct{ method, pattern string }
	var routes []route
	err = chi.Walk(r, func(method, pattern string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		routes = append(routes, route{method, strings.ReplaceAll(pattern, "/*/", "/")})
		return nil
	})
	if err != nil {
		t.Fatalf("apidoc: walk routes: %v", err)
	}
	under := func(p string) bool { return base != "" && (p == base || strings.HasPrefix(p, base+"/")) }
	root := false
	for _, rt := range routes {
		root = root || under(rt.pattern)
	}

	own := ownRoutes()
	var missing []string
	for _, rt := range routes {
		rel := rt.pattern
		if root {
			if !under(rel) {
				continue
			}
			if rel = strings.TrimPrefix(rel, base); rel == "" {
				rel = "/"
			}
		}
		if !own[rel] && !ops[rt.method+" "+normalizePath(rel)] {
			missing = append(missing, rt.method+" "+rt.pattern)
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("apidoc: route %s is not documented in internal/apidoc/openapi.json", m)
	}
}
