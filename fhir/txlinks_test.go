package fhir

import (
	"encoding/json"
	"os"
	"reflect"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/spec"
	td "github.com/p2pserver/p2pserver/internal/testdata"
)

// syntheaEntry is an entry of a Synthea transaction Bundle.
type syntheaEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
}

// syntheaEntries reads the entries of every Synthea transaction Bundle in
// the test data.
func syntheaEntries(tb testing.TB) []syntheaEntry {
	var all []syntheaEntry
	for _, f := range td.Glob(tb, "synthea/*.json") {
		raw, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		var bundle struct{ Entry []syntheaEntry }
		if err := json.Unmarshal(raw, &bundle); err != nil {
			tb.Fatal(err)
		}
		all = append(all, bundle.Entry...)
	}
	return all
}

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
	for _, e := range syntheaEntries(b) {
		info := decodeBody(e.Resource)
		to[e.FullURL] = info.ResourceType + "/" + NewID()
		all = append(all, res{info.ResourceType, e.Resource})
		size += len(e.Resource)
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

// TestRewriteDecodedLinksMatchesJSON: a transaction replaces the links of a
// resource (FHIR R4 http.html#trules: references, elements of type uri,
// url, oid and uuid, href/src in the narrative, never canonical) both in
// its JSON and in its decoded form, which it keeps rather than decoding
// the rewritten JSON again. The decoded form must be what decoding the
// rewritten JSON gives, for every resource of the Synthea bundles and for
// each kind of link.
func TestRewriteDecodedLinksMatchesJSON(t *testing.T) {
	type res struct {
		name, typ string
		raw       []byte
	}
	to := map[string]string{
		"urn:uuid:p1":            "Patient/a1",
		"urn:uuid:o1":            "Observation/b2",
		"http://x.org/Patient/9": "Patient/c3",
		"urn:oid:1.2.3":          "Organization/d4",
	}
	rows := []res{
		{"reference", "Observation", []byte(`{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:p1"}}`)},
		{"references in an array, one not a fullUrl", "Observation", []byte(`{"resourceType":"Observation","status":"final","code":{"text":"x"},"performer":[{"reference":"urn:uuid:p1"},{"reference":"Patient/other"},{"reference":"http://x.org/Patient/9"}]}`)},
		{"uri element", "Observation", []byte(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:uuid:p1","code":"c"}]},"subject":{"reference":"urn:uuid:p1"}}`)},
		{"canonical kept", "Questionnaire", []byte(`{"resourceType":"Questionnaire","status":"draft","derivedFrom":["urn:uuid:p1"],"url":"urn:uuid:o1"}`)},
		{"oid in an identifier system", "Patient", []byte(`{"resourceType":"Patient","identifier":[{"system":"urn:oid:1.2.3","value":"urn:uuid:p1"}]}`)},
		{"narrative href and src", "Patient", []byte(`{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:p1\">me</a> <img SRC='urn:uuid:o1'/> &amp; <a href=\"keep\">k</a></div>"}}`)},
		{"contained resource", "Observation", []byte(`{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Provenance","id":"p","recorded":"2020-01-01T00:00:00Z","agent":[{"who":{"reference":"urn:uuid:p1"}}],"target":[{"reference":"urn:uuid:o1"}]}]}`)},
		{"escaped strings", "Observation", []byte(`{"resourceType":"Observation","status":"final","code":{"text":"x\u00e9\"q"},"subject":{"reference":"urn:uuid:p\u0031"},"note":[{"text":"urn:uuid:p1"}]}`)},
		{"nothing to replace", "Patient", []byte(`{"resourceType":"Patient","name":[{"family":"urn:uuid:p1"}],"managingOrganization":{"reference":"Organization/z"}}`)},
	}
	for _, e := range syntheaEntries(t) {
		info := decodeBody(e.Resource)
		to[e.FullURL] = info.ResourceType + "/" + NewID()
		rows = append(rows, res{e.FullURL, info.ResourceType, e.Resource})
	}
	m := spec.R4()
	fn := func(kind linkKind, v string) (string, bool) {
		t, ok := to[v]
		if ok && kind != linkReference {
			t = "http://server.example/fhir/" + t
		}
		return t, ok
	}
	replaced := 0
	for _, r := range rows {
		out, changes := rewriteLinksRecorded(m, r.raw, r.typ, fn)
		want, err := decodeJSON(out)
		if err != nil {
			t.Fatalf("%s: the rewritten JSON: %v", r.name, err)
		}
		got, err := decodeJSON(r.raw)
		if err != nil {
			t.Fatal(err)
		}
		rewriteDecodedLinks(m, got, r.typ, changes.lookup)
		if !reflect.DeepEqual(got, want) {
			g, _ := json.Marshal(got)
			t.Errorf("%s: the decoded resource rewritten\n%s\nis not the rewritten JSON decoded\n%s", r.name, g, out)
		}
		if len(changes) > 0 {
			replaced++
		}
	}
	if replaced < len(rows)/2 {
		t.Fatalf("links were replaced in only %d of %d resources", replaced, len(rows))
	}
}
