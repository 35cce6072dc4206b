package mdm_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// BenchmarkMemberRecord measures what following MDM links costs a member's
// requests: a Synthea member's data (about 200 resources) held by the
// ingested copy P and read by the member M linked to it, against the same
// data read by P, whose own compartment holds it. Each request goes over
// HTTP with a real member token.
//
//	go test -run '^$' -bench MemberRecord -benchtime 200x ./mdm/
func BenchmarkMemberRecord(b *testing.B) {
	idp := oidctest.New(b)
	idp.AddClient("portal", "portal-secret")
	db, err := store.OpenDB(context.Background(), storetest.DSN(b), store.DBOptions{})
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(db, search.NewRegistry(spec.R4()), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	mux := chi.NewRouter()
	hs := httptest.NewServer(mux)
	b.Cleanup(func() { hs.Close(); st.Close(); db.Close() })
	base := hs.URL + "/fhir"
	srv := fhir.New(st, fhir.Config{BaseURL: base, MaxBody: 32 << 20, Logger: slog.New(slog.DiscardHandler)})
	guard, err := smart.New(smart.Config{BaseURL: base, Logger: slog.New(slog.DiscardHandler),
		Issuers: []smart.Issuer{{URL: idp.Issuer()}}, AdminTokens: []string{recordAdmin}})
	if err != nil {
		b.Fatal(err)
	}
	guard.Attach(srv)
	srv.EnableEverything(fhir.EverythingOptions{Withhold: mdm.Withhold})
	srv.SetPatientLinks(mdm.Linked)
	mux.Mount("/fhir", srv.Handler())

	do := func(method, path, body, token string) map[string]any {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/fhir+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil || resp.StatusCode/100 != 2 {
			b.Fatalf("%s: %d %.300s", path, resp.StatusCode, raw)
		}
		return out
	}
	get := func(path, token string) map[string]any { return do(http.MethodGet, path, "", token) }
	files, _ := filepath.Glob(filepath.Join(td.Dir, "synthea", "Angelic_Mueller*.json"))
	raw, err := os.ReadFile(files[0])
	if err != nil {
		b.Fatal(err)
	}
	loaded := do(http.MethodPost, "", string(raw), recordAdmin)
	p := ""
	for _, e := range loaded["entry"].([]any) {
		loc := e.(map[string]any)["response"].(map[string]any)["location"].(string)
		if rest, ok := strings.CutPrefix(strings.TrimPrefix(loc, base+"/"), "Patient/"); ok {
			p, _, _ = strings.Cut(rest, "/")
		}
	}
	pat := get("/Patient/"+p, recordAdmin)
	pat["link"] = []any{map[string]any{"other": map[string]any{"reference": "Patient/m"}, "type": "seealso"}}
	pj, _ := json.Marshal(pat)
	do(http.MethodPut, "/Patient/"+p, string(pj), recordAdmin)
	do(http.MethodPut, "/Patient/m", patient("m", "seealso Patient/"+p), recordAdmin)
	token := func(member string) string {
		tok, err := idp.MintFor([]string{base}, oidctest.Grant{ClientID: "portal", Patient: member, Scopes: []string{"openid", "patient/*.read"}})
		if err != nil {
			b.Fatal(err)
		}
		return tok.AccessToken
	}
	m, own := token("m"), token(p)
	for _, c := range []struct{ name, path, token string }{
		{"everything/member-via-link", "/Patient/m/$everything?_count=1000", m},
		{"everything/own-compartment", "/Patient/" + p + "/$everything?_count=1000&_mdm=false", own},
		{"search/member-via-link", "/Observation?_count=100", m},
		{"search/own-compartment", "/Observation?_count=100&subject=Patient/" + p, own},
		{"search/mdm-modifier", "/Observation?_count=100&subject:mdm=Patient/m", recordAdmin},
		{"search/plain-reference", "/Observation?_count=100&subject=Patient/" + p, recordAdmin},
	} {
		total := get(c.path, c.token)["total"]
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				get(c.path, c.token)
			}
			b.ReportMetric(total.(float64), "matches")
		})
	}
}
