package batch

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
	td "github.com/p2pserver/p2pserver/internal/testdata"
)

// syntheaPages returns every Synthea bundle compacted, as a source payer
// sends its pages, and every entry's resource.
func syntheaPages(tb testing.TB) (pages, resources [][]byte) {
	tb.Helper()
	for _, f := range td.Glob(tb, "synthea/*.json") {
		raw, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		var c bytes.Buffer
		if err := json.Compact(&c, raw); err != nil {
			tb.Fatal(err)
		}
		pages = append(pages, c.Bytes())
		var b struct {
			Entry []struct {
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(c.Bytes(), &b); err != nil {
			tb.Fatal(err)
		}
		for _, e := range b.Entry {
			resources = append(resources, e.Resource)
		}
	}
	return pages, resources
}

// usCoreExamples returns the HL7 US Core examples as written (indented).
func usCoreExamples(tb testing.TB) [][]byte {
	var out [][]byte
	for _, f := range td.Glob(tb, "us-core/*.json") {
		raw, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, raw)
	}
	return out
}

// referenceDecode is what decodeJSON must agree with: encoding/json with
// UseNumber, and the objects with a string "reference" member.
func referenceDecode(data []byte) (any, []map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, errors.New("data after the value")
	}
	var refs []map[string]any
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if _, ok := v["reference"].(string); ok {
				refs = append(refs, v)
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(v)
	return v, refs, nil
}

func checkDecode(t *testing.T, name string, data []byte) {
	t.Helper()
	var refs []map[string]any
	got, err := decodeJSON(data, &refs)
	want, wantRefs, werr := referenceDecode(data)
	if (err != nil) != (werr != nil) {
		t.Fatalf("%s: decodeJSON error %v, encoding/json error %v", name, err, werr)
	}
	if err != nil {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: decodeJSON differs from encoding/json", name)
	}
	if len(refs) != len(wantRefs) {
		t.Fatalf("%s: %d objects with a reference, want %d", name, len(refs), len(wantRefs))
	}
}

// decodeJSON gives what encoding/json with UseNumber gives, on every HL7
// US Core example and every Synthea resource, and finds every Reference.
func TestDecodeJSONAgreesWithEncodingJSON(t *testing.T) {
	_, resources := syntheaPages(t)
	for i, r := range resources {
		checkDecode(t, "synthea resource "+string(rune('0'+i%10)), r)
	}
	for _, r := range usCoreExamples(t) {
		checkDecode(t, "us-core example", r)
	}
	for _, s := range []string{
		`{}`, `[]`, `"x"`, `1.50e+3`, `-0`, `null`, `{"a":[1,{"reference":"P/1"},{"reference":2}]}`,
		`{"k\"ey":"v\\\"}","x\u0041":[{"}":"]"},[],{}],"é":"\u00e9\ud83d\ude00"}`,
		"{\n\t\"a\"\r\n:\t\"b c\"\n}", `{"a":1,"a":2}`,
		// refused by both
		``, `{`, `{"a":}`, `{"a":1,}`, `{"a":1}x`, `{'a':1}`, `{"a":01}`, `{"a":"\x"}`, "\"a\tb\"", `[1 2]`, `{"a" 1}`, `tru`, `1.`, `1e`, `-`,
	} {
		checkDecode(t, s, []byte(s))
	}
}

// FuzzDecodeJSON: on any input decodeJSON refuses it exactly when
// encoding/json does, and otherwise gives the same value.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,{"reference":"x"}],"b":-1.5e3}`, `{"a":"\u00e9\"}"}`, "[true,false,null]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) || !bytes.Equal(bytes.ToValidUTF8(data, nil), data) {
			// Invalid UTF-8 is replaced by encoding/json; both refusing
			// and replacing are fine here.
			var refs []map[string]any
			if _, err := decodeJSON(data, &refs); err == nil && !json.Valid(data) {
				t.Fatalf("decodeJSON accepted %q", data)
			}
			return
		}
		checkDecode(t, string(data), data)
	})
}

// readEnvelope finds each entry's resource, fullUrl and search mode and the
// Bundle's links, as encoding/json reads them.
func TestReadEnvelopeAgreesWithEncodingJSON(t *testing.T) {
	pages, _ := syntheaPages(t)
	extra := []byte(`{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"a"},{"relation":"next","url":"b"}],` +
		`"entry":[{"fullUrl":"u1","resource":{"resourceType":"Patient","id":"1"},"search":{"mode":"match"}},{"resource":{"resourceType":"OperationOutcome"},"search":{"mode":"outcome"}},{"fullUrl":"u3"}],"total":2}`)
	for _, page := range append(pages, extra) {
		env, err := readEnvelope(page)
		if err != nil {
			t.Fatal(err)
		}
		var want struct {
			ResourceType string `json:"resourceType"`
			Type         string `json:"type"`
			Link         []struct{ Relation, URL string }
			Entry        []struct {
				FullURL  string          `json:"fullUrl"`
				Resource json.RawMessage `json:"resource"`
				Search   struct{ Mode string }
			} `json:"entry"`
		}
		if err := json.Unmarshal(page, &want); err != nil {
			t.Fatal(err)
		}
		if env.resourceType != want.ResourceType || env.typ != want.Type || len(env.entries) != len(want.Entry) || len(env.links) != len(want.Link) {
			t.Fatalf("envelope %s/%s with %d entries, %d links; want %s/%s, %d, %d", env.resourceType, env.typ, len(env.entries), len(env.links),
				want.ResourceType, want.Type, len(want.Entry), len(want.Link))
		}
		for i, l := range want.Link {
			if env.links[i] != (bundleLink{l.Relation, l.URL}) {
				t.Errorf("link %d: %v", i, env.links[i])
			}
		}
		for i, e := range want.Entry {
			g := env.entries[i]
			if g.fullURL != e.FullURL || g.mode != e.Search.Mode || !bytes.Equal(g.resource, e.Resource) {
				t.Fatalf("entry %d: %q %q %.40s, want %q %q %.40s", i, g.fullURL, g.mode, g.resource, e.FullURL, e.Search.Mode, e.Resource)
			}
		}
	}
	oo := []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden","diagnostics":"no"}]}`)
	env, err := readEnvelope(oo)
	if err != nil || env.resourceType != "OperationOutcome" || len(env.issues) != 1 || env.issues[0] != (issue{"error", "forbidden", "no"}) {
		t.Fatalf("OperationOutcome read as %+v, %v", env, err)
	}
	for _, bad := range []string{``, `{`, `[]`, `{"entry":[{"resource":}]}`, `{"entry":[1,]}`, `{"a":1}x`, `{"a":1} {}`, "{\"a\":\"\xff\"}"} {
		if _, err := readEnvelope([]byte(bad)); err == nil {
			t.Errorf("readEnvelope accepted %q", bad)
		}
	}
}

// checkCanonical: canonical's output is the compact form of the resource
// with the stored identity, meta and references, as encoding/json reads
// both.
func checkCanonical(t *testing.T, r []byte) {
	t.Helper()
	mark := func(ref string) (string, bool) { return "X/" + ref, true }
	got, err := canonical(r, "L", "https://src/fhir/x", mark)
	if err != nil {
		t.Fatalf("canonical(%.80s): %v", r, err)
	}
	var c bytes.Buffer
	if err := json.Compact(&c, got); err != nil || !bytes.Equal(c.Bytes(), got) {
		t.Fatalf("canonical(%.80s) is not compact JSON: %s", r, got)
	}
	// The form store.Doc.Canonical describes: resourceType, id, meta
	// first (meta without versionId and lastUpdated, checked below).
	ms, err := fhirjson.Members(got)
	if err != nil || len(ms) < 3 || ms[0].Key != "resourceType" || ms[1].Key != "id" || ms[2].Key != "meta" {
		t.Fatalf("canonical(%.80s) does not begin with resourceType, id and meta: %s", r, got)
	}
	want, refs, err := referenceDecode(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range refs {
		m["reference"] = "X/" + m["reference"].(string)
	}
	w := want.(map[string]any)
	w["id"] = "L"
	meta, _ := w["meta"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		w["meta"] = meta
	}
	delete(meta, "versionId")
	delete(meta, "lastUpdated")
	meta["source"] = "https://src/fhir/x"
	back, _, _ := referenceDecode(got)
	if !reflect.DeepEqual(back, want) {
		t.Fatalf("canonical(%.80s) = %.200s", r, got)
	}
}

func TestCanonicalOnSynthea(t *testing.T) {
	_, resources := syntheaPages(t)
	for _, r := range append(resources, usCoreExamples(t)...) {
		checkCanonical(t, r)
	}
}

// FuzzCanonical: on any JSON object with a string resourceType and a meta
// object (or none), canonical agrees with encoding/json.
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{
		`{"resourceType":"Observation","id":"1","meta":{"versionId":"2","tag":[{"code":"x"}]},"subject":{"reference":"Patient/1"}}`,
		`{"resourceType":"Patient","contained":[{"reference":"a","x":{"referenc\u0065":"b"}}],"text":{"div":"\u003cp/>\b\f"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var probe map[string]json.RawMessage // names matched exactly
		if !json.Valid(data) || !utf8.Valid(data) || json.Unmarshal(data, &probe) != nil || probe == nil {
			return
		}
		if rt := probe["resourceType"]; len(rt) == 0 || rt[0] != '"' {
			return // canonical refuses a resource without a string resourceType
		}
		if meta := probe["meta"]; len(meta) > 0 && meta[0] != '{' {
			return // and a meta that is not an object
		}
		checkCanonical(t, data)
	})
}

// The page readers against the hand-written ones this package had (a
// byte scanner for pages and resources, a copying scanner for canonical),
// on the Synthea bundles compacted as pages and their resources. CPU time
// per operation, median of 10 runs interleaved; 2 cores shared with other
// work, where wall-clock ns/op varies 2-4x from run to run (its medians
// are given too):
//
//	                hand-written                 jsontext
//	ReadEnvelope    658 µs (2.86 ms) 39.7 kB 908  492 µs (2.76 ms) 34.4 kB 573
//	DecodeResource 19.9 µs (66.6 µs)  9.7 kB 167 22.0 µs (97.4 µs)  9.7 kB 166
//	Canonical      15.1 µs (49.1 µs)  7.6 kB  91 15.5 µs (66.1 µs)  2.6 kB  21
//
// The CPU cost is within 10%, the code 340 lines shorter and kept by
// others, so jsontext reads every page; BenchmarkIngest (5,000 resources,
// two runs each) moved from 306 and 446 to 318 and 519 resources/s.
//
//	go test -run '^$' -bench 'ReadEnvelope|DecodeResource|Canonical' -benchmem ./batch/

func BenchmarkReadEnvelope(b *testing.B) {
	pages, _ := syntheaPages(b)
	n := 0
	for _, p := range pages {
		n += len(p)
	}
	b.SetBytes(int64(n / len(pages)))
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	for i := range b.N {
		if _, err := readEnvelope(pages[i%len(pages)]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeResource(b *testing.B) {
	_, resources := syntheaPages(b)
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	for i := range b.N {
		var refs []map[string]any
		if _, err := decodeJSON(resources[i%len(resources)], &refs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCanonical(b *testing.B) {
	_, resources := syntheaPages(b)
	keep := func(ref string) (string, bool) { return ref, false }
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	for i := range b.N {
		if _, err := canonical(resources[i%len(resources)], "L", "https://src/fhir/x", keep); err != nil {
			b.Fatal(err)
		}
	}
}

// cpuTime returns the CPU time this process has used. The benchmarks
// report it per operation ("cpu-ns/op") beside the wall-clock ns/op: on a
// machine shared with other work it varies far less.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per operation since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}
