package batch

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestIngestRoundTripsOnPostgres: on PostgreSQL, where every read of the
// store is a round trip, a job's page costs the target and the source a
// number of round trips that does not grow with the resources on it. A
// source member has n Encounters and n Observations (each naming its
// Encounter); four jobs pull them, for n = 10 and n = 400, and each job
// must cost (nearly) as many round trips at 400 as at 10, where reading
// one resource at a time cost hundreds more:
//
//   - the Observations alone, in one page: each names an Encounter and
//     the member's Patient, not here, so 2n references wait for their
//     targets (at the source's URL), and the job's end accounts for
//     them;
//   - the Encounters, in one page: each arrives with a reference
//     waiting for it, whose Observation is rewritten to name it here;
//   - the member's $everything in pages of n (3 pages, the later ones
//     served from the source's kept result set, each resource checked
//     against the member's compartment): the Patient arrives, and the
//     2n references that waited for it are settled;
//   - the member's $everything again: every resource is unchanged.
//
// "Nearly": see slack. The jobs' results are checked too: fewer round
// trips must not mean other writes.
func TestIngestRoundTripsOnPostgres(t *testing.T) {
	if storetest.Backend() != storetest.Postgres {
		t.Skipf("round trips are PostgreSQL's; run with %s=%s", storetest.Env, storetest.Postgres)
	}
	// The $everything in pages of n: 3 pages (n, n, 1), the later ones
	// served from the source's kept result set.
	requests := []string{"Observation?patient=m&_count=1000", "Encounter?patient=m&_count=1000", "Patient/m/$everything?_count=%d", "Patient/m/$everything?_count=%d"}
	// slack is how many more round trips 400 may cost than 10 (see
	// above): a cursor reads a long range 16, 64, 256, then 1,024 rows
	// at a time (the 800 references waiting for the Patient, the job's
	// 800 references accounted for at its end, the source's index of
	// 800 resources), where one resource at a time costs at least 390
	// more. A search reads its candidates' records a run of 64 at a time
	// (the store's prefetchRun): the source's answer to one of 400
	// costs a round trip for each 64 more.
	const slack = 12
	sourceSlack := []int64{slack + 400/64, slack + 400/64, slack, slack}
	type cost struct{ target, source int64 }
	costs := map[int][]cost{}
	for _, n := range []int{10, 400} {
		idp := oidctest.New(t)
		src := newSource(t, idp)
		loadRoundTripMember(t, src, n)
		tg := newTarget(t, Config{})
		// Leases not renewed, and no look for jobs while the jobs run:
		// only the jobs' round trips are counted.
		tg.leaseDuration = time.Hour
		tg.restart()
		tg.putResource("Patient", "member-1", memberJSON)
		pid := tg.define(src)
		tdb, ok1 := tg.db.(*pgdb.DB)
		sdb, ok2 := src.db.(*pgdb.DB)
		if !ok1 || !ok2 {
			t.Fatalf("the databases are a %T and a %T, not PostgreSQL", tg.db, src.db)
		}
		// The job is watched through another pool, whose round trips
		// are not the target's.
		watch := openWatcher(t, tg.dbPath)
		for i, request := range requests {
			if strings.Contains(request, "%d") {
				request = fmt.Sprintf(request, n)
			}
			tok, err := idp.MintFor([]string{src.URL}, oidctest.Grant{ClientID: clientID, Patient: "m"})
			if err != nil {
				t.Fatal(err)
			}
			t0, s0 := tdb.RoundTrips(), sdb.RoundTrips()
			id := tg.startJob(pid, jobBody(tok.AccessToken, tok.RefreshToken, request, "m", "member-1", ""))
			watch.waitEnd(t, id)
			c := cost{tdb.RoundTrips() - t0, sdb.RoundTrips() - s0}
			costs[n] = append(costs[n], c)
			job := tg.job(pid, id)
			t.Logf("n=%d %s: %d round trips at the target, %d at the source; %d resources, %d versions, %d unchanged, %d relinked, %d left at the source",
				n, request, c.target, c.source, job.Progress.ResourcesTotal, job.Progress.VersionsWritten, job.Progress.ResourcesUnchanged,
				job.Progress.ReferencesRelinked, job.Progress.ReferencesToSource)
			pages := 1
			if i >= 2 {
				pages = 3
			}
			if job.BatchStatus != Completed || job.Progress.PagesFetched != pages {
				t.Fatalf("n=%d %s: %s after %d pages: %s", n, request, job.BatchStatus, job.Progress.PagesFetched, job.FailureReason)
			}
			// What each job did, by n: a change of what is written shows
			// here.
			got := [4]int{job.Progress.ResourcesTotal, job.Progress.VersionsWritten + job.Progress.ResourcesUnchanged,
				job.Progress.ReferencesRelinked, job.Progress.ReferencesToSource}
			var want [4]int // resources, versions and unchanged, relinked, left at the source
			switch i {
			case 0:
				want = [4]int{n, n, 0, 2 * n}
			case 1:
				// Each Encounter names the Patient, not here.
				want = [4]int{n, n, n, n}
			case 2:
				// The Patient arrives on the first page with n-1
				// Encounters, which name it already; the Encounter and
				// the Observations of the later pages are rewritten to
				// name it. Those pages bring them as they now are: each
				// is unchanged unless its page was prepared while the
				// first was written, before the rewrite.
				want = [4]int{2*n + 1, 2*n + 1, n + 1, 0}
				if v := job.Progress.VersionsWritten; v < n || v > 2*n {
					t.Errorf("n=%d %s: %d versions written, want %d to %d", n, request, v, n, 2*n)
				}
			case 3:
				// Again: nothing changed.
				want = [4]int{2*n + 1, 2*n + 1, 0, 0}
				if v := job.Progress.VersionsWritten; v != 0 {
					t.Errorf("n=%d %s: %d versions written, want none", n, request, v)
				}
			}
			if got != want {
				t.Errorf("n=%d %s: resources, versions and unchanged, relinked, left at the source %v, want %v", n, request, got, want)
			}
		}
	}
	for i, request := range requests {
		small, large := costs[10][i], costs[400][i]
		if large.target > small.target+slack {
			t.Errorf("%s: the target made %d round trips for 400 resources of each type, %d for 10", request, large.target, small.target)
		}
		if large.source > small.source+sourceSlack[i] {
			t.Errorf("%s: the source made %d round trips for 400 resources of each type, %d for 10", request, large.source, small.source)
		}
	}
}

// loadRoundTripMember stores at the source the member Patient/m with n
// Encounters and n Observations, Observation/o-i naming Encounter/e-i.
func loadRoundTripMember(t *testing.T, src *sourcePayer, n int) {
	t.Helper()
	entry := func(typ, id string, res map[string]any) map[string]any {
		res["resourceType"], res["id"] = typ, id
		return map[string]any{"resource": res, "request": map[string]any{"method": "PUT", "url": typ + "/" + id}}
	}
	entries := []any{entry("Patient", "m", map[string]any{"name": []any{map[string]any{"family": "Roundtrip"}}})}
	for i := range n {
		entries = append(entries,
			entry("Encounter", fmt.Sprintf("e-%d", i), map[string]any{"status": "finished",
				"class":   map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
				"subject": map[string]any{"reference": "Patient/m"}}),
			entry("Observation", fmt.Sprintf("o-%d", i), map[string]any{"status": "final",
				"code":      map[string]any{"text": fmt.Sprintf("reading %d", i)},
				"subject":   map[string]any{"reference": "Patient/m"},
				"encounter": map[string]any{"reference": fmt.Sprintf("Encounter/e-%d", i)}}))
	}
	bundle := map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries}
	var out map[string]any
	if st := src.do(http.MethodPost, "", sourceAdmin, mustJSON(t, bundle), &out); st != http.StatusOK {
		t.Fatalf("load: %d %v", st, out)
	}
}

// watcher reads jobs through a store of its own on the target's
// database.
type watcher struct{ st *store.Store }

func openWatcher(t testing.TB, dsn string) *watcher {
	t.Helper()
	db := storetest.OpenDB(t, dsn)
	st, err := store.Open(db, testRegistry(), testLogger(t))
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	return &watcher{st: st}
}

// waitEnd waits until job id has ended. The deadline only bounds a
// broken run.
func (w *watcher) waitEnd(t testing.TB, id int64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var rec *record
		if err := w.st.View(context.Background(), func(tx *store.Tx) (err error) {
			rec, err = getJob(tx, id)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if !rec.Status.Active() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %d: gave up waiting for its end; last seen %s", id, rec.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
