package search

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/fhirpath"
	"github.com/p2pserver/p2pserver/internal/testdata"
)

// whole holds the parameters' expressions as defined, every type's
// branches kept.
var whole sync.Map // *Param -> *fhirpath.Expr

// extractAll is Extract evaluating every parameter of the type, none
// skipped for the elements it reads, each whole.
func extractAll(r *Registry, typ string, res map[string]any) []Entry {
	var out []Entry
	seen := map[string]int{} // where each entry is in out
	for code, p := range r.byType[typ] {
		e, ok := whole.Load(p)
		if !ok {
			e = fhirpath.MustCompile(p.Expression)
			whole.Store(p, e)
		}
		for _, n := range e.(*fhirpath.Expr).Eval(r.model, res) {
			for _, e := range entriesFor(p, n) {
				e.Param = code
				k := code + "\x00" + e.Key
				if at, ok := seen[k]; ok {
					out[at].Payload = mergePayload(e.Key, out[at].Payload, e.Payload)
				} else {
					seen[k] = len(out)
					out = append(out, e)
				}
			}
		}
	}
	return out
}

func sortedEntries(es []Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = fmt.Sprintf("%s %q %x", e.Param, e.Key, e.Payload)
	}
	slices.Sort(out)
	return out
}

// exampleResources returns every resource of the example data (Synthea
// patients, the PDex and US Core examples; Bundles' entries too).
func exampleResources(t *testing.T) []map[string]any {
	var files []string
	for _, pattern := range []string{"synthea/*.json", "pdex/*.json", "us-core/*.json"} {
		files = append(files, testdata.Glob(t, pattern)...)
	}
	var out []map[string]any
	var add func(m map[string]any)
	add = func(m map[string]any) {
		if rt, _ := m["resourceType"].(string); rt == "" {
			return
		}
		out = append(out, m)
		entries, _ := m["entry"].([]any)
		for _, e := range entries {
			em, _ := e.(map[string]any)
			if res, ok := em["resource"].(map[string]any); ok {
				add(res)
			}
		}
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			continue // not a resource (a definition the folder also holds)
		}
		add(m)
	}
	return out
}

// TestExtractSkipsOnlyParametersWithNothingToRead: evaluating only a
// type's own branches of each parameter, and skipping a parameter whose
// elements a resource does not have, changes no index entry, over every
// resource of the example data; and the skipping does happen.
func TestExtractSkipsOnlyParametersWithNothingToRead(t *testing.T) {
	resources := exampleResources(t)
	types := map[string]bool{}
	skipped := 0
	for _, res := range resources {
		typ := res["resourceType"].(string)
		types[typ] = true
		got, want := sortedEntries(reg.Extract(typ, res)), sortedEntries(extractAll(reg, typ, res))
		if !slices.Equal(got, want) {
			id, _ := res["id"].(string)
			t.Errorf("%s/%s: Extract gives\n  %s\nwant\n  %s", typ, id, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		for _, p := range reg.byType[typ] {
			if p.reads != nil && !hasAny(res, p.reads) {
				skipped++
			}
		}
	}
	if len(resources) < 1000 || len(types) < 20 || skipped == 0 {
		t.Fatalf("the example data has %d resources of %d types, %d parameters skipped: too little to prove anything", len(resources), len(types), skipped)
	}
	t.Logf("%d resources of %d types, %d parameter evaluations skipped", len(resources), len(types), skipped)
}

// cpuNow is the process's CPU time (user and system), which the other
// work of a shared machine does not inflate as it does wall time.
func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// chunkProvenance is a Provenance as a bulk ingest writes one per chunk:
// n targets, of distinct resources (versioned references to
// Observations, some to Patients and Groups, a few urn:uuid ones typed
// Patient) and, when distinct < n, the first ones again.
func chunkProvenance(n, distinct int) string {
	var b strings.Builder
	b.WriteString(`{"resourceType":"Provenance","id":"bulk-1-chunk-1","recorded":"2026-11-30T10:00:00Z","target":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		k := i % distinct
		switch {
		case k%250 == 249: // after more than 16 Patients
			fmt.Fprintf(&b, `{"reference":"urn:uuid:00000000-0000-4000-8000-%012d","type":"Patient"}`, k)
		case k%10 == 0:
			fmt.Fprintf(&b, `{"reference":"Patient/0123456789abcdef.p%05d/_history/1"}`, k)
		case k%250 == 1:
			fmt.Fprintf(&b, `{"reference":"Group/0123456789abcdef.g%05d"}`, k)
		default:
			fmt.Fprintf(&b, `{"reference":"Observation/0123456789abcdef.o%05d/_history/1"}`, k)
		}
	}
	b.WriteString(`],"agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/provenance-participant-type","code":"transmitter"}]},"who":{"display":"Old Payer"}}]}`)
	return b.String()
}

// TestExtractManyEntriesOfOneParameter: a parameter with many entries (a
// chunk's Provenance target, its duplicates among them, and patient taken
// from target or evaluated when a urn:uuid reference needs its type
// element) gets the entries evaluating every parameter gives.
func TestExtractManyEntriesOfOneParameter(t *testing.T) {
	for _, c := range []struct{ n, distinct int }{{5, 5}, {16, 16}, {17, 17}, {40, 17}, {600, 300}, {1000, 1000}} {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(chunkProvenance(c.n, c.distinct)))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		got := reg.Extract("Provenance", m)
		if g, w := sortedEntries(got), sortedEntries(extractAll(reg, "Provenance", m)); !slices.Equal(g, w) {
			t.Fatalf("%d targets (%d distinct): Extract gives %d entries, want %d", c.n, c.distinct, len(g), len(w))
		}
		targets := 0
		for _, e := range got {
			if e.Param == "target" {
				targets++
			}
		}
		if targets != c.distinct {
			t.Errorf("%d targets (%d distinct): %d target entries", c.n, c.distinct, targets)
		}
	}
}

// BenchmarkExtract computes the index entries of an Observation and a
// Patient as the load run creates them, and of an Observation as the bulk
// exchange benchmark ingests it (local id, meta.source, category), and of
// the Provenance of a bulk ingest's chunk of 1,000 resources:
// "all" evaluates every parameter of the type whole, every type's
// branches; "Extract" goes by the type's plan: only the type's branches,
// the parameters whose elements are absent skipped, those with sources
// taken from their sources' entries. cpu-ns/op is the process's CPU time
// per operation.
func BenchmarkExtract(b *testing.B) {
	docs := []struct{ name, typ, doc string }{
		{"Observation", "Observation", `{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"urn:load","code":"c5","display":"Load code 5"}]},"subject":{"reference":"Patient/abc"},"effectiveDateTime":"2015-02-03T10:00:00Z","valueQuantity":{"value":5.5,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`},
		{"Patient", "Patient", `{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:load:member","value":"m5"}],"name":[{"family":"Fam5","given":["Given5"]}],"gender":"male","birthDate":"1945-02-03"}`},
		{"ChunkProvenance", "Provenance", chunkProvenance(1000, 1000)},
		{"IngestedObservation", "Observation", `{"resourceType":"Observation","id":"0123456789abcdef.o00001-0001","meta":{"source":"http://old.example/fhir/Observation/o00001-0001","lastUpdated":"2026-11-30T10:00:00.123456Z"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"subject":{"reference":"Patient/0123456789abcdef.p00001"},"effectiveDateTime":"2025-11-30T01:00:00Z","valueQuantity":{"value":51,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}`},
	}
	for _, d := range docs {
		typ := d.typ
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(d.doc))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			b.Fatal(err)
		}
		b.Run(d.name+"/all", func(b *testing.B) {
			b.ReportAllocs()
			t0 := cpuNow()
			for range b.N {
				extractAll(reg, typ, m)
			}
			b.ReportMetric(float64(cpuNow()-t0)/float64(b.N), "cpu-ns/op")
		})
		b.Run(d.name+"/Extract", func(b *testing.B) {
			b.ReportAllocs()
			t0 := cpuNow()
			for range b.N {
				reg.Extract(typ, m)
			}
			b.ReportMetric(float64(cpuNow()-t0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// TestExtractDerivedParameters: a parameter whose entries are its
// sources' (Observation patient: subject.where(resolve() is Patient);
// combo-code: code | component-code) gets from the sources' entries what
// evaluating it gives, also where only the Reference's type element tells
// what it resolves to and the parameter is evaluated itself.
func TestExtractDerivedParameters(t *testing.T) {
	ref := ReferenceKey("Patient", "p1")
	for _, c := range []struct {
		name, subject string
		patient       bool // whether the patient parameter has an entry
	}{
		{"relative reference to a Patient", `{"reference":"Patient/p1"}`, true},
		{"absolute reference to a Patient", `{"reference":"http://other.example/fhir/Patient/p1"}`, true},
		{"versioned reference to a Patient", `{"reference":"Patient/p1/_history/3"}`, true},
		{"reference to a Group", `{"reference":"Group/g1"}`, false},
		{"urn:uuid typed Patient", `{"reference":"urn:uuid:0f4e3c0a-5b7e-4c3b-9a8e-1d2c3b4a5f60","type":"Patient"}`, true},
		{"urn:uuid typed Group", `{"reference":"urn:uuid:0f4e3c0a-5b7e-4c3b-9a8e-1d2c3b4a5f60","type":"Group"}`, false},
		{"urn:uuid untyped", `{"reference":"urn:uuid:0f4e3c0a-5b7e-4c3b-9a8e-1d2c3b4a5f60"}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var m map[string]any
			doc := `{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},` +
				`"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"system":"http://unitsofmeasure.org","code":"mm[Hg]"}}],` +
				`"subject":` + c.subject + `}`
			dec := json.NewDecoder(strings.NewReader(doc))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil {
				t.Fatal(err)
			}
			got := reg.Extract("Observation", m)
			if g, w := sortedEntries(got), sortedEntries(extractAll(reg, "Observation", m)); !slices.Equal(g, w) {
				t.Fatalf("Extract gives\n  %s\nwant\n  %s", strings.Join(g, "\n  "), strings.Join(w, "\n  "))
			}
			has := func(param, key string) bool {
				return slices.ContainsFunc(got, func(e Entry) bool { return e.Param == param && e.Key == key })
			}
			patient := slices.ContainsFunc(got, func(e Entry) bool { return e.Param == "patient" })
			if patient != c.patient {
				t.Errorf("patient entry: %v, want %v (%v)", patient, c.patient, sortedEntries(got))
			}
			if c.patient && strings.HasPrefix(c.subject, `{"reference":"Patient/`) && !has("patient", ref) {
				t.Errorf("no patient entry %q", ref)
			}
			for _, code := range []string{"85354-9", "8480-6"} {
				if !has("combo-code", pfxCode+code) {
					t.Errorf("no combo-code entry for %s", code)
				}
			}
		})
	}
}

// TestExtractRepeatedItemsSharingAKey: two items of one parameter with the
// same index key and different payloads (a date's end, a quantity's unit)
// give one entry that each of them matches through (FHIR R4
// search.html#search: a parameter matches when any of the resource's
// values does), whatever their order, the items of a parameter with
// sources (combo-value-quantity) too; the same payload twice is kept once.
func TestExtractRepeatedItemsSharingAKey(t *testing.T) {
	obs := func(rest string) string {
		return `{"resourceType":"Observation","id":"a","status":"final","code":{"text":"x"},` + rest + `}`
	}
	q := func(v, unit string) string {
		return `{"code":{"text":"c"},"valueQuantity":{"value":` + v + `,"system":"http://unitsofmeasure.org","code":"` + unit + `"}}`
	}
	var distinct []string // more components than are compared one by one (linearKeys)
	for i := range 20 {
		distinct = append(distinct, q(strconv.Itoa(i+1), "g"))
	}
	many := strings.Join(distinct, ",")
	for _, c := range []struct {
		typ, doc, query string
		want            bool
	}{
		{"Observation", obs(`"component":[` + q("120", "mm[Hg]") + `,` + q("120", "/min") + `]`), "component-value-quantity=120|http://unitsofmeasure.org|/min", true},
		{"Observation", obs(`"component":[` + q("120", "/min") + `,` + q("120", "mm[Hg]") + `]`), "component-value-quantity=120||mm[Hg]", true},
		{"Observation", obs(`"component":[` + q("120", "/min") + `,` + q("120.0", "mm[Hg]") + `]`), "component-value-quantity=120||g", false},
		{"Observation", obs(`"valueQuantity":{"value":120,"code":"mm[Hg]"},"component":[` + q("120", "/min") + `]`), "combo-value-quantity=120||/min", true},
		{"Observation", obs(`"valueQuantity":{"value":120,"code":"mm[Hg]"},"component":[` + q("120", "/min") + `]`), "combo-value-quantity=120||mm[Hg]", true},
		{"Observation", obs(`"valueQuantity":{"value":120,"code":"mm[Hg]"},"component":[` + q("120", "/min") + `]`), "value-quantity=120||/min", false},
		{"Observation", obs(`"effectiveTiming":{"event":["2015","2015-01-01T00:00:00Z"]}`), "date=2015-01-01T00:00:00Z", true},
		{"Observation", obs(`"effectiveTiming":{"event":["2015-01-01T00:00:00Z","2015"]}`), "date=gt2015-06-01", true},
		{"Observation", obs(`"effectiveTiming":{"event":["2015-01-01T00:00:00Z","2015"]}`), "date=ne2015-01-01T00:00:00Z", true},
		{"Observation", obs(`"effectiveTiming":{"event":["2015-01-01T00:00:00Z","2015-01-01T00:00:00.000Z"]}`), "date=ne2015-01-01T00:00:00Z", false},
		{"Observation", obs(`"effectiveTiming":{"event":["2015-01-01T00:00:00Z","2015-01-01T00:00:00.000Z"]}`), "date=2015-01-01T00:00:00Z", true},
		{"Observation", obs(`"effectiveTiming":{"event":["2015"],"repeat":{"boundsPeriod":{"start":"2015-01-01"}}}`), "date=ge2016-06-01", true},
		// More items than are compared one by one (linearKeys).
		{"Observation", obs(`"effectiveTiming":{"event":["2001","2002","2003","2004","2005","2006","2007","2008","2009","2010","2011","2012","2013","2014","2016","2017","2018","2019","2015","2015-01-01T00:00:00Z"]}`), "date=2015-01-01T00:00:00Z", true},
		{"Observation", obs(`"component":[` + many + `,` + q("120", "mm[Hg]") + `,` + q("120", "/min") + `]`), "component-value-quantity=120||/min", true},
		{"Observation", obs(`"valueQuantity":{"value":120,"code":"mm[Hg]"},"component":[` + many + `,` + q("120", "/min") + `]`), "combo-value-quantity=120||/min", true},
		{"Goal", `{"resourceType":"Goal","id":"g","lifecycleStatus":"active","description":{"text":"x"},"subject":{"reference":"Patient/p"},"target":[{"dueDate":"2020"},{"dueDate":"2020-01-01"}]}`, "target-date=2020-01-01", true},
		{"Goal", `{"resourceType":"Goal","id":"g","lifecycleStatus":"active","description":{"text":"x"},"subject":{"reference":"Patient/p"},"target":[{"dueDate":"2020"}]}`, "target-date=2020-01-01", false},
	} {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(c.doc))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		es := reg.Extract(c.typ, m)
		keys := map[string]bool{}
		for _, e := range es {
			if keys[e.Param+"\x00"+e.Key] {
				t.Errorf("%s: two entries of %s %q", c.doc, e.Param, e.Key)
			}
			keys[e.Param+"\x00"+e.Key] = true
		}
		v, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		query, err := reg.Parse(c.typ, v, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := Matches(&query.Clauses[0], es); got != c.want {
			t.Errorf("%s on %s: %v, want %v (entries %v)", c.query, c.doc, got, c.want, sortedEntries(es))
		}
	}
}
