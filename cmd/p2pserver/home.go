package main

import (
	"encoding/json"
	"html/template"
	"net/http"
	"strconv"
	"strings"

	"github.com/rs/cors"
)

// homeLinks is what GET / answers: where things are on this server.
type homeLinks struct {
	Name          string `json:"name"`
	Version       string `json:"version"`
	FHIR          string `json:"fhir"`
	Capabilities  string `json:"capabilityStatement"`
	SMART         string `json:"smartConfiguration"`
	APIDocs       string `json:"apiDocs"`
	OpenAPI       string `json:"openapi"`
	Health        string `json:"health"`
	Documentation string `json:"documentation"`
}

// readme is where the documentation is: the README of the source.
const readme = "README.md at the root of the p2pserver source (module github.com/p2pserver/p2pserver)"

var homePage = template.Must(template.New("home").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>p2pserver</title></head>
<body style="font-family:sans-serif;max-width:42em;margin:2em auto">
<h1>p2pserver {{.Version}}</h1>
<p>A FHIR R4 payer-to-payer exchange server.</p>
<ul>
<li>FHIR API: <a href="{{.FHIR}}">{{.FHIR}}</a> (what it supports: <a href="{{.Capabilities}}">{{.Capabilities}}</a>)</li>
<li>SMART configuration: <a href="{{.SMART}}">{{.SMART}}</a></li>
<li>Admin and back-office API: <a href="{{.APIDocs}}">{{.APIDocs}}</a> (OpenAPI: <a href="{{.OpenAPI}}">{{.OpenAPI}}</a>)</li>
<li>Health: <a href="{{.Health}}">{{.Health}}</a></li>
</ul>
<p>Documentation: {{.Documentation}}.</p>
</body></html>
`))

// home answers GET / with links to the FHIR API, its CapabilityStatement,
// the /api documentation and the README: JSON, or HTML for a browser
// (Accept naming text/html).
func (a *app) home(w http.ResponseWriter, r *http.Request) {
	b := a.cfg.BaseURL
	links := homeLinks{
		Name: "p2pserver", Version: version,
		FHIR: b + "/fhir", Capabilities: b + "/fhir/metadata", SMART: b + "/fhir/.well-known/smart-configuration",
		APIDocs: b + "/api/docs", OpenAPI: b + "/api/openapi.json", Health: b + "/healthz",
		Documentation: readme,
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Add("Vary", "Accept")
	if prefersHTML(r.Header.Values("Accept")) {
		h.Set("Content-Type", "text/html; charset=utf-8")
		if err := homePage.Execute(w, links); err != nil {
			a.log.Error("home page", "err", err)
		}
		return
	}
	body, _ := json.MarshalIndent(links, "", "  ")
	h.Set("Content-Type", "application/json; charset=utf-8")
	_, _ = w.Write(append(body, '\n'))
}

// prefersHTML reports whether an Accept header names text/html with a
// weight above 0 and at least that of JSON (RFC 9110 section 12.5.1:
// q=0 means "not acceptable"). A client naming neither gets JSON.
func prefersHTML(accept []string) bool {
	htmlQ, jsonQ := -1.0, -1.0
	for _, h := range accept {
		for _, rng := range strings.Split(h, ",") {
			mt, params, _ := strings.Cut(rng, ";")
			q := 1.0
			for _, p := range strings.Split(params, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(k, "q") {
					if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
						q = f
					}
				}
			}
			switch strings.ToLower(strings.TrimSpace(mt)) {
			case "text/html":
				htmlQ = q
			case "application/json", "application/*", "*/*":
				jsonQ = max(jsonQ, q)
			}
		}
	}
	return htmlQ > 0 && htmlQ >= jsonQ
}

// corsHeaders are the request headers a browser client may send: those
// FHIR and /api clients use (conditional requests, Prefer, tokens).
var corsHeaders = []string{"Accept", "Authorization", "Content-Type", "If-Match", "If-None-Exist",
	"If-None-Match", "If-Modified-Since", "Prefer", "X-Request-Id"}

// corsExposed are the response headers a browser client may read: where a
// created resource is, its version, paging and retry hints, the token
// challenge.
var corsExposed = []string{"Location", "Content-Location", "ETag", "Last-Modified", "Retry-After",
	"WWW-Authenticate", "X-Progress", "X-Request-Id"}

// cors lets the browser origins of -cors-origins call the server: preflight
// requests (OPTIONS with Access-Control-Request-Method) are answered here,
// before any token is asked for, and answers carry the CORS headers. No
// cookies are involved (tokens are bearer tokens), so credentials are not
// allowed. Without -cors-origins, h is returned as it is.
func (a *app) cors(h http.Handler) http.Handler {
	if len(a.cfg.CORSOrigins) == 0 {
		return h
	}
	return cors.New(cors.Options{
		AllowedOrigins: a.cfg.CORSOrigins,
		AllowedMethods: []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
			http.MethodPatch, http.MethodDelete},
		AllowedHeaders: corsHeaders,
		ExposedHeaders: corsExposed,
		MaxAge:         600,
	}).Handler(h)
}
