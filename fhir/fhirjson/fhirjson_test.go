package fhirjson

import (
	"bytes"
	"encoding/json"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

// decoded is Members as encoding/json's Decoder sees the object: the
// reference the hand-written splitter must agree with.
func decoded(t testing.TB, data []byte) []Member {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	var out []Member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatal(err)
		}
		out = append(out, Member{tok.(string), raw})
	}
	return out
}

func checkSame(t *testing.T, name string, data []byte) {
	t.Helper()
	got, err := Members(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	want := decoded(t, data)
	if len(got) != len(want) {
		t.Fatalf("%s: %d members, want %d", name, len(got), len(want))
	}
	for i := range want {
		if got[i].Key != want[i].Key || !bytes.Equal(got[i].Raw, want[i].Raw) {
			t.Fatalf("%s: member %d is %q=%s, want %q=%s", name, i, got[i].Key, got[i].Raw, want[i].Key, want[i].Raw)
		}
	}
	obj, err := Object(got)
	if err != nil {
		t.Fatalf("%s: Object: %v", name, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil {
		t.Fatal(err)
	}
	// Keys are written back as encoding/json writes them ("x\u0041" as
	// "xA"); the rest is byte for byte the compacted input.
	if !bytes.Contains(data, []byte(`\u`)) && !bytes.Equal(obj, compact.Bytes()) {
		t.Fatalf("%s: Object(Members) differs from the compacted input", name)
	}
}

// Every HL7 example, as written (indented) and compacted, splits exactly
// as encoding/json decodes it, and Object puts it back together.
func TestMembersAgreesWithEncodingJSON(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(td.Dir, "*", "*.json"))
	if len(files) < 50 {
		t.Fatalf("only %d example files found", len(files))
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, f, raw)
		var c bytes.Buffer
		if err := json.Compact(&c, raw); err != nil {
			t.Fatal(err)
		}
		checkSame(t, f+" (compact)", c.Bytes())
	}
	for _, s := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a" : -1.50e+3 , "b":true,"c":null,"d":false}`,
		`{"k\"ey":"v\\\"}","x\u0041":[{"}":"]"},[],{}],"z":{"a":{"b":[1,2,{"c":"\\"}]}}}`,
		"{\n\t\"a\"\r\n:\t\"b c\"\n}",
	} {
		checkSame(t, s, []byte(s))
	}
}

func TestMembersRefusesWhatIsNotAnObject(t *testing.T) {
	for _, s := range []string{``, `[]`, `"x"`, `{`, `{"a":}`, `{"a":1,}`, `{"a":1}x`, `{'a':1}`, `{"a":01}`, `{"a":"\x"}`} {
		if _, err := Members([]byte(s)); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	if _, err := Object([]Member{{Key: "a", Raw: json.RawMessage("{\"b\": }")}}); err == nil {
		t.Error("Object accepted an invalid member value")
	}
}

// FuzzMembers: on any input, Members either refuses it or agrees with
// encoding/json.
func FuzzMembers(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":[{"b":"c\"}"}],"d":null}`, "{\"a\" :\n true}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := Members(data)
		if err != nil {
			return
		}
		var probe map[string]json.RawMessage
		if json.Unmarshal(data, &probe) != nil {
			t.Fatalf("Members accepted %q, which is not a JSON object", data)
		}
		want := decoded(t, data)
		if len(ms) != len(want) {
			t.Fatalf("%q: %d members, want %d", data, len(ms), len(want))
		}
		for i := range want {
			if ms[i].Key != want[i].Key || !bytes.Equal(ms[i].Raw, want[i].Raw) {
				t.Fatalf("%q: member %d differs", data, i)
			}
		}
		// Object puts the members back as the same JSON, compacted.
		obj, err := Object(ms)
		if err != nil {
			t.Fatalf("%q: Object: %v", data, err)
		}
		var back, orig any
		if err := json.Unmarshal(obj, &back); err != nil {
			t.Fatalf("%q: Object gave %q: %v", data, obj, err)
		}
		_ = json.Unmarshal(data, &orig)
		var compact bytes.Buffer
		_ = json.Compact(&compact, obj)
		if !reflect.DeepEqual(back, orig) || !bytes.Equal(compact.Bytes(), obj) {
			t.Fatalf("%q: Object gave %q", data, obj)
		}
	})
}

// Members and Object against encoding/json's Decoder (the reference) on
// the US Core examples, compacted. Members and Object were a hand-written
// splitter after json.Valid; reading with jsontext halved their cost. CPU
// time per operation, median of 6-8 runs interleaved, 2 cores shared with
// other work (wall-clock ns/op varies 3x there):
//
//	hand-written                 128,500 cpu-ns/op  20.5 kB/op  45 allocs/op
//	jsontext, IsCompact kept      57,500 cpu-ns/op  19.5 kB/op  12 allocs/op
//	jsontext, AppendCompact       52,200 cpu-ns/op  37.7 kB/op  13 allocs/op
//
//	go test -run '^$' -bench MembersObject -benchmem ./fhir/fhirjson/
func BenchmarkDecoderObject(b *testing.B) {
	docs := benchDocs()
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	for i := range b.N {
		ms := decoded(b, docs[i%len(docs)])
		var buf bytes.Buffer
		for _, m := range ms {
			_ = json.Compact(&buf, m.Raw)
		}
	}
}

func BenchmarkMembersObject(b *testing.B) {
	docs := benchDocs()
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	for i := range b.N {
		ms, err := Members(docs[i%len(docs)])
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Object(ms); err != nil {
			b.Fatal(err)
		}
	}
}

func benchDocs() [][]byte {
	files, _ := filepath.Glob(filepath.Join(td.Dir, "us-core", "*.json"))
	var docs [][]byte
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		var c bytes.Buffer
		if json.Compact(&c, raw) == nil {
			docs = append(docs, c.Bytes())
		}
	}
	return docs
}

// AppendCompact gives json.Compact's output: whitespace outside strings
// dropped, string escapes and numbers as written; invalid JSON refused.
func TestAppendCompact(t *testing.T) {
	cases := []string{
		`{"a":"b c","d":[1,2]}`, `"x \" y"`, `{"a\\":" "}`, `{"a": 1}`, "[1,\n2]", `{"a":"\\" ,"b":1 }`,
		`{"a":"\u003c\/p>","b":1.50e+3,"c":-0.0}`, `{"a":1,"a":2}`, " { \"x\" : [ true , null ] } ",
	}
	for _, f := range td.Glob(t, "us-core/*.json") {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, string(raw))
	}
	for _, s := range cases {
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(s)); err != nil {
			t.Fatal(err)
		}
		got, err := AppendCompact([]byte("x"), []byte(s))
		if err != nil || string(got) != "x"+want.String() {
			t.Errorf("AppendCompact(%.60s) = %.60s, %v; want %.60s", s, got, err, want.String())
		}
	}
	for _, bad := range []string{``, `{`, `{"a":}`, `[1,]`, `{"a":1}x`, `01`} {
		if _, err := AppendCompact(nil, []byte(bad)); err == nil {
			t.Errorf("AppendCompact accepted %q", bad)
		}
	}
}

// AppendCompact replaced a hand-written IsCompact check (copy the value
// when it has no whitespace, json.Compact it otherwise): on the US Core
// examples, compacted, as stored versions are, jsontext compacting them
// costs less than the check alone did (the bytes are jsontext's buffer,
// grown for the largest examples). CPU time per operation, median of 6
// interleaved runs on 2 shared cores:
//
//	IsCompact (the check alone)  38,400 cpu-ns/op       0 B/op
//	AppendCompact                25,800 cpu-ns/op  18,200 B/op  0 allocs/op
//
//	go test -run '^$' -bench AppendCompact -benchmem ./fhir/fhirjson/
func BenchmarkAppendCompact(b *testing.B) {
	docs := benchDocs()
	var buf []byte
	b.ResetTimer()
	defer reportCPU(b, cpuTime())
	for i := range b.N {
		var err error
		if buf, err = AppendCompact(buf[:0], docs[i%len(docs)]); err != nil {
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

// TestEditObjectAndArray: what EditObject and EditArray keep is the input's
// bytes (order, number text, escapes); only the commas between what is
// kept are written anew; nothing changed gives the input itself.
func TestEditObjectAndArray(t *testing.T) {
	drop := func(names ...string) func(string, []byte) ([]byte, error) {
		return func(name string, v []byte) ([]byte, error) {
			for _, n := range names {
				if n == name {
					return nil, nil
				}
			}
			return v, nil
		}
	}
	rows := []struct {
		name, in, want string
		drop           []string
	}{
		{"middle member", `{"b":1.50,"a":"\u00e9\/","c":1e2}`, `{"b":1.50,"c":1e2}`, []string{"a"}},
		{"first member", `{"b":1.50,"a":-0.0}`, `{"a":-0.0}`, []string{"b"}},
		{"last member", `{"b":100.00,"a":0.000}`, `{"b":100.00}`, []string{"a"}},
		{"every member", `{"b":1,"a":2}`, `{}`, []string{"a", "b"}},
		{"white space kept inside members", "{ \"z\" : 1.50 ,\n \"a\" : [ 1e2 ] , \"m\":\"x\" }", "{\"z\" : 1.50,\"m\":\"x\"}", []string{"a"}},
		{"duplicate names", `{"a":1,"b":2,"a":3}`, `{"b":2}`, []string{"a"}},
		{"nothing to drop", " {\"a\":1.0} ", " {\"a\":1.0} ", []string{"x"}},
	}
	for _, r := range rows {
		got, err := EditObject([]byte(r.in), drop(r.drop...))
		if err != nil || string(got) != r.want {
			t.Errorf("%s: EditObject(%s) = %s, %v; want %s", r.name, r.in, got, err, r.want)
		}
	}
	got, err := EditArray([]byte(`[1.50, {"a":"\u00e9"} ,-0.0,"x"]`), func(i int, v []byte) ([]byte, error) {
		if i%2 == 1 {
			return nil, nil
		}
		return v, nil
	})
	if err != nil || string(got) != `[1.50,-0.0]` {
		t.Errorf("EditArray = %s, %v; want [1.50,-0.0]", got, err)
	}
	for _, bad := range []string{`[1]`, `{"a":}`, `{"a":1}x`, `"s"`, ``} {
		if _, err := EditObject([]byte(bad), drop()); err == nil {
			t.Errorf("EditObject(%q): no error", bad)
		}
	}
	if _, err := EditArray([]byte(`{}`), func(int, []byte) ([]byte, error) { return nil, nil }); err == nil {
		t.Error("EditArray of an object: no error")
	}
}
