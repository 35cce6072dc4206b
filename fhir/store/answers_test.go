package store

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
)

// TestSearchesAnswerAsBeforeIndexFormat5 writes the same data to a store
// with every parameter in its own index and every id as text in index
// keys (as before index format 4) and to one as now (parameters found
// through others' indexes, lowercase UUIDs in 16 bytes), and checks that
// every search answers the same, paged 20 at a time too: the R4 search
// forms of https://hl7.org/fhir/R4/search.html (reference bare ids with
// one target type or several, :Type, :missing, :not, :text, chaining,
// _sort, _id) and _revinclude and the Patient compartment
// (https://hl7.org/fhir/R4/compartmentdefinition.html), over ids of every
// form (lowercase and uppercase UUIDs, one-character ids, 36-character
// ids that are not UUIDs, 64-character ids) under one value.
func TestSearchesAnswerAsBeforeIndexFormat5(t *testing.T) {
	open := func(name string) *Store {
		db, st := openDSN(t, testDSN(t, name))
		t.Cleanup(func() { st.Close(); db.Close() })
		return st
	}
	old, now := open("old"), open("new")
	old.format = 3

	patients := []string{
		"0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8b", "0190F4C2-7B1A-7C3E-9A2B-3C4D5E6F7A8C",
		"0", "9", "a", "zz", strings.Repeat("p", 64), "0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8Z",
		"ffffffff-ffff-4fff-bfff-ffffffffffff", "00000000-0000-4000-8000-000000000000",
	}
	var docs []*Doc
	for i, p := range patients {
		docs = append(docs, testDoc(t, "Patient", p, fmt.Sprintf(`{"resourceType":"Patient","id":%q,"name":[{"family":"Odd%d","given":["Same"]}],"gender":"other"}`, p, i%3)))
	}
	subjects := func(i int) string {
		p := patients[i%len(patients)]
		switch i % 7 {
		case 0:
			return `{"reference":"Patient/` + p + `"}`
		case 1:
			return `{"reference":"http://example.org/fhir/Patient/` + p + `"}`
		case 2:
			return `{"reference":"Group/` + p + `"}`
		case 3:
			return `{"reference":"urn:uuid:` + p + `","type":"Patient"}`
		case 4:
			return `{"reference":"Patient/` + p + `/_history/3"}`
		case 5:
			return `{"identifier":{"system":"urn:mrn","value":"` + p + `"},"type":"Patient"}`
		}
		return `{"reference":"Patient/` + p + `"}`
	}
	var obsIDs []string
	for i := range 90 {
		var id string
		switch i % 5 {
		case 0:
			id = fmt.Sprintf("%08x-7b1a-4c3e-9a2b-3c4d5e6f7a8b", i*7919)
		case 1:
			id = fmt.Sprintf("%08X-7B1A-4C3E-9A2B-3C4D5E6F7A8B", i*7919)
		case 2:
			id = fmt.Sprint(i)
		case 3:
			id = fmt.Sprintf("%08x-7b1a-4c3e-9a2b-3c4d5e6f7a8g", i)
		default:
			id = fmt.Sprintf("%064d", i)
		}
		obsIDs = append(obsIDs, id)
		code := "shared"
		if i%4 == 0 {
			code = fmt.Sprintf("c%d", i%3)
		}
		docs = append(docs, testDoc(t, "Observation", id, fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"coding":[{"system":"urn:t","code":%q}],"text":"Odd code %d"},"component":[{"code":{"coding":[{"system":"urn:k","code":"shared"}]},"valueQuantity":{"value":%d,"system":"http://unitsofmeasure.org","code":"mg"}}],"subject":%s}`, id, code, i%2, i, subjects(i))))
		docs = append(docs, testDoc(t, "Encounter", id, fmt.Sprintf(`{"resourceType":"Encounter","id":%q,"status":"finished","class":{"code":"AMB"},"subject":%s}`, id, subjects(i+1))))
	}
	writeDocs(t, old, docs)
	writeDocs(t, now, docs)

	type query struct{ typ, q string }
	var queries []query
	add := func(typ string, qs ...string) {
		for _, q := range qs {
			queries = append(queries, query{typ, q})
		}
	}
	for _, p := range patients {
		e := url.QueryEscape(p)
		add("Observation", "patient="+e, "subject="+e, "patient=Patient/"+e, "subject:Patient="+e,
			"patient=Group/"+e, "subject=Group/"+e, "patient=http://example.org/fhir/Patient/"+e,
			"patient="+e+"&combo-code=shared", "combo-code=urn:t|shared&patient="+e)
		add("Encounter", "patient="+e, "subject="+e, "patient=Group/"+e)
		add("Observation", "_id="+e, "patient.family=Odd1", "subject:Patient.family=Odd2")
	}
	add("Observation", "patient:missing=true", "patient:missing=false", "subject:missing=true",
		"combo-code=shared", "combo-code=urn:k|shared", "combo-code=urn:t|shared", "combo-code=|shared",
		"combo-code=shared,c1", "combo-code:not=shared", "combo-code:not=urn:k|shared", "combo-code:text=odd",
		"combo-code:text=odd code 1", "combo-code:missing=true", "combo-value-quantity=ge40",
		"combo-value-quantity=lt20||mg", "combo-value-quantity=45", "combo-code=shared&_sort=combo-code",
		"combo-code=shared&_sort=-_id", "combo-code=shared&_sort=_id", "_sort=-combo-code",
		"code=shared&combo-code=c0", "status=final&combo-code=shared", "patient:missing=true&combo-code=shared",
		"_id="+url.QueryEscape(strings.Join(obsIDs[:9], ",")))
	add("Encounter", "patient:missing=true", "patient:missing=false", "patient.gender=other", "_sort=patient")
	add("Patient", "phonetic=odd1", "phonetic=same", "phonetic:exact=Same", "phonetic:contains=dd", "name=odd1",
		"phonetic:missing=false", "_sort=phonetic", "gender=other&phonetic=Odd0")

	runs := 0
	for _, qq := range queries {
		vals, err := url.ParseQuery(qq.q)
		if err != nil {
			t.Fatal(err)
		}
		q, err := testReg.Parse(qq.typ, vals, search.Options{Base: "http://example.org/fhir"})
		if err != nil {
			t.Fatalf("%s?%s: %v", qq.typ, qq.q, err)
		}
		answer := func(st *Store) (all, paged []string, count int) {
			err := st.View(context.Background(), func(tx *Tx) error {
				var err error
				if all, err = tx.Search(q); err != nil {
					return err
				}
				var after *Position
				for {
					page, last, more, err := tx.SearchPage(q, after, 20, nil)
					if err != nil {
						return err
					}
					paged = append(paged, page...)
					if !more {
						break
					}
					after = last
				}
				count, err = tx.SearchCount(q, nil)
				return err
			})
			if err != nil {
				t.Fatalf("%s?%s: %v", qq.typ, qq.q, err)
			}
			return all, paged, count
		}
		wa, wp, wc := answer(old)
		ga, gp, gc := answer(now)
		if !slices.Equal(wa, ga) {
			t.Errorf("%s?%s: Search %v, before %v", qq.typ, qq.q, ga, wa)
		}
		if !slices.Equal(wp, gp) {
			t.Errorf("%s?%s: paged by 20 %v, before %v", qq.typ, qq.q, gp, wp)
		}
		if wc != gc {
			t.Errorf("%s?%s: count %d, before %d", qq.typ, qq.q, gc, wc)
		}
		if len(wa) > 0 {
			runs++
		}
	}
	if runs < len(queries)/2 {
		t.Errorf("only %d of %d queries have hits", runs, len(queries))
	}
	// _revinclude and the Patient compartment.
	for _, p := range patients {
		answer := func(st *Store) (rev []string, comp map[string][]string) {
			comp = map[string][]string{}
			_ = st.View(context.Background(), func(tx *Tx) error {
				vs, err := tx.RevIncluded("Patient", []string{p}, []search.Include{
					{Type: "Observation", Param: "patient"}, {Type: "Encounter", Param: "patient"}, {Type: "Observation", Param: "*"}})
				if err != nil {
					t.Fatal(err)
				}
				for _, v := range vs {
					rev = append(rev, v.Type+"/"+v.ID)
				}
				for _, typ := range []string{"Observation", "Encounter", "Patient"} {
					comp[typ] = tx.CompartmentIDs(typ, p)
					comp[typ+" patient"] = tx.Referencing(typ, "patient", "Patient", p)
				}
				return nil
			})
			return rev, comp
		}
		wr, wc := answer(old)
		gr, gc := answer(now)
		if !slices.Equal(wr, gr) {
			t.Errorf("Patient/%s _revinclude: %v, before %v", p, gr, wr)
		}
		for k, w := range wc {
			if !slices.Equal(w, gc[k]) {
				t.Errorf("Patient/%s %s: %v, before %v", p, k, gc[k], w)
			}
		}
	}
	t.Logf("%d queries, %d with hits", len(queries), runs)
}
