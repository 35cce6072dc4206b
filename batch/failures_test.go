package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store/storetest"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// offset is the position of the $everything page a request asks for: 0
// for the first, -1 for anything that is not a page of $everything.
func offset(r *http.Request) int {
	if !strings.Contains(r.URL.Path, "/$everything") {
		return -1
	}
	c := r.URL.Query().Get("_cursor")
	if c == "" {
		return 0
	}
	_, n, _ := strings.Cut(c, ".")
	i, err := strconv.Atoi(n)
	if err != nil {
		return -1
	}
	return i
}

// taskOf returns the target's Task task-1, decoded.
func (x *exchange) task(t *testing.T) map[string]any {
	t.Helper()
	v, err := x.tg.read("Task", "task-1")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := decodeMap(v.JSON)
	return m
}

// checkIntact checks that what a failed job wrote is whole: every page it
// reports has its Provenance and every Provenance target is stored, and
// no reference is left naming a resource that is not here.
func (x *exchange) checkIntact(t *testing.T, job Job, minPages int) {
	t.Helper()
	if job.Progress.PagesFetched < minPages || len(job.Progress.ProvenanceIDs) != job.Progress.PagesFetched {
		t.Errorf("%d pages written with %d Provenance; want at least %d pages, one Provenance each",
			job.Progress.PagesFetched, len(job.Progress.ProvenanceIDs), minPages)
	}
	for _, pid := range job.Progress.ProvenanceIDs {
		v, err := x.tg.read("Provenance", pid)
		if err != nil {
			t.Fatalf("Provenance %s: %v", pid, err)
		}
		m, _ := decodeMap(v.JSON)
		for _, tg := range m["target"].([]any) {
			ref := tg.(map[string]any)["reference"].(string)
			typ, id, _ := strings.Cut(ref, "/")
			id, _, _ = strings.Cut(id, "/")
			if _, err := x.tg.read(typ, id); err != nil {
				t.Errorf("Provenance %s names %s, which is not stored", pid, ref)
			}
		}
	}
	for ref, m := range x.tg.ingested(x.src.URL) {
		walkRefs(m, func(r string) (string, bool) {
			if strings.Contains(r, ":") || strings.HasPrefix(r, "#") {
				return r, false
			}
			typ, id, _ := strings.Cut(r, "/")
			if _, err := x.tg.read(typ, id); err != nil {
				t.Errorf("%s names %s, which is not here (a dangling reference)", ref, r)
			}
			return r, false
		})
	}
}

// TestMemberTokens covers the member's tokens: an expired access token is
// refreshed (with the definition's custom parameters), a token the source
// refuses gets one refresh, and a refresh token the source rejects fails
// the job with a reason saying so.
func TestMemberTokens(t *testing.T) {
	t.Run("expired access token is refreshed", func(t *testing.T) {
		x := newExchange(t, Config{})
		access, refresh := x.token(t, oidctest.Grant{AccessTokenLifetime: -time.Minute})
		id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(100), x.patient, "member-1", ""))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Completed || job.Progress.TokenRefreshes != 1 {
			t.Fatalf("job %s after %d refreshes: %s", job.BatchStatus, job.Progress.TokenRefreshes, job.FailureReason)
		}
		reqs := x.idp.RefreshRequests()
		if len(reqs) != 1 || reqs[0].Get("memberId") != "m-1" || reqs[0].Get("refresh_token") != refresh {
			t.Errorf("refresh requests %v", reqs)
		}
	})
	t.Run("a refused access token gets one refresh", func(t *testing.T) {
		x := newExchange(t, Config{})
		_, refresh := x.token(t, oidctest.Grant{})
		var refused atomic.Int64
		x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Header.Get("Authorization") == "Bearer not-a-token-the-source-knows" {
				refused.Add(1)
			}
			return false
		})
		id := x.tg.startJob(x.pid, jobBody("not-a-token-the-source-knows", refresh, x.everything(100), x.patient, "member-1", ""))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Completed || job.Progress.TokenRefreshes != 1 || refused.Load() != 1 {
			t.Fatalf("job %s, %d refreshes, %d refused requests: %s", job.BatchStatus, job.Progress.TokenRefreshes, refused.Load(), job.FailureReason)
		}
	})
	t.Run("refused again after the refresh", func(t *testing.T) {
		x := newExchange(t, Config{})
		_, refresh := x.token(t, oidctest.Grant{})
		x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			http.Error(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login"}]}`, http.StatusUnauthorized)
			return true
		})
		id := x.tg.startJob(x.pid, jobBody("", refresh, x.everything(100), x.patient, "member-1", "task-1"))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, "(401) without saying why") ||
			!strings.Contains(job.FailureReason, "freshly refreshed token was refused too") || job.FinalFailure {
			t.Fatalf("job %s (final %v): %q", job.BatchStatus, job.FinalFailure, job.FailureReason)
		}
		if task := x.task(t); task["status"] != "in-progress" {
			t.Errorf("a failure the payers can fix ended the member's request: Task %v", task["status"])
		}
	})
	t.Run("refresh rejected", func(t *testing.T) {
		x := newExchange(t, Config{})
		access, refresh := x.token(t, oidctest.Grant{AccessTokenLifetime: -time.Minute})
		x.idp.RevokeRefreshToken(refresh)
		id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(100), x.patient, "member-1", "task-1"))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, "rejected the member's refresh token") ||
			!strings.Contains(job.FailureReason, "authorize again") {
			t.Fatalf("job %s: %q", job.BatchStatus, job.FailureReason)
		}
		task := x.task(t)
		if task["status"] != "failed" || !strings.Contains(fmt.Sprint(task["statusReason"]), "refresh token") || !job.FinalFailure {
			t.Errorf("Task %v, reason %v, final %v", task["status"], task["statusReason"], job.FinalFailure)
		}
		if job.Progress.PagesFetched != 0 || job.Progress.ResourcesTotal != 0 {
			t.Errorf("a job without access wrote %d pages", job.Progress.PagesFetched)
		}
	})
}

// TestRefreshedTokensAreKeptEncrypted checks that a refreshed (rotated)
// refresh token is stored with the job, sealed, and the plain tokens
// never reach the database file.
func TestRefreshedTokensAreKeptEncrypted(t *testing.T) {
	x := newExchange(t, Config{})
	access, refresh := x.token(t, oidctest.Grant{AccessTokenLifetime: -time.Minute})
	release := make(chan struct{})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if offset(r) == 40 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		return false
	})
	id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", ""))
	x.tg.wait(x.pid, id, "the first page", func(j Job) bool { return j.Progress.PagesFetched >= 2 })
	var rec *record
	if err := x.tg.st.View(context.Background(), func(tx *store.Tx) (err error) {
		rec, err = getJob(tx, id)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tok, err := x.tg.runner.memberToken(rec)
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken == "" || tok.RefreshToken == refresh || tok.AccessToken == access {
		t.Errorf("the job keeps the tokens it was given, not the refreshed ones")
	}
	close(release)
	x.tg.waitEnd(x.pid, id)
	x.tg.close()
	raw := storetest.Dump(t, x.tg.dbPath)
	for name, secret := range map[string]string{"access": access, "refresh": refresh, "refreshed access": tok.AccessToken, "rotated refresh": tok.RefreshToken} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the %s token is in the database file in clear", name)
		}
	}
	x.tg.open()
	if err := x.tg.st.View(context.Background(), func(tx *store.Tx) (err error) {
		rec, err = getJob(tx, id)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(rec.SealedAccess)+len(rec.SealedRefresh) != 0 {
		t.Error("an ended job still holds the member's tokens")
	}
}

// TestSourceErrors covers a source payer failing mid-job: bounded retries
// with backoff (and Retry-After), then FAILED with the pages before intact.
func TestSourceErrors(t *testing.T) {
	t.Run("500 in the middle", func(t *testing.T) {
		x := newExchange(t, Config{MaxRetries: 2, RetryBase: time.Millisecond})
		var failures atomic.Int64
		x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if offset(r) == 80 {
				failures.Add(1)
				w.Header().Set("Content-Type", "application/fhir+json")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"database unavailable"}]}`))
				return true
			}
			return false
		})
		access, refresh := x.token(t, oidctest.Grant{})
		id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, "500") ||
			!strings.Contains(job.FailureReason, "database unavailable") || !strings.Contains(job.FailureReason, "gave up after 2 retries") {
			t.Fatalf("job %s: %q", job.BatchStatus, job.FailureReason)
		}
		if job.Progress.Retries != 2 || failures.Load() != 3 {
			t.Errorf("%d retries recorded, %d failed requests; want 2 and 3", job.Progress.Retries, failures.Load())
		}
		// The member read and the pages at offsets 0 and 40 are in.
		x.checkIntact(t, job, 3)
		if job.Progress.ResourcesTotal != 81 {
			t.Errorf("%d resources written before the failure, want 81", job.Progress.ResourcesTotal)
		}
		// The source's outage is not the member's doing: the request stays
		// open, with the attempt in its history.
		if task := x.task(t); task["status"] != "in-progress" || !strings.Contains(fmt.Sprint(task["output"]), fmt.Sprintf("batch job %d (", id)) ||
			!strings.Contains(fmt.Sprint(task["output"]), "FAILED") {
			t.Errorf("Task %v, output %v", task["status"], task["output"])
		}
	})
	t.Run("503 twice with Retry-After, then the page", func(t *testing.T) {
		x := newExchange(t, Config{MaxRetries: 3, RetryBase: time.Hour})
		var mu sync.Mutex
		var times []time.Time
		x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if offset(r) != 40 {
				return false
			}
			mu.Lock()
			defer mu.Unlock()
			times = append(times, time.Now())
			if len(times) <= 2 {
				// An hour's backoff would stall the test: the source's
				// Retry-After is what the job must follow.
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			}
			return false
		})
		access, refresh := x.token(t, oidctest.Grant{})
		id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", ""))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Completed || job.Progress.Retries != 2 {
			t.Fatalf("job %s after %d retries: %s", job.BatchStatus, job.Progress.Retries, job.FailureReason)
		}
		mu.Lock()
		defer mu.Unlock()
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < time.Second {
				t.Errorf("retry %d came %s after the previous request, before the Retry-After of 1s", i, gap)
			}
		}
	})
	t.Run("unreachable source", func(t *testing.T) {
		x := newExchange(t, Config{MaxRetries: 1, RetryBase: time.Millisecond})
		dead := httptest.NewServer(http.NotFoundHandler())
		dead.Close()
		if _, err := x.tg.repo.Update(context.Background(), x.pid, func(s *oidcservers.Server) error {
			s.FHIREndpoint = dead.URL + "/fhir"
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		access, refresh := x.token(t, oidctest.Grant{})
		id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", ""))
		job := x.tg.waitEnd(x.pid, id)
		if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, "could not be reached") {
			t.Fatalf("job %s: %q", job.BatchStatus, job.FailureReason)
		}
	})
}

// TestNextLinkToAnotherOrigin: a source that sends the job elsewhere,
// with a next link or a redirect, fails the job; nothing is asked of the
// other host, and the pages before are kept.
func TestNextLinkToAnotherOrigin(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write([]byte(`{"resourceType":"Bundle","type":"searchset"}`))
	}))
	defer other.Close()
	for _, tc := range []struct {
		name, want string
		fault      func(x *exchange) func(w http.ResponseWriter, r *http.Request) bool
	}{
		{"next link", "leads to another origin", func(x *exchange) func(w http.ResponseWriter, r *http.Request) bool {
			return func(w http.ResponseWriter, r *http.Request) bool {
				if offset(r) != 0 {
					return false
				}
				rec := httptest.NewRecorder()
				x.src.fhir.Handler().ServeHTTP(rec, r)
				body := strings.ReplaceAll(rec.Body.String(), x.src.URL, other.URL+"/fhir")
				w.Header().Set("Content-Type", "application/fhir+json")
				_, _ = w.Write([]byte(body))
				return true
			}
		}},
		{"redirect", "redirected", func(x *exchange) func(w http.ResponseWriter, r *http.Request) bool {
			return func(w http.ResponseWriter, r *http.Request) bool {
				if offset(r) != 40 {
					return false
				}
				http.Redirect(w, r, other.URL+r.URL.RequestURI(), http.StatusFound)
				return true
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newExchange(t, Config{MaxRetries: 1, RetryBase: time.Millisecond})
			x.src.setFault(tc.fault(x))
			access, refresh := x.token(t, oidctest.Grant{})
			id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", ""))
			job := x.tg.waitEnd(x.pid, id)
			if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, tc.want) {
				t.Fatalf("job %s: %q", job.BatchStatus, job.FailureReason)
			}
			if n := elsewhere.Load(); n != 0 {
				t.Errorf("the other host got %d requests", n)
			}
			x.checkIntact(t, job, 2)
		})
	}
}

// TestMalformedPages: a page that is not a usable Bundle fails the job with
// a reason naming the problem; nothing of that page is written.
func TestMalformedPages(t *testing.T) {
	obs := `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}`
	for _, tc := range []struct{ name, body, want string }{
		{"not JSON", `{"resourceType":"Bundle","type":"searchset","entry":[`, "not valid JSON"},
		{"HTML", `<html>oops</html>`, "not valid JSON"},
		{"no resourceType", `{"type":"searchset"}`, "without a resourceType"},
		{"a transaction", `{"resourceType":"Bundle","type":"transaction","entry":[]}`, `"transaction" Bundle`},
		{"a resource, not a Bundle", obs, "where a Bundle of results was expected"},
		{"an OperationOutcome", `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"search failed"}]}`, "search failed"},
		{"an invalid resource", `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":` + obs + `},{"resource":{"resourceType":"Observation","id":"o2","status":"bogus","code":{"text":"x"}}}]}`, "entry 1 (Observation/o2) is not valid FHIR R4"},
		{"an unknown type", `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Gizmo","id":"g"}}]}`, `"Gizmo", not a FHIR R4 resource`},
		{"an entry without identity", `{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"}}}]}`, "neither an id nor a fullUrl"},
		{"an entry without resource", `{"resourceType":"Bundle","type":"searchset","entry":[{"fullUrl":"x"}]}`, "has no resource"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newExchange(t, Config{MDMIdentifierSystem: "-"})
			x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if offset(r) != 40 {
					return false
				}
				w.Header().Set("Content-Type", "application/fhir+json")
				_, _ = w.Write([]byte(tc.body))
				return true
			})
			access, refresh := x.token(t, oidctest.Grant{})
			id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", ""))
			job := x.tg.waitEnd(x.pid, id)
			if job.BatchStatus != Failed || !strings.Contains(job.FailureReason, tc.want) {
				t.Fatalf("job %s: %q, want it to say %q", job.BatchStatus, job.FailureReason, tc.want)
			}
			if job.Progress.PagesFetched != 1 || job.Progress.ResourcesTotal != 40 {
				t.Errorf("%d pages, %d resources written; want the first page only", job.Progress.PagesFetched, job.Progress.ResourcesTotal)
			}
			x.checkIntact(t, job, 1)
		})
	}
}

// TestRestartResumes kills the target between pages (workers stopped, store
// and database closed, as a crash after the last commit) and starts it
// again on the same file: the job resumes from its checkpoint and nothing
// is written twice.
func TestRestartResumes(t *testing.T) {
	x := newExchange(t, Config{VersionedReferences: true})
	request := x.everything(40)
	want := x.src.everything(request)
	release := make(chan struct{})
	var blocked atomic.Int64
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if offset(r) == 80 {
			select {
			case <-release:
			default:
				blocked.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
					return true // the target went away mid-request
				}
			}
		}
		return false
	})
	access, refresh := x.token(t, oidctest.Grant{AccessTokenLifetime: -time.Minute})
	id := x.tg.startJob(x.pid, jobBody(access, refresh, request, x.patient, "member-1", "task-1"))
	before := x.tg.wait(x.pid, id, "two pages and the third in flight", func(j Job) bool {
		return j.Progress.PagesFetched == 3 && blocked.Load() > 0
	})
	x.tg.restart()
	close(release)
	job := x.tg.waitEnd(x.pid, id)
	if job.BatchStatus != Completed {
		t.Fatalf("job %s: %s", job.BatchStatus, job.FailureReason)
	}
	if job.Progress.PagesFetched != 1+(len(want)+39)/40 || len(job.Progress.ProvenanceIDs) != job.Progress.PagesFetched {
		t.Errorf("%d pages and %d Provenance after the restart", job.Progress.PagesFetched, len(job.Progress.ProvenanceIDs))
	}
	if !strings.HasPrefix(strings.Join(job.Progress.ProvenanceIDs, ","), strings.Join(before.Progress.ProvenanceIDs, ",")) {
		t.Errorf("Provenance before the restart %v, after %v", before.Progress.ProvenanceIDs, job.Progress.ProvenanceIDs)
	}
	got := x.tg.ingested(x.src.URL)
	if len(got) != len(want) {
		t.Errorf("%d resources after the restart, the source has %d", len(got), len(want))
	}
	for ref, m := range got {
		if v := m["meta"].(map[string]any)["versionId"]; v != "1" {
			t.Errorf("%s is at version %v: written more than once", ref, v)
		}
	}
	if job.Progress.VersionsWritten != len(want) {
		t.Errorf("%d versions written for %d resources", job.Progress.VersionsWritten, len(want))
	}
	var provenance int
	x.tg.st.View(context.Background(), func(tx *store.Tx) error {
		provenance = len(tx.AllIDs("Provenance"))
		return nil
	})
	if provenance != job.Progress.PagesFetched {
		t.Errorf("%d Provenance resources for %d pages", provenance, job.Progress.PagesFetched)
	}
	x.checkIntact(t, job, 1)
}

// TestRerunUpdatesTheSameResources runs the same exchange twice: the second
// job finds everything stored as it comes and writes no new version, and
// no resource is duplicated.
func TestRerunUpdatesTheSameResources(t *testing.T) {
	x := newExchange(t, Config{})
	access, refresh := x.token(t, oidctest.Grant{})
	first := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(50), x.patient, "member-1", "")))
	n := len(x.tg.ingested(x.src.URL))
	member, _ := x.tg.read("Patient", "member-1")
	access, refresh = x.token(t, oidctest.Grant{})
	second := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(50), x.patient, "member-1", "")))
	if first.BatchStatus != Completed || second.BatchStatus != Completed {
		t.Fatalf("jobs %s, %s", first.BatchStatus, second.BatchStatus)
	}
	if second.Progress.VersionsWritten != 0 || second.Progress.ResourcesUnchanged != second.Progress.ResourcesTotal {
		t.Errorf("the second job wrote %d versions; %d of %d unchanged", second.Progress.VersionsWritten, second.Progress.ResourcesUnchanged, second.Progress.ResourcesTotal)
	}
	if m := len(x.tg.ingested(x.src.URL)); m != n {
		t.Errorf("%d resources after the second job, %d after the first", m, n)
	}
	if again, _ := x.tg.read("Patient", "member-1"); again.VersionID != member.VersionID {
		t.Errorf("the member was written again: version %d, was %d", again.VersionID, member.VersionID)
	}
	// The second job still proves where its pages came from.
	if len(second.Progress.ProvenanceIDs) != second.Progress.PagesFetched {
		t.Errorf("%d Provenance for %d pages", len(second.Progress.ProvenanceIDs), second.Progress.PagesFetched)
	}
}

// TestSearchReferencesWaitAtTheSource: a search brings resources whose
// references name resources not pulled; they point at the source until a
// later job brings those, when they are made local.
func TestSearchReferencesWaitAtTheSource(t *testing.T) {
	x := newExchange(t, Config{MDMIdentifierSystem: "-"})
	access, refresh := x.token(t, oidctest.Grant{})
	eobs := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh,
		"ExplanationOfBenefit?patient="+x.patient+"&_count=7", x.patient, "member-1", "")))
	if eobs.BatchStatus != Completed || eobs.Progress.PagesFetched < 2 {
		t.Fatalf("EOB job %s, %d pages: %s", eobs.BatchStatus, eobs.Progress.PagesFetched, eobs.FailureReason)
	}
	if eobs.Progress.ReferencesToSource == 0 {
		t.Errorf("no reference left at the source after pulling EOBs alone")
	}
	encounterRefs := func() (local, remote int) {
		for _, m := range x.tg.ingested(x.src.URL) {
			if m["resourceType"] != "ExplanationOfBenefit" {
				continue
			}
			walkRefs(m, func(r string) (string, bool) {
				switch {
				case strings.HasPrefix(r, x.src.URL+"/Encounter/"):
					remote++
				case strings.HasPrefix(r, "Encounter/"):
					local++
				}
				return r, false
			})
		}
		return
	}
	if local, remote := encounterRefs(); local != 0 || remote == 0 {
		t.Fatalf("after the EOBs: %d local, %d source references to Encounters", local, remote)
	}
	x.checkIntact(t, eobs, 2)
	access, refresh = x.token(t, oidctest.Grant{})
	encs := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh,
		"Encounter?patient="+x.patient, x.patient, "member-1", "")))
	if encs.BatchStatus != Completed {
		t.Fatalf("Encounter job %s: %s", encs.BatchStatus, encs.FailureReason)
	}
	if local, remote := encounterRefs(); local == 0 || remote != 0 {
		t.Errorf("after the Encounters: %d local, %d source references to Encounters", local, remote)
	}
	if encs.Progress.ReferencesRelinked == 0 {
		t.Error("no reference relinked")
	}
	x.checkIntact(t, encs, 1)
}

// TestStop stops a job waiting on its source: STOPPING, then STOPPED, the
// Task left open (a stop is the payer's, not the member's, decision) with
// the stopped attempt in its output, and a second stop refused.
func TestStop(t *testing.T) {
	x := newExchange(t, Config{})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if offset(r) == 40 {
			<-r.Context().Done()
			return true
		}
		return false
	})
	access, refresh := x.token(t, oidctest.Grant{})
	id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
	x.tg.wait(x.pid, id, "the first page", func(j Job) bool { return j.Progress.PagesFetched == 2 })
	path := fmt.Sprintf("/api/oidc_servers/%d/batch_job/%d/stop", x.pid, id)
	var job Job
	if st, _ := x.tg.call(http.MethodPost, path, backOfficeToken, nil, &job); st != http.StatusAccepted || (job.BatchStatus != Stopping && job.BatchStatus != Stopped) {
		t.Fatalf("stop: %d %s", st, job.BatchStatus)
	}
	job = x.tg.waitEnd(x.pid, id)
	if job.BatchStatus != Stopped || job.EndTime == nil {
		t.Fatalf("job %s", job.BatchStatus)
	}
	if task := x.task(t); task["status"] != "in-progress" || !strings.Contains(fmt.Sprint(task["output"]), "STOPPED") {
		t.Errorf("Task %v, output %v", task["status"], task["output"])
	}
	var e map[string]any
	if st, _ := x.tg.call(http.MethodPost, path, backOfficeToken, nil, &e); st != http.StatusConflict {
		t.Errorf("second stop: %d %v", st, e)
	}
	x.checkIntact(t, job, 2)
}

// TestJobsDoNotBlockEachOther: with one worker, a job whose source hangs
// does not hold up another member's job.
func TestJobsDoNotBlockEachOther(t *testing.T) {
	x := newExchange(t, Config{Workers: 1, MDMIdentifierSystem: "-"})
	other := x.src.load("Barney_Abbott")[0]
	x.tg.putResource("Patient", "member-2", `{"resourceType":"Patient","id":"member-2"}`)
	slowAccess, slowRefresh := x.token(t, oidctest.Grant{})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") == "Bearer "+slowAccess && offset(r) == 40 {
			<-r.Context().Done()
			return true
		}
		return false
	})
	slow := x.tg.startJob(x.pid, jobBody(slowAccess, slowRefresh, x.everything(40), x.patient, "member-1", ""))
	x.tg.wait(x.pid, slow, "the slow job's first page", func(j Job) bool { return j.Progress.PagesFetched == 1 })
	access, refresh := x.token(t, oidctest.Grant{Patient: other})
	fast := x.tg.startJob(x.pid, jobBody(access, refresh, fmt.Sprintf("Patient/%s/$everything?_count=30", other), other, "member-2", ""))
	if job := x.tg.waitEnd(x.pid, fast); job.BatchStatus != Completed {
		t.Fatalf("the other job %s: %s", job.BatchStatus, job.FailureReason)
	}
	if job := x.tg.job(x.pid, slow); job.BatchStatus != Started {
		t.Errorf("the slow job is %s", job.BatchStatus)
	}
}

// TestTaskKeepsItsAttempts: the attempts a Task's output records are the
// server's history of the request. A portal or member writing the Task
// back without them (a cancel sent as the original body), or with some
// left out, keeps them; one that adds or changes an attempt is refused
// (422) and the Task stays as it was. The other outputs are the writer's.
func TestTaskKeepsItsAttempts(t *testing.T) {
	x := newExchange(t, Config{MaxRetries: 1, RetryBase: time.Millisecond})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusBadRequest)
		return true
	})
	access, refresh := x.token(t, oidctest.Grant{})
	var ids []int64
	for range 2 {
		id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
		if job := x.tg.waitEnd(x.pid, id); job.BatchStatus != Failed || job.FinalFailure {
			t.Fatalf("job %d %s final=%v: %s", id, job.BatchStatus, job.FinalFailure, job.FailureReason)
		}
		ids = append(ids, id)
	}
	task := x.task(t)
	attempts := listOf(task["output"])
	if len(attempts) != 2 {
		t.Fatalf("Task.output %v, want the two attempts", task["output"])
	}
	attempt := func(i int) any { return attempts[i] }
	portalOutput := map[string]any{"type": map[string]any{"text": "portal note"}, "valueString": "called the member"}
	forged := map[string]any{"type": attempts[0]["type"], "valueString": fmt.Sprintf("batch job %d (/api/oidc_servers/%d/batch_job/%d): COMPLETED 2026-01-01T00:00:00Z, 389 records", ids[0], x.pid, ids[0])}
	newLine := map[string]any{"type": attempts[0]["type"], "valueString": "batch job 99 (/api/oidc_servers/1/batch_job/99): COMPLETED 2026-01-01T00:00:00Z, 1 records"}
	for _, c := range []struct {
		name   string
		output []any // nil: the element left out
		status int
		want   []string // the output's valueStrings after the write
	}{
		{"left out (the Task written back as the portal first sent it)", nil, http.StatusOK,
			[]string{attempts[0]["valueString"].(string), attempts[1]["valueString"].(string)}},
		{"one left out, a portal output added", []any{portalOutput, attempt(1)}, http.StatusOK,
			[]string{"called the member", attempts[1]["valueString"].(string), attempts[0]["valueString"].(string)}},
		{"sent back as read", []any{attempt(0), attempt(1)}, http.StatusOK,
			[]string{attempts[0]["valueString"].(string), attempts[1]["valueString"].(string)}},
		{"an attempt changed to COMPLETED", []any{forged, attempt(1)}, http.StatusUnprocessableEntity, nil},
		{"an attempt no job made", []any{attempt(0), attempt(1), newLine}, http.StatusUnprocessableEntity, nil},
		{"an attempt sent twice", []any{attempt(0), attempt(0), attempt(1)}, http.StatusUnprocessableEntity, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			before, err := x.tg.read("Task", "task-1")
			if err != nil {
				t.Fatal(err)
			}
			var body map[string]any
			if err := json.Unmarshal([]byte(addPayerTask("task-1", "member-1")), &body); err != nil {
				t.Fatal(err)
			}
			body["status"] = "in-progress"
			if c.output != nil {
				body["output"] = c.output
			}
			raw, _ := json.Marshal(body)
			req, _ := http.NewRequest(http.MethodPut, x.tg.URL+"/fhir/Task/task-1", bytes.NewReader(raw))
			req.Header.Set("Content-Type", "application/fhir+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("PUT: %d %s, want %d", resp.StatusCode, answer, c.status)
			}
			after, err := x.tg.read("Task", "task-1")
			if err != nil {
				t.Fatal(err)
			}
			if c.want == nil {
				if after.VersionID != before.VersionID || !strings.Contains(string(answer), "Task.output") {
					t.Errorf("refused write changed the Task (version %d to %d) or did not name Task.output: %s", before.VersionID, after.VersionID, answer)
				}
				return
			}
			var got struct {
				Output []struct {
					ValueString string `json:"valueString"`
				} `json:"output"`
			}
			if err := json.Unmarshal(after.JSON, &got); err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, o := range got.Output {
				lines = append(lines, o.ValueString)
			}
			if fmt.Sprint(lines) != fmt.Sprint(c.want) {
				t.Errorf("output %q, want %q", lines, c.want)
			}
		})
	}
	// The jobs still record themselves: a new attempt is added after the
	// portal's writes.
	id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
	x.tg.waitEnd(x.pid, id)
	if out := fmt.Sprint(x.task(t)["output"]); !strings.Contains(out, fmt.Sprintf("batch job %d (", id)) {
		t.Errorf("the third job's attempt is missing: %v", out)
	}
}

// TestOneJobPerTask: while a job works on an add-payer Task, another job
// for the same request is refused with 409, whichever source payer
// definition or source Patient it names: two at once would race to
// complete and fail the one request. Once the job ends, a new one starts.
func TestOneJobPerTask(t *testing.T) {
	x := newExchange(t, Config{})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if offset(r) == 40 {
			<-r.Context().Done()
			return true
		}
		return false
	})
	// A second definition of the same source (issuers are unique, so
	// under another provider; the job uses the member's access token as
	// given and never refreshes it).
	idp2 := oidctest.New(t)
	other, err := x.tg.repo.Create(context.Background(), oidcservers.Server{
		Name: "Source Payer A, second definition", Issuer: idp2.Issuer(), ClientID: clientID, ClientSecret: clientSecret,
		FHIREndpoint: x.src.URL, TokenEndpoint: idp2.TokenEndpoint(), OrganizationID: "PAYRA",
	})
	if err != nil {
		t.Fatal(err)
	}
	access, refresh := x.token(t, oidctest.Grant{})
	first := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
	x.tg.wait(x.pid, first, "the first page", func(j Job) bool { return j.Progress.PagesFetched >= 1 })
	for _, c := range []struct {
		name string
		pid  int64
		body map[string]any
	}{
		{"same definition, another source Patient", x.pid, jobBody(access, refresh, "Patient/other/$everything", "other", "member-1", "task-1")},
		{"another definition", other.PID, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1")},
	} {
		var e map[string]any
		st, _ := x.tg.call(http.MethodPost, fmt.Sprintf("/api/oidc_servers/%d/batch_job", c.pid), backOfficeToken, c.body, &e)
		if st != http.StatusConflict || !strings.Contains(fmt.Sprint(e), "task-1") {
			t.Errorf("%s: %d %v, want 409 naming the Task", c.name, st, e)
		}
	}
	// Without the Task, a job for another definition is the back office's call.
	if st, _ := x.tg.call(http.MethodPost, fmt.Sprintf("/api/oidc_servers/%d/batch_job", other.PID), backOfficeToken,
		jobBody(access, refresh, "Patient/other/$everything", "other", "member-1", ""), nil); st != http.StatusAccepted {
		t.Errorf("a job without the Task: %d, want 202", st)
	}
	if st, _ := x.tg.call(http.MethodPost, fmt.Sprintf("/api/oidc_servers/%d/batch_job/%d/stop", x.pid, first), backOfficeToken, nil, nil); st != http.StatusAccepted {
		t.Fatalf("stop: %d", st)
	}
	x.tg.waitEnd(x.pid, first)
	x.src.setFault(nil)
	again := x.tg.startJob(other.PID, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
	if job := x.tg.waitEnd(other.PID, again); job.BatchStatus != Completed {
		t.Errorf("the job after the stop: %s %s", job.BatchStatus, job.FailureReason)
	}
}

// TestEndedRequestStopsTheJob: when the member's add-payer request ends
// while its job runs (the member cancels it, the staff fail or reject it,
// or it is deleted), the job copies nothing more: the next page is not
// written, the job ends STOPPED saying why, and the Task keeps the status
// it was given, with the attempt in its output.
func TestEndedRequestStopsTheJob(t *testing.T) {
	for _, c := range []struct {
		name, method, status, reason string
	}{
		{"the member cancels", http.MethodPut, "cancelled", ""},
		{"the staff fail it", http.MethodPut, "failed", "the member asked us by phone to stop"},
		{"the staff put it on hold, then complete it by hand", http.MethodPut, "completed", ""},
		{"the Task is deleted", http.MethodDelete, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := newExchange(t, Config{})
			release := make(chan struct{})
			x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
				if offset(r) == 40 {
					select {
					case <-release:
					case <-r.Context().Done():
					}
				}
				return false
			})
			access, refresh := x.token(t, oidctest.Grant{})
			id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", "task-1"))
			before := x.tg.wait(x.pid, id, "the first page", func(j Job) bool { return j.Progress.PagesFetched >= 2 })
			if c.method == http.MethodDelete {
				if st, _ := x.tg.call(http.MethodDelete, "/fhir/Task/task-1", "", nil, nil); st != http.StatusOK && st != http.StatusNoContent {
					t.Fatalf("DELETE Task: %d", st)
				}
			} else {
				task := x.task(t)
				if c.status == "completed" {
					task["status"] = "on-hold"
					if st, _ := x.tg.call(http.MethodPut, "/fhir/Task/task-1", "", task, &task); st != http.StatusOK {
						t.Fatalf("PUT Task on-hold: %d %v", st, task)
					}
				}
				task["status"] = c.status
				if c.reason != "" {
					task["statusReason"] = map[string]any{"text": c.reason}
				}
				var answer map[string]any
				if st, _ := x.tg.call(http.MethodPut, "/fhir/Task/task-1", "", task, &answer); st != http.StatusOK {
					t.Fatalf("PUT Task %s: %d %v", c.status, st, answer)
				}
			}
			close(release)
			job := x.tg.waitEnd(x.pid, id)
			if job.BatchStatus != Stopped || !strings.Contains(job.FailureReason, "Task/task-1") {
				t.Fatalf("job %s: %q, want STOPPED naming the request", job.BatchStatus, job.FailureReason)
			}
			if job.Progress.ResourcesTotal != before.Progress.ResourcesTotal {
				t.Errorf("%d resources written after the request ended (%d before)", job.Progress.ResourcesTotal-before.Progress.ResourcesTotal, before.Progress.ResourcesTotal)
			}
			if c.method == http.MethodDelete {
				return
			}
			if task := x.task(t); task["status"] != c.status || !strings.Contains(fmt.Sprint(task["output"]), "STOPPED") {
				t.Errorf("Task %v, output %v", task["status"], task["output"])
			}
		})
	}
}
