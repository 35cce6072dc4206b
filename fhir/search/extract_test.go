package search

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
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
	seen := map[string]bool{}
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
				if !seen[k] {
					seen[k] = true
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

// BenchmarkExtract computes the index entries of an Observation and a
// Patient as the load run creates them: "all" evaluates every parameter
// of the type whole, every type's branches; "Extract" only the type's
// branches, and skips the parameters whose elements are absent. cpu-ns/op
// is the process's CPU time per operation.
func BenchmarkExtract(b *testing.B) {
	docs := map[string]string{
		"Observation": `{"resourceType":"Observation","id":"o1","status":"final","code":{"coding":[{"system":"urn:load","code":"c5","display":"Load code 5"}]},"subject":{"reference":"Patient/abc"},"effectiveDateTime":"2015-02-03T10:00:00Z","valueQuantity":{"value":5.5,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`,
		"Patient":     `{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:load:member","value":"m5"}],"name":[{"family":"Fam5","given":["Given5"]}],"gender":"male","birthDate":"1945-02-03"}`,
	}
	for _, typ := range []string{"Observation", "Patient"} {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(docs[typ]))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			b.Fatal(err)
		}
		b.Run(typ+"/all", func(b *testing.B) {
			b.ReportAllocs()
			t0 := cpuNow()
			for range b.N {
				extractAll(reg, typ, m)
			}
			b.ReportMetric(float64(cpuNow()-t0)/float64(b.N), "cpu-ns/op")
		})
		b.Run(typ+"/Extract", func(b *testing.B) {
			b.ReportAllocs()
			t0 := cpuNow()
			for range b.N {
				reg.Extract(typ, m)
			}
			b.ReportMetric(float64(cpuNow()-t0)/float64(b.N), "cpu-ns/op")
		})
	}
}
