package main

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestJobListsPaging: the paged job list (GET .../batch_job) and the bulk
// job list (GET .../bulk_job) of one source payer, whose job ids
// interleave, page alike: newest first, each list only its own kind;
// before=<id> lists the jobs older than that id, whatever kind holds it
// (before=1, or the oldest job's id, lists none; an id past the newest
// lists all); count bounds a page and next links walk every job once;
// before and count that are no job id or no size from 1 to 100 are
// refused naming the parameter.
func TestJobListsPaging(t *testing.T) {
	t.Parallel()
	fp := newFaultPair(t, 1)
	// The source refuses everything: every job fails at its first request.
	fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/token") {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error":"invalid_client"}`)
			return true
		}
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"forbidden"}]}`)
		return true
	}
	member := fp.list[0].(map[string]any)["patientId"].(string)
	base := fmt.Sprintf("/api/oidc_servers/%d", fp.pid)
	paged := func() int64 {
		var out map[string]any
		job := map[string]any{
			"sourcePayer": map[string]any{"oidcToken": "a", "oidcRefreshToken": "b",
				"fhirBundleRequest": "Patient/x/$everything", "patientId": "x"},
			"targetPayer": map[string]any{"patientId": member, "organizationId": "OLDPAYER"},
		}
		if st := fp.target.call("POST", base+"/batch_job", testBackoffice, job, &out); st != 202 {
			t.Fatalf("start a paged job: %d %v", st, out)
		}
		id := int64(out["batchJobId"].(float64))
		waitBulk(t, fp.target.payer, fmt.Sprintf("%s/batch_job/%d", base, id), time.Minute)
		return id
	}
	bulkJob := func() int64 {
		path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
		st := waitBulk(t, fp.target.payer, path, time.Minute)
		return int64(st["bulkJobId"].(float64))
	}
	var pagedIDs, bulkIDs []int64 // oldest first
	for range 3 {
		pagedIDs = append(pagedIDs, paged())
		bulkIDs = append(bulkIDs, bulkJob())
	}
	newest := max(pagedIDs[2], bulkIDs[2])

	type list struct {
		path, items, id string
		ids             []int64 // oldest first
	}
	lists := []list{
		{base + "/batch_job", "batchJobs", "batchJobId", pagedIDs},
		{base + "/bulk_job", "bulkJobs", "bulkJobId", bulkIDs},
	}
	get := func(t *testing.T, l list, query string) (int, []int64, string, map[string]any) {
		var out map[string]any
		st := fp.target.call("GET", l.path+query, testBackoffice, nil, &out)
		var ids []int64
		if items, ok := out[l.items].([]any); ok {
			for _, it := range items {
				ids = append(ids, int64(it.(map[string]any)[l.id].(float64)))
			}
		}
		next, _ := out["next"].(string)
		return st, ids, next, out
	}
	// want returns the list's ids older than before (0: all), newest
	// first, at most n.
	want := func(l list, before int64, n int) []int64 {
		var out []int64
		for i := len(l.ids) - 1; i >= 0 && len(out) < n; i-- {
			if before == 0 || l.ids[i] < before {
				out = append(out, l.ids[i])
			}
		}
		return out
	}
	for _, l := range lists {
		other := lists[0].ids
		if l.items == "batchJobs" {
			other = lists[1].ids
		}
		rows := []struct {
			name     string
			query    string
			status   int
			before   int64
			n        int
			badField string
		}{
			{"no parameters", "", 200, 0, 100, ""},
			{"count=100", "?count=100", 200, 0, 100, ""},
			{"count=2", "?count=2", 200, 0, 2, ""},
			{"before its newest job", fmt.Sprintf("?before=%d", l.ids[2]), 200, l.ids[2], 100, ""},
			{"before a job of the other kind", fmt.Sprintf("?before=%d", other[1]), 200, other[1], 100, ""},
			{"before an id past the newest", fmt.Sprintf("?before=%d", newest+100), 200, newest + 100, 100, ""},
			{"before its oldest job", fmt.Sprintf("?before=%d", l.ids[0]), 200, l.ids[0], 100, ""},
			{"before=1", "?before=1", 200, 1, 100, ""},
			{"before and count", fmt.Sprintf("?before=%d&count=1", l.ids[2]), 200, l.ids[2], 1, ""},
			{"before=0", "?before=0", 400, 0, 0, "before"},
			{"before=-1", "?before=-1", 400, 0, 0, "before"},
			{"before=x", "?before=x", 400, 0, 0, "before"},
			{"count=0", "?count=0", 400, 0, 0, "count"},
			{"count=101", "?count=101", 400, 0, 0, "count"},
			{"count=x", "?count=x", 400, 0, 0, "count"},
		}
		for _, row := range rows {
			t.Run(l.items+"/"+row.name, func(t *testing.T) {
				st, ids, next, out := get(t, l, row.query)
				if st != row.status {
					t.Fatalf("GET %s%s: %d %v, want %d", l.path, row.query, st, out, row.status)
				}
				if row.status != 200 {
					fields, _ := out["error"].(map[string]any)["fields"].(map[string]any)
					if _, ok := fields[row.badField]; !ok || len(fields) != 1 {
						t.Errorf("GET %s%s: fields %v, want only %s", l.path, row.query, fields, row.badField)
					}
					return
				}
				w := want(l, row.before, row.n)
				if !slices.Equal(ids, w) {
					t.Errorf("GET %s%s: ids %v, want %v", l.path, row.query, ids, w)
				}
				if more := len(want(l, row.before, 100)) > len(w); more != (next != "") {
					t.Errorf("GET %s%s: next %q with %d of %d jobs listed", l.path, row.query, next, len(w), len(want(l, row.before, 100)))
				}
			})
		}
		t.Run(l.items+"/next links walk every job once", func(t *testing.T) {
			var all []int64
			query := "?count=1"
			for range 10 {
				st, ids, next, out := get(t, l, query)
				if st != 200 {
					t.Fatalf("GET %s: %d %v", query, st, out)
				}
				all = append(all, ids...)
				if next == "" {
					break
				}
				_, query, _ = strings.Cut(next, "?")
				query = "?" + query
			}
			if w := want(l, 0, 100); !slices.Equal(all, w) {
				t.Errorf("walked %v, want %v", all, w)
			}
		})
	}
}
