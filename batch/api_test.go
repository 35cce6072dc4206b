package batch

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

func TestRoutesDocumented(t *testing.T) {
	tg := newTarget(t, Config{})
	apidoc.CheckRoutes(t, tg.router)
}

type apiError struct {
	Error struct {
		Code    string            `json:"code"`
		Message string            `json:"message"`
		Fields  map[string]string `json:"fields"`
	} `json:"error"`
}

// TestCreateReportsEveryBadField posts bodies with mistakes and checks that
// each bad field is named, with all of them at once.
func TestCreateReportsEveryBadField(t *testing.T) {
	x := newExchange(t, Config{})
	x.tg.putResource("Task", "task-other", addPayerTask("task-other", "someone-else"))
	x.tg.putResource("Task", "task-done", strings.Replace(addPayerTask("task-done", "member-1"), `"status":"requested"`, `"status":"completed"`, 1))
	x.tg.putResource("Task", "not-add-payer", `{"resourceType":"Task","id":"not-add-payer","status":"requested","intent":"order","code":{"text":"something else"}}`)
	ok := func() map[string]any { return jobBody("tok", "ref", "Patient/p1/$everything", "p1", "member-1", "") }
	set := func(path string, v any) map[string]any {
		b := ok()
		parts := strings.Split(path, ".")
		if len(parts) == 1 {
			b[parts[0]] = v
		} else {
			b[parts[0]].(map[string]any)[parts[1]] = v
		}
		return b
	}
	for _, tc := range []struct {
		name string
		body any
		want []string // fields named
	}{
		{"empty object", map[string]any{}, []string{"sourcePayer", "targetPayer"}},
		{"no tokens", map[string]any{"sourcePayer": map[string]any{"fhirBundleRequest": "Patient", "patientId": "p1"}, "targetPayer": ok()["targetPayer"]}, nil},
		{"every field wrong", map[string]any{
			"sourcePayer": map[string]any{"oidcToken": "", "oidcRefreshToken": "", "fhirBundleRequest": "https://elsewhere.example/fhir/Patient", "patientId": "bad id!"},
			"targetPayer": map[string]any{"patientId": "", "organizationId": ""},
			"taskId":      "no such/task",
		}, []string{"sourcePayer.oidcToken", "sourcePayer.fhirBundleRequest", "sourcePayer.patientId", "targetPayer.patientId", "targetPayer.organizationId", "taskId"}},
		{"another origin", set("sourcePayer.fhirBundleRequest", "http://127.0.0.2:1/fhir/Patient/p1/$everything"), []string{"sourcePayer.fhirBundleRequest"}},
		{"scheme-relative", set("sourcePayer.fhirBundleRequest", "//elsewhere.example/fhir/Patient"), []string{"sourcePayer.fhirBundleRequest"}},
		{"absolute path", set("sourcePayer.fhirBundleRequest", "/fhir/Patient"), []string{"sourcePayer.fhirBundleRequest"}},
		{"not http", set("sourcePayer.fhirBundleRequest", "file:///etc/passwd"), []string{"sourcePayer.fhirBundleRequest"}},
		{"spaces", set("sourcePayer.fhirBundleRequest", "Patient?name=a b"), []string{"sourcePayer.fhirBundleRequest"}},
		{"unknown member", set("targetPayer.patientId", "nobody"), []string{"targetPayer.patientId"}},
		{"unknown Task", set("taskId", "nope"), []string{"taskId"}},
		{"another member's Task", set("taskId", "task-other"), []string{"taskId"}},
		{"a finished Task", set("taskId", "task-done"), []string{"taskId"}},
		{"not an add-payer Task", set("taskId", "not-add-payer"), []string{"taskId"}},
		{"unknown field", map[string]any{"sourcePayer": ok()["sourcePayer"], "targetPayer": ok()["targetPayer"], "extra": 1}, []string{"extra"}},
		{"wrong type", map[string]any{"sourcePayer": "x", "targetPayer": ok()["targetPayer"]}, []string{"sourcePayer"}},
		{"body problems with value problems", map[string]any{
			"sourcePayer": map[string]any{"oidcToken": 5, "fhirBundleRequest": "/fhir/Patient", "patientId": "p1", "colour": 1},
			"targetPayer": map[string]any{"patientId": "nobody", "organizationId": "PAYRB"},
			"extra":       true,
		}, []string{"sourcePayer.oidcToken", "sourcePayer.colour", "sourcePayer.fhirBundleRequest", "targetPayer.patientId", "extra"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			st, _ := x.tg.call(http.MethodPost, fmt.Sprintf("/api/oidc_servers/%d/batch_job", x.pid), backOfficeToken, tc.body, &e)
			if st != http.StatusBadRequest || e.Error.Code != "invalid" {
				t.Fatalf("status %d %+v", st, e)
			}
			want := tc.want
			if want == nil {
				want = []string{"sourcePayer.oidcToken"}
			}
			var got []string
			for f := range e.Error.Fields {
				got = append(got, f)
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("fields %v, want %v", e.Error.Fields, want)
			}
		})
	}
}

func TestAPIAccess(t *testing.T) {
	x := newExchange(t, Config{})
	access, refresh := x.token(t, oidctest.Grant{})
	body := jobBody(access, refresh, x.everything(100), x.patient, "member-1", "")
	path := fmt.Sprintf("/api/oidc_servers/%d/batch_job", x.pid)
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"unknown token", "not-a-configured-token-at-all", http.StatusUnauthorized},
	} {
		for _, route := range []struct{ method, path string }{
			{http.MethodPost, path}, {http.MethodGet, path}, {http.MethodGet, path + "/1"}, {http.MethodPost, path + "/1/stop"},
		} {
			var e apiError
			if st, _ := x.tg.call(route.method, route.path, tc.token, body, &e); st != tc.want {
				t.Errorf("%s: %s %s: %d, want %d", tc.name, route.method, route.path, st, tc.want)
			}
		}
	}
	// Both roles may start and read jobs.
	var job Job
	if st, h := x.tg.call(http.MethodPost, path, adminToken, body, &job); st != http.StatusAccepted || job.BatchStatus != Starting ||
		h.Get("Location") != fmt.Sprintf("%s/%d", path, job.BatchJobID) || job.CreateTime == "" || job.StartTime != nil || job.EndTime != nil {
		t.Fatalf("admin start: %d %+v %v", st, job, h)
	}
	if job.JobConfigurationName != JobConfigurationName || job.TaskID != nil {
		t.Errorf("job %+v", job)
	}
	// A second job for the same member from the same payer is refused.
	var e apiError
	if st, _ := x.tg.call(http.MethodPost, path, backOfficeToken, body, &e); st != http.StatusConflict && x.tg.job(x.pid, job.BatchJobID).BatchStatus.Active() {
		t.Errorf("duplicate job: %d %+v", st, e)
	}
	x.tg.waitEnd(x.pid, job.BatchJobID)

	// Unknown server, unknown job, a job of another server.
	other, err := x.tg.repo.Create(context.Background(), oidcserversServer("Other", "https://other.example/issuer"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"/api/oidc_servers/999/batch_job", "/api/oidc_servers/abc/batch_job/1", fmt.Sprintf("%s/999", path),
		fmt.Sprintf("/api/oidc_servers/%d/batch_job/%d", other.PID, job.BatchJobID), fmt.Sprintf("%s/x", path),
	} {
		if st, _ := x.tg.call(http.MethodGet, p, adminToken, nil, &e); st != http.StatusNotFound {
			t.Errorf("GET %s: %d", p, st)
		}
	}
	if st, _ := x.tg.call(http.MethodPost, "/api/oidc_servers/999/batch_job", adminToken, body, &e); st != http.StatusNotFound {
		t.Errorf("POST to an unknown server: %d", st)
	}
}

// TestNoSecretKeyNoJobs: without a secret key the member's tokens could
// not be stored encrypted, so jobs are refused.
func TestNoSecretKeyNoJobs(t *testing.T) {
	x := newExchange(t, Config{})
	r, err := New(x.tg.fhir, x.tg.repo, nil, Config{})
	if err != nil {
		t.Fatal(err)
	}
	auth, _ := httpapi.NewAuthorizer(nil, httpapi.Role{Name: "back-office", Tokens: []string{backOfficeToken}})
	api := httpapi.NewRouter(nil)
	NewAPI(r, auth.Require("back-office"), nil, 0).Mount(api)
	x.tg.router.Mount("/api2", api)
	var h http.Handler = x.tg.router
	x.tg.handler.Store(&h)
	var e apiError
	st, _ := x.tg.call(http.MethodPost, fmt.Sprintf("/api2/oidc_servers/%d/batch_job", x.pid), backOfficeToken,
		jobBody("a", "b", x.everything(10), x.patient, "member-1", ""), &e)
	if st != http.StatusForbidden || !strings.Contains(e.Error.Message, "secret key") {
		t.Errorf("%d %+v", st, e)
	}
}

// TestListJobs lists a server's jobs newest first, page by page, and by status.
func TestListJobs(t *testing.T) {
	x := newExchange(t, Config{MDMIdentifierSystem: "-"})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "{}", http.StatusForbidden)
		return true
	})
	var ids []int64
	for range 5 {
		id := x.tg.startJob(x.pid, jobBody("a", "b", x.everything(10), x.patient, "member-1", ""))
		x.tg.waitEnd(x.pid, id)
		ids = append(ids, id)
	}
	slices.Reverse(ids)
	var got []int64
	next := fmt.Sprintf("/api/oidc_servers/%d/batch_job?count=2", x.pid)
	pages := 0
	for next != "" {
		var list JobList
		if st, _ := x.tg.call(http.MethodGet, next, backOfficeToken, nil, &list); st != http.StatusOK {
			t.Fatalf("GET %s: %d", next, st)
		}
		for _, j := range list.BatchJobs {
			got = append(got, j.BatchJobID)
			if j.BatchStatus != Failed || !strings.Contains(j.FailureReason, "403") {
				t.Errorf("job %d: %s %q", j.BatchJobID, j.BatchStatus, j.FailureReason)
			}
		}
		next = list.Next
		if pages++; pages > 5 {
			t.Fatal("the list does not end")
		}
	}
	if !slices.Equal(got, ids) {
		t.Errorf("listed %v, want newest first %v", got, ids)
	}
	var list JobList
	x.tg.call(http.MethodGet, fmt.Sprintf("/api/oidc_servers/%d/batch_job?status=completed", x.pid), backOfficeToken, nil, &list)
	if len(list.BatchJobs) != 0 {
		t.Errorf("%d COMPLETED jobs listed", len(list.BatchJobs))
	}
	var e apiError
	if st, _ := x.tg.call(http.MethodGet, fmt.Sprintf("/api/oidc_servers/%d/batch_job?count=0&status=DONE&before=x", x.pid), backOfficeToken, nil, &e); st != http.StatusBadRequest || len(e.Error.Fields) != 3 {
		t.Errorf("bad list parameters: %d %+v", st, e)
	}
}

// TestDefinitionInUse: a definition cannot be deleted while a job of it
// runs; once the job has ended it can.
func TestDefinitionInUse(t *testing.T) {
	x := newExchange(t, Config{})
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if offset(r) == 40 {
			<-r.Context().Done()
			return true
		}
		return false
	})
	access, refresh := x.token(t, oidctest.Grant{})
	id := x.tg.startJob(x.pid, jobBody(access, refresh, x.everything(40), x.patient, "member-1", ""))
	x.tg.wait(x.pid, id, "the job to run", func(j Job) bool { return j.BatchStatus == Started })
	path := fmt.Sprintf("/api/oidc_servers/%d", x.pid)
	var e apiError
	if st, _ := x.tg.call(http.MethodDelete, path, adminToken, nil, &e); st != http.StatusConflict {
		t.Fatalf("delete while running: %d %+v", st, e)
	}
	x.tg.call(http.MethodPost, fmt.Sprintf("%s/batch_job/%d/stop", path, id), adminToken, nil, nil)
	x.tg.waitEnd(x.pid, id)
	if st, _ := x.tg.call(http.MethodDelete, path, adminToken, nil, &e); st != http.StatusNoContent {
		t.Errorf("delete after the job: %d %+v", st, e)
	}
	// The job's record is still there to read.
	var job Job
	deadline := time.Now().Add(time.Minute)
	for {
		st, _ := x.tg.call(http.MethodGet, fmt.Sprintf("%s/batch_job/%d", path, id), adminToken, nil, &job)
		if st == http.StatusOK || time.Now().After(deadline) {
			if st != http.StatusOK || job.BatchStatus != Stopped {
				t.Errorf("the job after its definition went: %d %s", st, job.BatchStatus)
			}
			break
		}
	}
}

func oidcserversServer(name, issuer string) oidcservers.Server {
	return oidcservers.Server{Name: name, Issuer: issuer, ClientID: "c", FHIREndpoint: "https://other.example/fhir"}
}
