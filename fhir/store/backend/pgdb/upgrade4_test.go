package pgdb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestStoreReadsDatabaseMigratedFromVersion3: a store's resources,
// written as schema version 3 kept them (record and index entries in
// two tables: created, updated, deleted), read back after the migration
// to version 4 as the store wrote them: every bucket byte for byte, and
// each resource, its history and searches alike through the store.
//
// The version 3 database is made from a store's database at the current
// version, its rows copied and p2p_resources split back into the two
// tables version 3 had.
func TestStoreReadsDatabaseMigratedFromVersion3(t *testing.T) {
	ctx := context.Background()
	reg := search.NewRegistry(spec.R4())
	url1 := pgtest.Database(t)
	db1, err := pgdb.Open(ctx, url1)
	if err != nil {
		t.Fatal(err)
	}
	defer db1.Close()
	st1, err := store.Open(db1, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st1.Close()
	put := func(typ, id, body string) {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatal(err)
		}
		err := st1.Write(ctx, func(tx *store.Tx) error {
			_, err := tx.Put(&store.Doc{Type: typ, ID: id, Map: m, JSON: []byte(body)}, store.PutOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var ids [][2]string
	for i := range 12 {
		id := fmt.Sprintf("p%d", i)
		put("Patient", id, fmt.Sprintf(`{"resourceType":"Patient","name":[{"family":"Fam%d","given":["G%d"]}],"gender":"female","birthDate":"19%02d-01-02"}`, i%3, i, 50+i))
		ids = append(ids, [2]string{"Patient", id})
		for j := range 3 {
			oid := fmt.Sprintf("o%d-%d", i, j)
			put("Observation", oid, fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"%d"}]},"subject":{"reference":"Patient/%s"},"valueQuantity":{"value":%d,"unit":"kg"}}`, 1000+j, id, 60+i))
			ids = append(ids, [2]string{"Observation", oid})
		}
	}
	// Updates (versions in history), deletes (a record without entries).
	for i := range 4 {
		put("Patient", fmt.Sprintf("p%d", i), fmt.Sprintf(`{"resourceType":"Patient","name":[{"family":"Renamed%d"}],"gender":"male"}`, i))
	}
	put("Patient", "p0", `{"resourceType":"Patient","name":[{"family":"Third"}]}`)
	err = st1.Write(ctx, func(tx *store.Tx) error {
		for _, k := range [][2]string{{"Patient", "p5"}, {"Patient", "p1"}, {"Observation", "o2-1"}} {
			if _, err := tx.Delete(k[0], k[1], 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The same rows at version 3.
	url2 := pgtest.Database(t)
	p1, err := pgxpool.New(ctx, url1)
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	p2, err := pgxpool.New(ctx, url2)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if _, err := pgdb.MigrateTo(ctx, p2, 3); err != nil {
		t.Fatal(err)
	}
	copyRows := func(query, table string) {
		t.Helper()
		rows, err := p1.Query(ctx, query)
		if err != nil {
			t.Fatal(err)
		}
		var cols []string
		for _, f := range rows.FieldDescriptions() {
			cols = append(cols, f.Name)
		}
		var data [][]any
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				t.Fatal(err)
			}
			data = append(data, v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := p2.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(data)); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
	}
	for _, table := range []string{"p2p_buckets", "p2p_kv", "p2p_search_params", "p2p_index", "p2p_changes", "p2p_versions"} {
		copyRows("SELECT * FROM "+table, table)
	}
	copyRows("SELECT type, id, version, head, rec FROM p2p_resources WHERE head IS NOT NULL", "p2p_resources")
	copyRows("SELECT type, id, entries FROM p2p_resources WHERE entries IS NOT NULL", "p2p_entries")
	var entries3 int
	if err := p2.QueryRow(ctx, `SELECT count(*) FROM p2p_entries`).Scan(&entries3); err != nil || entries3 < 40 {
		t.Fatalf("version 3's p2p_entries holds %d rows (%v)", entries3, err)
	}

	db2, err := pgdb.Open(ctx, url2)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	st2, err := store.Open(db2, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()

	// Every bucket, byte for byte.
	dump := func(db backend.DB) []string {
		var out []string
		err := db.View(ctx, func(tx backend.Tx) error {
			return tx.ForEach(func(name []byte, b backend.Bucket) error {
				out = append(out, fmt.Sprintf("bucket %q sequence %d", name, b.Sequence()))
				return b.ForEach(func(k, v []byte) error {
					out = append(out, fmt.Sprintf("  %q = %x", k, v))
					return nil
				})
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := dump(db1), dump(db2)
	if len(a) < 100 {
		t.Fatalf("the store's database holds only %d keys", len(a))
	}
	for i := range max(len(a), len(b)) {
		if i >= len(a) || i >= len(b) || a[i] != b[i] {
			t.Fatalf("the migrated database differs at line %d:\nwritten  %v\nmigrated %v", i, a[min(i, len(a)-1)], b[min(i, len(b)-1)])
		}
	}

	// Through the store: each resource, its history, searches.
	type read struct {
		v    *store.Version
		err  string
		hist []*store.Version
	}
	readAll := func(st *store.Store) map[[2]string]read {
		out := map[[2]string]read{}
		err := st.View(ctx, func(tx *store.Tx) error {
			for _, k := range ids {
				var r read
				var err error
				if r.v, err = tx.Read(k[0], k[1]); err != nil {
					r.err = err.Error()
				}
				h, err := tx.History(store.HistoryQuery{Type: k[0], ID: k[1]})
				if err != nil {
					return err
				}
				r.hist = h.Versions
				out[k] = r
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	r1, r2 := readAll(st1), readAll(st2)
	for _, k := range ids {
		if !reflect.DeepEqual(r1[k], r2[k]) {
			t.Errorf("%s/%s reads\nwritten  %+v\nmigrated %+v", k[0], k[1], r1[k], r2[k])
		}
	}
	if r := r2[[2]string{"Patient", "p0"}]; r.v == nil || len(r.hist) != 3 || !bytes.Contains(r.v.JSON, []byte("Third")) {
		t.Errorf("Patient/p0 after the migration: %+v", r)
	}
	if r := r2[[2]string{"Patient", "p5"}]; r.err == "" {
		t.Errorf("Patient/p5, deleted, reads %+v", r.v)
	}
	for _, q := range []struct{ typ, query string }{
		{"Patient", "family=Fam1"},
		{"Patient", "gender=male"},
		{"Patient", "family=Renamed"},
		{"Observation", "subject=Patient/p2"},
		{"Observation", "code=http://loinc.org|1001"},
		{"Observation", "code=1000"},
		{"Observation", "subject=Patient/p1&_sort=-_lastUpdated"},
	} {
		vals, _ := url.ParseQuery(q.query)
		sq, err := reg.Parse(q.typ, vals, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got [2][]string
		for i, st := range []*store.Store{st1, st2} {
			if err := st.View(ctx, func(tx *store.Tx) error {
				got[i], err = tx.Search(sq)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		if fmt.Sprint(got[0]) != fmt.Sprint(got[1]) || len(got[1]) == 0 {
			t.Errorf("%s?%s finds %v written, %v migrated", q.typ, q.query, got[0], got[1])
		}
	}
}
