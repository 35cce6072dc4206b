package fhir_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// FuzzWritesNeverFail throws arbitrary bodies and search strings at the
// server: whatever comes in, the answer is a 2xx or a 4xx OperationOutcome,
// never a 500 or a crash.
func FuzzWritesNeverFail(f *testing.F) {
	for _, g := range []string{"us-core/Patient-*.json", "us-core/Observation-*.json", "pdex/*.json"} {
		files, _ := filepath.Glob(filepath.Join(testdata, g))
		for _, file := range files[:min(3, len(files))] {
			b, _ := os.ReadFile(file)
			f.Add(b, "name=x&_sort=-birthdate")
		}
	}
	f.Add([]byte(`{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}}]}`), "_id=1")
	f.Add([]byte(`{"resourceType":"Patient","_birthDate":[null],"contained":[{"resourceType":"X"}]}`), "birthdate=ap2024&subject:Patient.name=x")
	f.Add([]byte(`{"resourceType":"Observation","valueQuantity":{"value":1e400}}`), "value-quantity=1e400||mg")

	db, err := store.OpenDB(context.Background(), storetest.DSN(f), store.DBOptions{})
	if err != nil {
		f.Fatal(err)
	}
	st, err := store.Open(db, registry, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close(); db.Close() })
	h := fhir.New(st, fhir.Config{BaseURL: "http://127.0.0.1/fhir", MaxBody: 1 << 20}).Handler()

	f.Fuzz(func(t *testing.T, body []byte, query string) {
		check := func(method, target string, body []byte) {
			req := httptest.NewRequest(method, target, strings.NewReader(string(body)))
			req.Header.Set("Content-Type", "application/fhir+json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("%s %s: %d %s", method, target, rec.Code, rec.Body.String())
			}
			if rec.Code >= 400 && !strings.Contains(rec.Body.String(), `"OperationOutcome"`) {
				t.Fatalf("%s %s: %d without an OperationOutcome: %s", method, target, rec.Code, rec.Body.String())
			}
		}
		typ := "Patient"
		if i := strings.Index(string(body), `"resourceType":"`); i >= 0 {
			rest := string(body)[i+16:]
			if j := strings.IndexByte(rest, '"'); j > 0 && j < 40 {
				typ = url.PathEscape(rest[:j])
			}
		}
		check(http.MethodPost, "/"+typ, body)
		check(http.MethodPost, "/", body)
		check(http.MethodPut, "/"+typ+"/fuzz-1", body)
		if u, err := url.ParseQuery(query); err == nil {
			check(http.MethodGet, "/"+typ+"?"+u.Encode(), nil)
			check(http.MethodGet, "/Observation?"+u.Encode(), nil)
		}
	})
}
