package fhir

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/spec"
	td "github.com/p2pserver/p2pserver/internal/testdata"
)

// BenchmarkRewriteLinks replaces the urn:uuid links of every resource of the
// Synthea transaction bundles, as a transaction does before it writes.
func BenchmarkRewriteLinks(b *testing.B) {
	type res struct {
		typ string
		raw []byte
	}
	var all []res
	to := map[string]string{}
	size := 0
	for _, f := range td.Glob(b, "synthea/*.json") {
		raw, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		var bundle struct {
			Entry []struct {
				FullURL  string          `json:"fullUrl"`
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(raw, &bundle); err != nil {
			b.Fatal(err)
		}
		for _, e := range bundle.Entry {
			info := decodeBody(e.Resource)
			to[e.FullURL] = info.ResourceType + "/" + NewID()
			all = append(all, res{info.ResourceType, e.Resource})
			size += len(e.Resource)
		}
	}
	m := spec.R4()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for range b.N {
		replaced := 0
		for _, r := range all {
			_, changed := rewriteLinks(m, r.raw, r.typ, func(kind linkKind, v string) (string, bool) {
				t, ok := to[v]
				return t, ok
			})
			if changed {
				replaced++
			}
		}
		if replaced < len(all)/2 {
			b.Fatalf("only %d of %d resources had links replaced", replaced, len(all))
		}
	}
	b.ReportMetric(float64(len(all)), "resources/op")
}
