package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/internal/pgtest"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// raced is one answer of a request sent by race.
type raced struct {
	status int
	body   map[string]any
	etag   string
}

// race sends n copies of a request through each of servers at once and
// returns the answers.
func race(t *testing.T, servers []*testServer, n int, method, path, body string, headers ...string) []raced {
	t.Helper()
	var (
		mu  sync.Mutex
		out []raced
		wg  sync.WaitGroup
	)
	start := make(chan struct{})
	for _, ts := range servers {
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/fhir+json")
				for i := 0; i+1 < len(headers); i += 2 {
					req.Header.Set(headers[i], headers[i+1])
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				var m map[string]any
				json.NewDecoder(resp.Body).Decode(&m)
				mu.Lock()
				out = append(out, raced{resp.StatusCode, m, resp.Header.Get("ETag")})
				mu.Unlock()
			}()
		}
	}
	close(start)
	wg.Wait()
	return out
}

func statuses(rs []raced) map[int]int {
	m := map[int]int{}
	for _, r := range rs {
		m[r.status]++
	}
	return m
}

// TestWritesRacingAcrossProcesses: two servers, each with its own store
// and connection pool (two processes' worth), on one PostgreSQL database
// race the writes whose outcome FHIR R4 fixes whatever the interleaving:
//   - update with If-Match (http.html#concurrency): of requests naming
//     the same version exactly one succeeds, the others answer 412;
//   - conditional update with no match (http.html#cond-update): one
//     create, the others update that resource, never a second one;
//   - a transaction whose entry is a conditional create (ifNoneExist,
//     http.html#trules): one resource, whichever process;
//   - plain updates of one resource: every version id distinct and
//     consecutive, and both processes read the same history, newest first;
//   - conditional delete (http.html#cdelete): the resource is gone from
//     both, with one deleted version.
func TestWritesRacingAcrossProcesses(t *testing.T) {
	dsn := pgtest.Database(t)
	a, b := newServerOn(t, dsn), newServerOn(t, dsn)
	servers := []*testServer{a, b}
	const n = 5

	t.Run("If-Match: exactly one wins, the others 412", func(t *testing.T) {
		for round := range 5 {
			id := fmt.Sprintf("im%d", round)
			a.do(http.MethodPut, "/Patient/"+id, `{"resourceType":"Patient","id":"`+id+`"}`).want(t, http.StatusCreated)
			got := race(t, servers, n, http.MethodPut, "/Patient/"+id,
				`{"resourceType":"Patient","id":"`+id+`","active":true}`, "If-Match", `W/"1"`)
			if s := statuses(got); s[http.StatusOK] != 1 || s[http.StatusPreconditionFailed] != 2*n-1 {
				t.Errorf("round %d: answers %v, want one 200 and %d 412", round, s, 2*n-1)
			}
			h := b.do(http.MethodGet, "/Patient/"+id+"/_history", nil).want(t, http.StatusOK)
			if tot := fmt.Sprint(h.JSON["total"]); tot != "2" {
				t.Errorf("round %d: %s versions, want 2", round, tot)
			}
		}
	})

	t.Run("conditional update with no match creates once", func(t *testing.T) {
		for round := range 5 {
			v := fmt.Sprintf("cu%d", round)
			got := race(t, servers, n, http.MethodPut, "/Patient?identifier=urn:cu|"+v,
				`{"resourceType":"Patient","identifier":[{"system":"urn:cu","value":"`+v+`"}]}`)
			s := statuses(got)
			ids := map[any]bool{}
			for _, r := range got {
				ids[r.body["id"]] = true
			}
			if s[http.StatusCreated] != 1 || s[http.StatusOK] != 2*n-1 || len(ids) != 1 {
				t.Errorf("round %d: answers %v ids %v, want one 201 and the rest 200 on one resource", round, s, ids)
			}
			r := a.do(http.MethodGet, "/Patient?identifier=urn:cu|"+v, nil).want(t, http.StatusOK)
			if tot := fmt.Sprint(r.JSON["total"]); tot != "1" {
				t.Errorf("round %d: %s Patients, want 1", round, tot)
			}
		}
	})

	t.Run("transaction with ifNoneExist creates once", func(t *testing.T) {
		for round := range 5 {
			v := fmt.Sprintf("tx%d", round)
			bundle := `{"resourceType":"Bundle","type":"transaction","entry":[{"fullUrl":"urn:uuid:6c9f8a40-0000-4000-8000-00000000000` + fmt.Sprint(round) + `",
				"resource":{"resourceType":"Patient","identifier":[{"system":"urn:tx","value":"` + v + `"}]},
				"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=urn:tx|` + v + `"}}]}`
			got := race(t, servers, n, http.MethodPost, "", bundle)
			if s := statuses(got); s[http.StatusOK] != 2*n {
				t.Errorf("round %d: answers %v, want all 200", round, s)
			}
			r := b.do(http.MethodGet, "/Patient?identifier=urn:tx|"+v, nil).want(t, http.StatusOK)
			if tot := fmt.Sprint(r.JSON["total"]); tot != "1" {
				t.Errorf("round %d: %s Patients, want 1", round, tot)
			}
		}
	})

	t.Run("plain updates: versions distinct, one history from both", func(t *testing.T) {
		a.do(http.MethodPut, "/Patient/pu", `{"resourceType":"Patient","id":"pu"}`).want(t, http.StatusCreated)
		got := race(t, servers, n, http.MethodPut, "/Patient/pu", `{"resourceType":"Patient","id":"pu","active":true}`)
		versions := map[string]bool{}
		for _, r := range got {
			if r.status != http.StatusOK {
				t.Errorf("update answered %d", r.status)
				continue
			}
			versions[r.etag] = true
		}
		if len(versions) != 2*n {
			t.Errorf("%d updates acknowledged %d distinct versions %v", 2*n, len(versions), versions)
		}
		var hist [2][]string
		for i, ts := range servers {
			h := ts.do(http.MethodGet, "/Patient/pu/_history?_count=100", nil).want(t, http.StatusOK)
			for _, e := range h.JSON["entry"].([]any) {
				m := e.(map[string]any)["resource"].(map[string]any)["meta"].(map[string]any)
				hist[i] = append(hist[i], fmt.Sprint(m["versionId"]))
			}
		}
		want := []string{}
		for v := 2*n + 1; v >= 1; v-- {
			want = append(want, fmt.Sprint(v))
		}
		if !slices.Equal(hist[0], want) || !slices.Equal(hist[1], want) {
			t.Errorf("histories %v and %v, want %v on both", hist[0], hist[1], want)
		}
	})

	t.Run("conditional delete: gone, one deleted version", func(t *testing.T) {
		a.do(http.MethodPut, "/Patient/cd", `{"resourceType":"Patient","id":"cd","identifier":[{"system":"urn:cd","value":"1"}]}`).want(t, http.StatusCreated)
		got := race(t, servers, n, http.MethodDelete, "/Patient?identifier=urn:cd|1", "")
		for _, r := range got {
			if r.status != http.StatusOK && r.status != http.StatusNoContent {
				t.Errorf("conditional delete answered %d", r.status)
			}
		}
		for _, ts := range servers {
			ts.do(http.MethodGet, "/Patient/cd", nil).want(t, http.StatusGone)
		}
		h := b.do(http.MethodGet, "/Patient/cd/_history", nil).want(t, http.StatusOK)
		if tot := fmt.Sprint(h.JSON["total"]); tot != "2" {
			t.Errorf("%s versions after racing deletes, want 2 (the create and one delete)", tot)
		}
	})
}

// TestPagingLinksAnsweredByAnotherStore: the paging links of one process
// answered by a second with its own store and connection pool on the
// same database and the same key (nothing shared in memory): search,
// _history at each level and $everything serve every entry once.
func TestPagingLinksAnsweredByAnotherStore(t *testing.T) {
	dsn := pgtest.Database(t)
	key, err := secrets.NewCipher(strings.Repeat("cd", 32))
	if err != nil {
		t.Fatal(err)
	}
	a := newServerOn(t, dsn, func(c *fhir.Config) { c.Cursors = key })
	a.fhir.EnableEverything(fhir.EverythingOptions{})
	b := newServerOn(t, dsn, func(c *fhir.Config) { c.Cursors = key })
	b.fhir.EnableEverything(fhir.EverythingOptions{})
	a.do(http.MethodPut, "/Patient/p1", `{"resourceType":"Patient","id":"p1"}`).want(t, http.StatusCreated)
	for i := range 13 {
		id := fmt.Sprintf("o%02d", i)
		a.do(http.MethodPut, "/Observation/"+id, `{"resourceType":"Observation","id":"`+id+`","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`).
			want(t, http.StatusCreated)
	}
	for _, c := range []struct {
		name, first string
		want        int
	}{
		{"search", "/Observation?subject=Patient/p1&_count=4", 13},
		{"type _history", "/Observation/_history?_count=4", 13},
		{"system _history", "/_history?_count=4", 14},
		{"$everything", "/Patient/p1/$everything?_count=4", 14},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := a.do(http.MethodGet, c.first, nil).want(t, http.StatusOK)
			got := bundleIDs(r.JSON)
			for i := 0; link(r.JSON, "next") != ""; i++ {
				ts := []*testServer{b, a}[i%2]
				r = ts.do(http.MethodGet, strings.Replace(link(r.JSON, "next"), a.URL, ts.URL, 1), nil).want(t, http.StatusOK)
				got = append(got, bundleIDs(r.JSON)...)
			}
			seen := map[string]bool{}
			for _, id := range got {
				if seen[id] {
					t.Errorf("%s served twice", id)
				}
				seen[id] = true
			}
			if len(seen) != c.want {
				t.Errorf("served %d entries %v, want %d", len(seen), got, c.want)
			}
		})
	}
	// A next link altered (a byte of its key changed, cut short, or its
	// key replaced) is answered by the other process with a 4xx
	// OperationOutcome, never a page nor a 5xx.
	for _, first := range []string{"/Observation?subject=Patient/p1&_count=4", "/Patient/p1/$everything?_count=4"} {
		next := link(a.do(http.MethodGet, first, nil).want(t, http.StatusOK).JSON, "next")
		if next == "" {
			t.Fatalf("%s: no next link", first)
		}
		i := strings.LastIndex(next, "=")
		key := next[i+1:]
		if j := strings.IndexByte(key, '&'); j >= 0 {
			key = key[:j]
		}
		flip := []byte(key)
		flip[len(flip)/2] ^= 1
		for _, bad := range []string{
			strings.Replace(next, key, string(flip), 1),
			strings.Replace(next, key, key[:len(key)/2], 1),
			strings.Replace(next, key, "k00000000000000000000000000000000000000", 1),
		} {
			r := b.do(http.MethodGet, strings.Replace(bad, a.URL, b.URL, 1), nil)
			if r.Status < 400 || r.Status >= 500 || r.JSON["resourceType"] != "OperationOutcome" {
				t.Errorf("tampered link %s: %d %.200s; want a 4xx OperationOutcome", bad, r.Status, r.Body)
			}
		}
	}
}
