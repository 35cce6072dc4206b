// Package apidoctest checks real /api exchanges against the OpenAPI document,
// so tests fail when a handler answers with a status or a body shape that
// internal/apidoc/openapi.json does not describe. It uses
// github.com/getkin/kin-openapi and is meant for tests only.
package apidoctest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/p2pserver/p2pserver/internal/apidoc"
)

// Validator holds the loaded and validated document.
type Validator struct {
	doc    *openapi3.T
	base   string
	routes []route
}

type route struct {
	re     *regexp.Regexp
	names  []string
	path   string
	method string
	item   *openapi3.PathItem
	op     *openapi3.Operation
}

// New loads apidoc.Document, fails t if it is not a valid OpenAPI 3
// document, and returns a Validator for it.
func New(t testing.TB) *Validator {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(apidoc.Document)
	if err != nil {
		t.Fatalf("apidoctest: load openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("apidoctest: openapi.json is not valid OpenAPI 3: %v", err)
	}
	v := &Validator{doc: doc}
	if len(doc.Servers) > 0 {
		v.base = strings.TrimSuffix(doc.Servers[0].URL, "/")
	}
	param := regexp.MustCompile(`^\{([^}]+)\}$`)
	for path, item := range doc.Paths.Map() {
		var names []string
		segs := strings.Split(path, "/")
		for i, seg := range segs {
			if m := param.FindStringSubmatch(seg); m != nil {
				names = append(names, m[1])
				segs[i] = `([^/]+)`
			} else {
				segs[i] = regexp.QuoteMeta(seg)
			}
		}
		expr := "^" + strings.Join(segs, "/") + "$"
		re := regexp.MustCompile(expr)
		for method, op := range item.Operations() {
			v.routes = append(v.routes, route{re: re, names: names, path: path, method: method, item: item, op: op})
		}
	}
	return v
}

// Check fails t unless the document has an operation for req and resp (with
// its body, which Check reads and restores) is one of that operation's
// documented responses with a matching JSON body and headers.
func (v *Validator) Check(t testing.TB, req *http.Request, resp *http.Response) {
	t.Helper()
	path := strings.TrimPrefix(req.URL.Path, v.base)
	var rt *route
	params := map[string]string{}
	for i := range v.routes {
		r := &v.routes[i]
		if r.method != req.Method {
			continue
		}
		if m := r.re.FindStringSubmatch(path); m != nil {
			rt = r
			for j, n := range r.names {
				params[n] = m[j+1]
			}
			break
		}
	}
	if rt == nil {
		t.Errorf("apidoctest: %s %s is not a documented operation", req.Method, req.URL.Path)
		return
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("apidoctest: read body: %v", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: params,
			Route:      &routers.Route{Spec: v.doc, Path: rt.path, PathItem: rt.item, Method: rt.method, Operation: rt.op},
		},
		Status:  resp.StatusCode,
		Header:  resp.Header,
		Body:    io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("apidoctest: %s %s answered %d, which openapi.json does not describe: %v\nbody: %s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
}
