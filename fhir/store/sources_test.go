package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/testdata"
)

// exampleDocs returns the resources of the example data (Synthea patient
// bundles, PDex and US Core examples, Bundles' entries too) that have a
// type and an id, once each, and a few whose references resolve() types
// in each way: by a relative or an absolute URL, by the type element only,
// or not at all.
func exampleDocs(t *testing.T) []*Doc {
	var files []string
	for _, pattern := range []string{"synthea/*.json", "pdex/*.json", "us-core/*.json"} {
		files = append(files, testdata.Glob(t, pattern)...)
	}
	seen := map[string]bool{}
	var out []*Doc
	var add func(m map[string]any)
	add = func(m map[string]any) {
		typ, _ := m["resourceType"].(string)
		id, _ := m["id"].(string)
		if entries, ok := m["entry"].([]any); ok && typ == "Bundle" {
			for _, e := range entries {
				em, _ := e.(map[string]any)
				if res, ok := em["resource"].(map[string]any); ok {
					add(res)
				}
			}
		}
		if typ == "" || id == "" || seen[typ+"/"+id] || !testReg.Model().IsResource(typ) {
			return
		}
		seen[typ+"/"+id] = true
		raw, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var dm map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&dm); err != nil {
			t.Fatal(err)
		}
		out = append(out, &Doc{Type: typ, ID: id, Map: dm, JSON: raw})
	}
	decode := func(raw []byte) {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&m); err == nil {
			add(m)
		}
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		decode(raw)
	}
	for i, subject := range []string{
		`{"reference":"urn:uuid:5b1c7e0a-0000-4000-8000-000000000001","type":"Patient"}`,
		`{"reference":"urn:uuid:5b1c7e0a-0000-4000-8000-000000000002"}`,
		`{"reference":"urn:uuid:5b1c7e0a-0000-4000-8000-000000000003","type":"Group"}`,
		`{"reference":"http://example.org/fhir/Patient/far"}`,
		`{"reference":"Patient/near/_history/2"}`,
		`{"reference":"Group/g1"}`,
	} {
		decode([]byte(fmt.Sprintf(`{"resourceType":"Observation","id":"typed-%d","status":"final","code":{"coding":[{"system":"urn:t","code":"c%d"}]},"component":[{"code":{"coding":[{"system":"urn:t","code":"k%d"}]},"valueQuantity":{"value":%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}],"subject":%s}`, i, i, i%2, i*10, subject)))
		decode([]byte(fmt.Sprintf(`{"resourceType":"Encounter","id":"typed-%d","status":"finished","class":{"code":"AMB"},"subject":%s}`, i, subject)))
	}
	return out
}

// sourceQueries returns, for each parameter of the data's types that is
// found through other parameters' indexes (see search.Source), search
// values that its sources' entries in docs give (so that each query has
// hits in a source's index, whether or not in the parameter's), and
// :missing both ways.
func sourceQueries(t *testing.T, tx *Tx, docs []*Doc) map[string][]url.Values {
	types := map[string]bool{}
	for _, d := range docs {
		types[d.Type] = true
	}
	out := map[string][]url.Values{}
	for typ := range types {
		for _, p := range testReg.Params(typ) {
			if p.Stored() {
				continue
			}
			vals := map[string]bool{}
			for _, d := range docs {
				if d.Type != typ {
					continue
				}
				for _, e := range tx.EntriesOf(typ, d.ID) {
					if !slices.ContainsFunc(p.Sources, func(s search.Source) bool { return s.Code == e.Param }) {
						continue
					}
					if v := queryValue(p, e); v != "" {
						vals[v] = true
					}
				}
			}
			if len(vals) == 0 {
				continue
			}
			for v := range vals {
				out[typ] = append(out[typ], url.Values{p.Code: {v}})
			}
			out[typ] = append(out[typ], url.Values{p.Code + ":missing": {"true"}}, url.Values{p.Code + ":missing": {"false"}})
		}
	}
	return out
}

// queryValue is a search value of parameter p that finds the entry e of
// one of its sources; "" for an entry of a kind not searched here.
func queryValue(p *search.Param, e search.Entry) string {
	switch p.Type {
	case "reference":
		ref, _ := search.ReferenceFromKey(e.Key)
		return ref
	case "token":
		if v, ok := strings.CutPrefix(e.Key, "s\x01"); ok {
			return v
		}
		if v, ok := strings.CutPrefix(e.Key, "c\x01"); ok {
			return v
		}
	case "string", "uri":
		if v, ok := strings.CutPrefix(e.Key, "e\x01"); ok {
			return v
		}
		if v, ok := strings.CutPrefix(e.Key, "u\x01"); ok {
			return v
		}
	case "quantity":
		return "ge0"
	}
	return ""
}

// TestUnstoredParametersAnswerAsTheirOwnIndex writes the example data
// with every parameter in its own index (index format 3), records its
// search results for every parameter found through other parameters'
// indexes (Observation patient through subject, combo-code through code
// and component-code, and the like for every type), then has Open upgrade
// it in small batches, stopped part way once (as by a crash) and taken up
// again, and checks that every search gives the same resources as before
// and that the indexes of those parameters are gone.
func TestUnstoredParametersAnswerAsTheirOwnIndex(t *testing.T) {
	reg := testReg
	path := testDSN(t, "old")
	docs := exampleDocs(t)
	db, st := openDSN(t, path)
	st.format = 3
	writeDocs(t, st, docs)
	if err := st.Write(context.Background(), func(tx *Tx) error {
		return tx.btx.Bucket(metaBucket).Put(indexFormatKey, []byte("3"))
	}); err != nil {
		t.Fatal(err)
	}
	type result struct {
		typ   string
		query url.Values
		ids   []string
	}
	run := func(st *Store, typ string, query url.Values) []string {
		var ids, paged []string
		err := st.View(context.Background(), func(tx *Tx) error {
			q, err := reg.Parse(typ, query, search.Options{})
			if err != nil {
				return err
			}
			if ids, err = tx.Search(q); err != nil {
				return err
			}
			paged, _, _, err = tx.SearchPage(q, nil, 100000, nil)
			return err
		})
		if err != nil {
			t.Fatalf("%s?%s: %v", typ, query.Encode(), err)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, paged) {
			t.Errorf("%s?%s: Search gives %v, SearchPage %v", typ, query.Encode(), ids, paged)
		}
		return ids
	}
	var want []result
	covered := map[string]bool{}
	_ = st.View(context.Background(), func(tx *Tx) error {
		for typ, qs := range sourceQueries(t, tx, docs) {
			for _, q := range qs {
				want = append(want, result{typ, q, nil})
			}
		}
		return nil
	})
	hits := 0
	for i := range want {
		want[i].ids = run(st, want[i].typ, want[i].query)
		if len(want[i].ids) > 0 {
			hits++
		}
		for k := range want[i].query {
			covered[want[i].typ+" "+strings.TrimSuffix(k, ":missing")] = true
		}
	}
	for _, pair := range []string{"Observation patient", "Observation combo-code", "Observation combo-value-quantity", "Encounter patient", "Condition patient", "Procedure patient", "Patient phonetic", "Coverage patient"} {
		if !covered[pair] {
			t.Errorf("the example data gave no query on %s", pair)
		}
	}
	if hits < len(want)/2 {
		t.Fatalf("only %d of %d queries have hits: the test proves little", hits, len(want))
	}
	st.Close()
	db.Close()

	// Open again, upgrading a few keys per transaction; stop part way.
	defer func(n int) { upgradeBatch = n }(upgradeBatch)
	upgradeBatch = 50
	db, err := OpenDB(context.Background(), path, DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := &Store{db: db, reg: reg, log: st.log}
	for range 3 {
		if _, more, err := part.removeUnstored(); err != nil || !more {
			t.Fatalf("removeUnstored: more %v, %v (the data should need more than 3 batches)", more, err)
		}
	}
	db.Close()
	// Again, finishing format 4 and stopping part way through format 5.
	if db, err = OpenDB(context.Background(), path, DBOptions{}); err != nil {
		t.Fatal(err)
	}
	part = &Store{db: db, reg: reg, log: st.log}
	if err := part.upgradeTo4(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if n, done, err := part.rewriteIDs(); err != nil || done || n == 0 {
			t.Fatalf("rewriteIDs: %d keys, done %v, %v (the data should need more than 3 batches)", n, done, err)
		}
	}
	db.Close()

	db, st = openDSN(t, path)
	defer db.Close()
	defer st.Close()
	for _, w := range want {
		if got := run(st, w.typ, w.query); !slices.Equal(got, w.ids) {
			t.Errorf("%s?%s after the upgrade: %v, want %v", w.typ, w.query.Encode(), got, w.ids)
		}
	}
	_ = st.View(context.Background(), func(tx *Tx) error {
		if f := tx.btx.Bucket(metaBucket).Get(indexFormatKey); string(f) != indexFormat {
			t.Errorf("index format %q, want %q", f, indexFormat)
		}
		return tx.btx.ForEach(func(name []byte, b backend.Bucket) error {
			if rest, ok := strings.CutPrefix(string(name), "I:"); ok {
				typ, param, _ := strings.Cut(rest, ":")
				if k, _ := b.Cursor().First(); !st.stored(typ, param) && k != nil {
					t.Errorf("the index %s still has keys", name)
				}
				c := b.Cursor()
				for k, _ := c.First(); k != nil; k, _ = c.Next() {
					if _, ok := uuidBytes(string(k[bytes.IndexByte(k, 0)+1:])); ok {
						t.Errorf("the index %s still has the key %q with its id as text", name, k)
						break
					}
				}
			}
			return nil
		})
	})
	t.Logf("%d queries over %d resources, %d with hits", len(want), len(docs), hits)
}

var testReg = search.NewRegistry(spec.R4())
