package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// TestSearchPagesAreOneMomentOfTheirResources: while one client updates
// every Observation in one transaction after another (each generation
// flips their status and sets valueInteger to the generation, and
// deletes or brings back a third of them), another pages through
// searches on another server on the same database (on PostgreSQL; the
// same server on bbolt): a page is the answer at one moment (FHIR R4
// http.html#transaction: a transaction's changes are seen whole), so its
// matches all show one generation, match the search's status, and none
// is deleted; a transaction's own search (a GET entry after its writes)
// sees the transaction's writes.
func TestSearchPagesAreOneMomentOfTheirResources(t *testing.T) {
	key, err := secrets.NewCipher(strings.Repeat("a7", 32))
	if err != nil {
		t.Fatal(err)
	}
	dsn := storetest.DSN(t)
	a := newServerOn(t, dsn, func(c *fhir.Config) { c.Cursors = key })
	b := a
	if storetest.Backend() == storetest.Postgres {
		b = newServerOn(t, dsn, func(c *fhir.Config) { c.Cursors = key })
	}
	const n = 24
	obs := func(id string, gen int) string {
		status := "final"
		if gen%2 == 1 {
			status = "amended"
		}
		return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":%q,"code":{"text":"x"},"valueInteger":%d}`, id, status, gen)
	}
	var ids []string
	for i := range n {
		id := fmt.Sprintf("o%02d", i)
		if i%2 == 1 {
			id = fmt.Sprintf("0000%04x-0000-4000-8000-%012x", i, i) // kept in 16 bytes
		}
		ids = append(ids, id)
		b.do(http.MethodPut, "/Observation/"+id, obs(id, 0)).want(t, http.StatusCreated)
	}
	// gen writes generation g: every Observation updated, those of the
	// third g%3 deleted when g is odd.
	gen := func(g int, extra string) *result {
		var es []string
		for i, id := range ids {
			if g%2 == 1 && i%3 == g%3 {
				es = append(es, fmt.Sprintf(`{"request":{"method":"DELETE","url":"Observation/%s"}}`, id))
				continue
			}
			es = append(es, fmt.Sprintf(`{"resource":%s,"request":{"method":"PUT","url":"Observation/%s"}}`, obs(id, g), id))
		}
		if extra != "" {
			es = append(es, extra)
		}
		return b.do(http.MethodPost, "/", `{"resourceType":"Bundle","type":"transaction","entry":[`+strings.Join(es, ",")+`]}`).want(t, http.StatusOK)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for g := 1; g <= 40 && !stop.Load(); g++ {
			gen(g, "")
		}
		stop.Store(true)
	}()
	pages := 0
	for !stop.Load() {
		for _, q := range []string{"Observation?_count=5", "Observation?status=final&_count=5", "Observation?code=x&_count=7&_sort=-_id", "Observation?status=amended&_count=4&_total=accurate"} {
			path := "/" + q
			for path != "" {
				pg := a.do(http.MethodGet, path, nil)
				if pg.Status != http.StatusOK {
					t.Fatalf("%s: %d %s", path, pg.Status, pg.Body)
				}
				pages++
				seen := map[string]bool{}
				gens := map[json.Number]bool{}
				es, _ := pg.JSON["entry"].([]any)
				for _, e := range es {
					r := e.(map[string]any)["resource"].(map[string]any)
					id := r["id"].(string)
					if seen[id] {
						t.Errorf("%s: %s twice on one page", q, id)
					}
					seen[id] = true
					v := r["valueInteger"].(json.Number)
					gens[v] = true
					g, _ := v.Int64()
					want := "final"
					if g%2 == 1 {
						want = "amended"
						// Deleted at generation g.
						for i, x := range ids {
							if x == id && i%3 == int(g%3) {
								t.Errorf("%s: %s shows generation %d, which deleted it", q, id, g)
							}
						}
					}
					if r["status"] != want {
						t.Errorf("%s: %s shows generation %d with status %v", q, id, g, r["status"])
					}
					if strings.Contains(q, "status=") && !strings.Contains(q, "status="+want) {
						t.Errorf("%s: %s at generation %d (status %s) does not match", q, id, g, want)
					}
				}
				if len(gens) > 1 {
					t.Errorf("%s: one page shows generations %v", q, gens)
				}
				path = link(pg.JSON, "next")
				if path != "" && a != b {
					path = strings.Replace(path, a.URL, b.URL, 1)
				}
				if t.Failed() {
					stop.Store(true)
					break
				}
			}
		}
	}
	wg.Wait()
	if pages < 20 {
		t.Fatalf("only %d pages read while the writes ran", pages)
	}
	// A transaction's search sees its own writes: generation 42 makes
	// every Observation final, its GET entry searches them.
	r := gen(42, `{"request":{"method":"GET","url":"Observation?status=final&_count=100"}}`)
	es := r.JSON["entry"].([]any)
	got := es[len(es)-1].(map[string]any)["resource"].(map[string]any)
	if total := len(bundleIDs(got)); total != n {
		t.Errorf("the transaction's search finds %d Observations, want %d: %s", total, n, r.Body)
	}
}
