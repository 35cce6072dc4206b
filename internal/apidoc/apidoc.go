// Package apidoc serves the OpenAPI 3 document of /api and a Swagger UI that
// renders it. The document is openapi.json beside this file, written by hand
// and embedded; every package that adds /api routes documents them there, and
// its tests call CheckRoutes so an undocumented route fails the build.
package apidoc

import (
	_ "embed"
	"io/fs"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/swaggest/swgui"
	"github.com/swaggest/swgui/v5/static"
	"github.com/swaggest/swgui/v5emb"
)

// Document is the OpenAPI 3 document, as served at /api/openapi.json.
//
//go:embed openapi.json
var Document []byte

// Mount registers on r, the router mounted at base (normally "/api"):
//
//	GET {base}/              the Swagger UI page
//	GET {base}/docs          a redirect to the Swagger UI page
//	GET {base}/openapi.json  the document
//	GET {base}/<asset>       the UI's scripts, styles and icons
//
// The UI's files are embedded in the binary (swgui's v5emb), so the page
// works without reaching any CDN.
func Mount(r chi.Router, base string) {
	base = "/" + strings.Trim(base, "/")
	ui := v5emb.NewHandlerWithConfig(swgui.Config{
		Title:       "p2pserver P2P API",
		SwaggerJSON: base + "/openapi.json",
		BasePath:    base + "/",
	})
	r.Get("/", ui.ServeHTTP)
	r.Get("/docs", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, base+"/", http.StatusFound)
	})
	r.Get("/openapi.json", serveDocument)
	for _, name := range uiAssets() {
		r.Get("/"+name, ui.ServeHTTP)
	}
}

func serveDocument(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(Document)
}

// uiAssets lists the files of the embedded Swagger UI, by the names the page
// requests (the embedded copies are gzipped; swgui serves them decompressed
// when the client does not accept gzip).
func uiAssets() []string {
	var names []string
	_ = fs.WalkDir(static.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		names = append(names, strings.TrimSuffix(path, ".gz"))
		return nil
	})
	return names
}

// ownRoutes returns the route patterns (relative to base) Mount registers:
// they serve the documentation, are not part of the API, and CheckRoutes
// skips them.
func ownRoutes() map[string]bool {
	own := map[string]bool{"/": true, "/docs": true, "/openapi.json": true}
	for _, n := range uiAssets() {
		own["/"+n] = true
	}
	return own
}
