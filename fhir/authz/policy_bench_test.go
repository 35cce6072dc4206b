package authz_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// A store of 1,000 members, each with 10 Observations and one Provenance
// targeting them: what the policy costs a member's search against an
// unrestricted one.
const benchMembers, benchObs = 1000, 10

func benchStore(b *testing.B) (*store.Store, *search.Registry) {
	b.Helper()
	reg := search.NewRegistry(spec.R4())
	db, err := store.OpenDB(context.Background(), storetest.DSN(b), store.DBOptions{})
	if err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(db, reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close(); db.Close() })
	put := func(tx *store.Tx, raw string) {
		d := json.NewDecoder(bytes.NewReader([]byte(raw)))
		d.UseNumber()
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			b.Fatal(err)
		}
		doc := &store.Doc{Type: m["resourceType"].(string), ID: m["id"].(string), Map: m, JSON: []byte(raw)}
		if _, err := tx.Put(doc, store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	for p := range benchMembers {
		err := st.Write(context.Background(), func(tx *store.Tx) error {
			put(tx, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d","birthDate":"1970-01-01"}`, p))
			var targets []string
			for o := range benchObs {
				put(tx, fmt.Sprintf(`{"resourceType":"Observation","id":"o%d-%d","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"c%d"}]},"subject":{"reference":"Patient/p%d"}}`, p, o, o, p))
				targets = append(targets, fmt.Sprintf(`{"reference":"Observation/o%d-%d"}`, p, o))
			}
			put(tx, fmt.Sprintf(`{"resourceType":"Provenance","id":"pr%d","target":[%s],"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Organization/x"}}]}`, p, join(targets)))
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return st, reg
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}

// BenchmarkSearchAsMember: one search of typ with params as an
// unrestricted request and as member p7 (Confine, Search, Filter).
func BenchmarkSearchAsMember(b *testing.B) {
	st, reg := benchStore(b)
	pol := authz.New(reg, "http://x/fhir")
	member := &authz.Principal{Patient: "p7"}
	for _, c := range []struct{ typ, query string }{
		{"Observation", "code=c3"},
		{"Observation", "subject:Patient.birthdate=1970-01-01"},
		{"Provenance", ""},
	} {
		for _, who := range []struct {
			name string
			p    *authz.Principal
			want int
		}{{"unrestricted", nil, -1}, {"member", member, 1}} {
			b.Run(fmt.Sprintf("%s?%s/%s", c.typ, c.query, who.name), func(b *testing.B) {
				vals, _ := url.ParseQuery(c.query)
				for b.Loop() {
					err := st.View(context.Background(), func(tx *store.Tx) error {
						q, err := reg.Parse(c.typ, vals, search.Options{Base: "http://x/fhir"})
						if err != nil {
							return err
						}
						pol.Confine(tx, who.p, q)
						ids, err := tx.Search(q)
						if err != nil {
							return err
						}
						ids, err = pol.Filter(tx, who.p, c.typ, ids)
						if who.p != nil && c.typ == "Provenance" && len(ids) != who.want {
							return fmt.Errorf("member found %d Provenance", len(ids))
						}
						return err
					})
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
