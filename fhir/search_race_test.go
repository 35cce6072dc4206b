package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"
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
	a, b := serversOnOneDatabase(t)
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

// TestSearchNeverServesAnOlderVersionThanARead: while another client
// updates and deletes resources on another server (on PostgreSQL; the
// same server on bbolt), a search that follows a read of one of them
// serves it at the version read or a later one, never an older one nor
// one deleted before the read (the page's records are read in the
// page's own transaction, begun after the read's ended).
func TestSearchNeverServesAnOlderVersionThanARead(t *testing.T) {
	dsn := storetest.DSN(t)
	a := newServerOn(t, dsn)
	b := a
	if storetest.Backend() == storetest.Postgres {
		b = newServerOn(t, dsn)
	}
	const n = 6
	body := func(i, v int) string {
		return fmt.Sprintf(`{"resourceType":"Observation","id":"r%d","status":"final","code":{"text":"race"},"valueInteger":%d}`, i, v)
	}
	for i := range n {
		b.do(http.MethodPut, fmt.Sprintf("/Observation/r%d", i), body(i, 0)).want(t, http.StatusCreated)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := 1; !stop.Load() && v < 400; v++ {
				i := (v + w*3) % n
				if v%7 == 0 {
					b.do(http.MethodDelete, fmt.Sprintf("/Observation/r%d", i), nil)
				} else {
					b.do(http.MethodPut, fmt.Sprintf("/Observation/r%d", i), body(i, v))
				}
			}
		}()
	}
	defer func() {
		stop.Store(true)
		wg.Wait()
	}()
	checks := 0
	for round := 0; round < 150; round++ {
		i := round % n
		rd := a.do(http.MethodGet, fmt.Sprintf("/Observation/r%d", i), nil)
		readVer, deleted := int64(0), rd.Status == http.StatusGone || rd.Status == http.StatusNotFound
		if rd.Status == http.StatusOK {
			readVer, _ = strconv.ParseInt(rd.JSON["meta"].(map[string]any)["versionId"].(string), 10, 64)
		}
		for _, q := range []string{"/Observation?code=race&_count=3", "/Observation?_id=r0,r1,r2,r3,r4,r5", "/Observation?status=final&_sort=-_id&_count=50"} {
			path := q
			for path != "" {
				pg := a.do(http.MethodGet, path, nil).want(t, http.StatusOK)
				es, _ := pg.JSON["entry"].([]any)
				for _, e := range es {
					r := e.(map[string]any)["resource"].(map[string]any)
					if r["id"] != fmt.Sprintf("r%d", i) {
						continue
					}
					ver, _ := strconv.ParseInt(r["meta"].(map[string]any)["versionId"].(string), 10, 64)
					checks++
					if ver < readVer {
						t.Errorf("%s serves r%d at version %d after a read of version %d", q, i, ver, readVer)
					}
					if deleted && ver < readVer+1 {
						t.Errorf("%s serves r%d at version %d after a read found it deleted", q, i, ver)
					}
				}
				path = link(pg.JSON, "next")
			}
		}
		if t.Failed() {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	if checks < 100 {
		t.Fatalf("only %d checks", checks)
	}
}
