package store_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// TestHistoryStampOrder: FHIR R4 http.html#history lists versions newest
// first by lastUpdated, and _since keeps every version updated at or after
// it. A version's lastUpdated is stamped before its write transaction, so
// two writes can commit in the other order than their stamps: within one
// process (two requests), and across processes on one database, where
// one process cannot know what the other stamped. Whatever the order, a
// resource's versions are stamped strictly later than the one before, the
// change log (type and system history) newest first is in lastUpdated
// order, and _since at the stamp of a version keeps it.
func TestHistoryStampOrder(t *testing.T) {
	type step struct {
		proc    int    // which process writes
		id      string // Patient id
		prepare int    // the order in which the versions are prepared
	}
	rows := []struct {
		name  string
		procs int
		steps []step // in commit order
	}{
		{"one process: an update prepared before the previous update", 1,
			[]step{{0, "p", 0}, {0, "p", 2}, {0, "p", 1}}},
		{"two processes: creates committed out of stamp order", 2,
			[]step{{0, "late", 1}, {1, "early", 0}}},
		{"two processes: an update prepared before the other process's update", 2,
			[]step{{0, "p", 0}, {0, "p", 2}, {1, "p", 1}}},
		{"two processes: updates taking turns, each prepared before the other's", 2,
			[]step{{0, "p", 0}, {1, "p", 2}, {0, "p", 1}, {1, "p", 4}, {0, "p", 3}}},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			if row.procs > 1 && storetest.Backend() != storetest.Postgres {
				t.Skip("several processes share a PostgreSQL database only")
			}
			ctx := context.Background()
			dsn := storetest.DSN(t)
			stores := make([]*store.Store, row.procs)
			for i := range stores {
				db := storetest.OpenDB(t, dsn)
				st, err := store.Open(db, reg, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close(); db.Close() })
				stores[i] = st
			}
			// Prepare in the prepare order, a few microseconds apart, on
			// the process that writes.
			docs := make([]*store.Doc, len(row.steps))
			for p := range row.steps {
				for i, s := range row.steps {
					if s.prepare == p {
						docs[i] = doc(t, "Patient", s.id, fmt.Sprintf(`{"resourceType":"Patient","gender":"other","birthDate":"19%02d-01-01"}`, i))
						stores[s.proc].Prepare(docs[i])
						time.Sleep(time.Millisecond)
					}
				}
			}
			written := map[string][]*store.Version{}
			for i, s := range row.steps {
				written[s.id] = append(written[s.id], put(t, stores[s.proc], docs[i]))
			}
			for _, st := range stores {
				if err := st.View(ctx, func(tx *store.Tx) error {
					for id, vs := range written {
						p, err := tx.History(store.HistoryQuery{Type: "Patient", ID: id, Count: 50})
						if err != nil {
							return err
						}
						if len(p.Versions) != len(vs) {
							t.Fatalf("Patient/%s: %d versions in history, %d written", id, len(p.Versions), len(vs))
						}
						for i := 1; i < len(p.Versions); i++ {
							newer, older := p.Versions[i-1], p.Versions[i]
							if !newer.LastUpdated.After(older.LastUpdated) {
								t.Errorf("Patient/%s: version %d stamped %s, not after version %d's %s",
									id, newer.VersionID, newer.LastUpdated.Format(time.RFC3339Nano), older.VersionID, older.LastUpdated.Format(time.RFC3339Nano))
							}
						}
					}
					// The current version is found by its own stamp, not
					// the one it was prepared with (_lastUpdated is
					// indexed again when a version is stamped again).
					for id, vs := range written {
						cur := vs[len(vs)-1]
						at := cur.LastUpdated.Format(time.RFC3339Nano)
						for _, c := range []struct {
							prefix string
							want   bool
						}{{"ge", true}, {"le", true}, {"gt", false}, {"lt", false}} {
							q, err := reg.Parse("Patient", url.Values{"_lastUpdated": {c.prefix + at}, "_id": {id}}, search.Options{})
							if err != nil {
								return err
							}
							ids, err := tx.Search(q)
							if err != nil {
								return err
							}
							if (len(ids) == 1) != c.want {
								t.Errorf("Patient?_lastUpdated=%s%s&_id=%s: %v, want found %v", c.prefix, at, id, ids, c.want)
							}
						}
					}
					for _, typ := range []string{"", "Patient"} {
						p, err := tx.History(store.HistoryQuery{Type: typ, Count: 50})
						if err != nil {
							return err
						}
						for i := 1; i < len(p.Versions); i++ {
							if p.Versions[i].LastUpdated.After(p.Versions[i-1].LastUpdated) {
								t.Errorf("history of %q: %s/%d committed before %s/%d but stamped later", typ,
									p.Versions[i].ID, p.Versions[i].VersionID, p.Versions[i-1].ID, p.Versions[i-1].VersionID)
							}
						}
						// _since each version's stamp keeps it.
						for _, vs := range written {
							for _, v := range vs {
								for _, id := range []string{"", v.ID} {
									if typ == "" && id != "" {
										continue
									}
									q := store.HistoryQuery{Type: typ, ID: id, Since: v.LastUpdated, Count: 50}
									sp, err := tx.History(q)
									if err != nil {
										return err
									}
									found := false
									for _, got := range sp.Versions {
										found = found || got.ID == v.ID && got.VersionID == v.VersionID
									}
									if !found {
										t.Errorf("history of %q %q _since %s misses %s/%d", typ, id, v.LastUpdated.Format(time.RFC3339Nano), v.ID, v.VersionID)
									}
								}
							}
						}
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
