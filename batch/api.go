package batch

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"
	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// API serves the batch job routes below /api/oidc_servers/{id}.
type API struct {
	runner  *Runner
	auth    func(http.Handler) http.Handler
	log     *slog.Logger
	maxBody int64
}

// NewAPI builds the routes of runner's jobs. auth guards every route (the
// admin and back-office roles: a job carries a member's tokens and its
// status names the member); maxBody caps request bodies in bytes.
func NewAPI(runner *Runner, auth func(http.Handler) http.Handler, logger *slog.Logger, maxBody int64) *API {
	if logger == nil {
		logger = slog.Default()
	}
	if maxBody <= 0 {
		maxBody = httpapi.DefaultMaxBody
	}
	return &API{runner: runner, auth: auth, log: logger, maxBody: maxBody}
}

// Mount registers the routes on r, the router mounted at /api, beside
// oidcservers.API's.
func (a *API) Mount(r chi.Router) {
	r.With(a.auth).Post("/oidc_servers/{id}/batch_job", a.create)
	r.With(a.auth).Get("/oidc_servers/{id}/batch_job", a.list)
	r.With(a.auth).Get("/oidc_servers/{id}/batch_job/{jobId}", a.get)
	r.With(a.auth).Post("/oidc_servers/{id}/batch_job/{jobId}/stop", a.stop)
	a.mountBulk(r)
}

// CreateRequest is the body of POST .../batch_job, as in the P2P module
// guide, with the optional add-payer Task the job reports to.
type CreateRequest struct {
	SourcePayer *SourcePayerRequest `json:"sourcePayer"`
	TargetPayer *TargetPayer        `json:"targetPayer"`
	// TaskID is the member's add-payer Task the job moves (in-progress,
	// then completed, failed or cancelled). Optional.
	TaskID string `json:"taskId,omitempty"`
}

// SourcePayerRequest is what the job needs from the source payer: the
// member's tokens, the request, and the member's id there.
type SourcePayerRequest struct {
	OIDCToken         string `json:"oidcToken"`
	OIDCRefreshToken  string `json:"oidcRefreshToken"`
	FHIRBundleRequest string `json:"fhirBundleRequest"`
	PatientID         string `json:"patientId"`
}

// TargetPayer names the member here and this payer's organization.
type TargetPayer struct {
	PatientID      string `json:"patientId"`
	OrganizationID string `json:"organizationId"`
}

// Job is a batch job as the API shows it: the fields of the P2P module
// guide (batchJobId ... taskId), then the request without the member's
// tokens, and the progress. Times are UTC with milliseconds; startTime and
// endTime are null until the job starts and ends, taskId null without a
// Task.
type Job struct {
	BatchJobID           int64   `json:"batchJobId"`
	BatchStatus          Status  `json:"batchStatus"`
	StartTime            *string `json:"startTime"`
	CreateTime           string  `json:"createTime"`
	EndTime              *string `json:"endTime"`
	LastUpdated          string  `json:"lastUpdated"`
	JobConfigurationName string  `json:"jobConfigurationName"`
	TaskID               *string `json:"taskId"`

	ServerID    int64       `json:"serverId"`
	SourcePayer JobSource   `json:"sourcePayer"`
	TargetPayer TargetPayer `json:"targetPayer"`
	Progress    Progress    `json:"progress"`
	// FailureReason says in words why a FAILED job failed, and whether the
	// member must authorize again.
	FailureReason string `json:"failureReason,omitempty"`
	// FinalFailure is true when the job failed for a cause only the member
	// can remove (their authorization was revoked, or expired with nothing
	// to renew it): the add-payer Task failed with it and the member was
	// told. Any other failure leaves the Task open for a new job.
	FinalFailure bool `json:"finalFailure,omitempty"`
	// MDM reports the member identifier added and the link made.
	MDM *MDMReport `json:"mdm,omitempty"`
	// TaskNote reports a problem moving the add-payer Task.
	TaskNote string `json:"taskNote,omitempty"`
}

// JobSource is the job's source payer request, without the tokens.
type JobSource struct {
	PatientID         string `json:"patientId"`
	FHIRBundleRequest string `json:"fhirBundleRequest"`
	OrganizationID    string `json:"organizationId,omitempty"`
	Name              string `json:"name"`
}

// Progress is what a job has done so far.
type Progress struct {
	// PagesFetched counts pages written, the member's Patient read included.
	PagesFetched int `json:"pagesFetched"`
	// ResourcesTotal and ResourcesWritten count the resources from the
	// source stored here, in all and by type; ResourcesUnchanged of them
	// were already stored as they came, so no version was written, and
	// VersionsWritten is the number of new versions.
	ResourcesTotal     int            `json:"resourcesTotal"`
	ResourcesWritten   map[string]int `json:"resourcesWritten"`
	ResourcesUnchanged int            `json:"resourcesUnchanged"`
	VersionsWritten    int            `json:"versionsWritten"`
	// ResourcesSkipped counts resources on the pages that are not stored
	// (OperationOutcome, Subscription), by type.
	ResourcesSkipped map[string]int `json:"resourcesSkipped,omitempty"`
	// ReferencesRelinked counts resources whose reference to the source
	// was made local when the resource it names arrived.
	ReferencesRelinked int `json:"referencesRelinked"`
	// ReferencesToSource counts resources left pointing at the source
	// payer (an absolute URL) because a resource they name never arrived.
	ReferencesToSource int `json:"referencesToSource"`
	// ProvenanceIDs are the Provenance resources written, one per page.
	ProvenanceIDs []string `json:"provenanceIds"`
	// Retries counts requests retried after 429, 5xx or no answer;
	// TokenRefreshes the member's tokens refreshed; Restarts the times the
	// request was started again because the source's paging expired.
	Retries        int `json:"retries"`
	TokenRefreshes int `json:"tokenRefreshes"`
	Restarts       int `json:"restarts"`
}

// MDMReport is what the job did for patient matching.
type MDMReport struct {
	// LinkedPatient is the ingested copy of the member's source Patient,
	// linked with the member.
	LinkedPatient string `json:"linkedPatient,omitempty"`
	// MemberIdentifier is system|value of the identifier added to the member.
	MemberIdentifier string `json:"memberIdentifier,omitempty"`
	Note             string `json:"note,omitempty"`
}

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

func stamp(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(timeLayout)
	return &s
}

func (rec *record) view() Job {
	j := Job{
		BatchJobID:           rec.ID,
		BatchStatus:          rec.Status,
		StartTime:            stamp(rec.Started),
		CreateTime:           rec.Created.UTC().Format(timeLayout),
		EndTime:              stamp(rec.Ended),
		LastUpdated:          rec.Updated.UTC().Format(timeLayout),
		JobConfigurationName: JobConfigurationName,
		ServerID:             rec.ServerID,
		SourcePayer: JobSource{PatientID: rec.SourcePatientID, FHIRBundleRequest: rec.BundleRequest,
			OrganizationID: rec.SourceOrganizationID, Name: rec.SourceName},
		TargetPayer: TargetPayer{PatientID: rec.TargetPatientID, OrganizationID: rec.TargetOrganizationID},
		Progress: Progress{
			PagesFetched:       rec.Pages,
			ResourcesTotal:     rec.total(),
			ResourcesWritten:   rec.Resources,
			ResourcesUnchanged: rec.Unchanged,
			VersionsWritten:    rec.Versions,
			ResourcesSkipped:   rec.Skipped,
			ReferencesRelinked: rec.Relinked,
			ReferencesToSource: rec.ToSource,
			ProvenanceIDs:      rec.ProvenanceIDs,
			Retries:            rec.Retries,
			TokenRefreshes:     rec.TokenRefreshes,
			Restarts:           rec.Restarts,
		},
		FailureReason: rec.Reason,
		FinalFailure:  rec.Final,
		TaskNote:      rec.TaskNote,
	}
	if j.Progress.ResourcesWritten == nil {
		j.Progress.ResourcesWritten = map[string]int{}
	}
	if j.Progress.ProvenanceIDs == nil {
		j.Progress.ProvenanceIDs = []string{}
	}
	if rec.TaskID != "" {
		t := rec.TaskID
		j.TaskID = &t
	}
	if rec.LinkedPatient != "" || rec.MemberIdent != "" || rec.MDMNote != "" {
		j.MDM = &MDMReport{LinkedPatient: rec.LinkedPatient, MemberIdentifier: rec.MemberIdent, Note: rec.MDMNote}
	}
	return j
}

func jobID(r *http.Request) (int64, error) {
	raw := chi.URLParam(r, "jobId")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, errs.E("batch.api", errs.NotFound, fmt.Sprintf("no batch job %q", clip(raw, 40)))
	}
	return id, nil
}

// Limits on request fields: far above real values.
const (
	maxToken   = 16 << 10
	maxRequest = 2048
	maxShort   = 256
)

func (a *API) create(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var in CreateRequest
	fields, err := httpapi.DecodeJSONFields(r, a.maxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	srv, err := a.runner.defs.Get(r.Context(), pid)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if a.runner.cipher == nil {
		httpapi.WriteError(w, httpapi.Errorf(http.StatusForbidden, httpapi.CodeForbidden,
			"batch jobs are disabled: the server has no secret key to store the member's tokens encrypted (set -secret-key or P2P_SECRET_KEY)"))
		return
	}
	base := normalizeBase(srv.FHIREndpoint)
	// The body's own problems (unknown fields, wrong types) stand; the
	// checks below add theirs for the other fields.
	checked := map[string]string{}
	first := checkRequest(&in, base, checked)
	for f, msg := range checked {
		if _, ok := fields[f]; !ok && !coveredBy(fields, f) {
			fields[f] = msg
		}
	}
	rec := &record{
		ServerID: pid, Status: Starting, TaskID: in.TaskID,
		SourceBase: base, SourceName: srv.Name, SourceOrganizationID: srv.OrganizationID,
		FirstURL: first, NextURL: first,
	}
	if in.SourcePayer != nil {
		rec.SourcePatientID, rec.BundleRequest = in.SourcePayer.PatientID, in.SourcePayer.FHIRBundleRequest
	}
	if in.TargetPayer != nil {
		rec.TargetPatientID, rec.TargetOrganizationID = in.TargetPayer.PatientID, in.TargetPayer.OrganizationID
	}
	// What only the database can tell, reported with the rest.
	if err := a.runner.st.View(r.Context(), func(tx *store.Tx) error {
		if _, bad := fields["targetPayer.patientId"]; !bad && rec.TargetPatientID != "" {
			if _, err := tx.Read("Patient", rec.TargetPatientID); err != nil {
				fields["targetPayer.patientId"] = fmt.Sprintf("no Patient/%s on this server: create the member first", rec.TargetPatientID)
			}
		}
		if _, bad := fields["taskId"]; !bad && rec.TaskID != "" {
			member := rec.TargetPatientID
			if _, bad := fields["targetPayer.patientId"]; bad {
				member = ""
			}
			if why := checkTask(tx, rec.TaskID, member); why != "" {
				fields["taskId"] = why
			}
		}
		return nil
	}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	tok := &oauth2.Token{AccessToken: in.SourcePayer.OIDCToken, RefreshToken: in.SourcePayer.OIDCRefreshToken}
	tok.Expiry = jwtExpiry(tok.AccessToken)
	if err := a.runner.sealToken(rec, tok); err != nil {
		httpapi.WriteError(w, errs.E("batch.create", errs.Internal, err))
		return
	}
	// The member's Patient is read first for the identifier to add;
	// without one, the link is made when it comes with the data.
	rec.MemberDone = !a.runner.linker.AddsIdentifiers()
	if err := a.runner.create(r.Context(), rec); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	role, _ := httpapi.RoleFromContext(r.Context())
	a.log.Info("batch: job created", "job", rec.ID, "server", pid, "request", rec.BundleRequest, "role", role)
	w.Header().Set("Location", strings.TrimSuffix(r.URL.Path, "/")+"/"+strconv.FormatInt(rec.ID, 10))
	httpapi.WriteJSON(w, http.StatusAccepted, rec.view())
}

// create stores a new job and hands it to the workers once committed. A
// member has one running job per source payer at a time, and an add-payer
// Task one running job: two at once would race to complete and fail the
// same request.
func (r *Runner) create(ctx context.Context, rec *record) error {
	return r.st.Write(ctx, func(tx *store.Tx) error {
		active, err := activeJobs(tx)
		if err != nil {
			return err
		}
		for id, server := range active {
			if server != rec.ServerID && rec.TaskID == "" {
				continue
			}
			other, err := getJob(tx, id)
			if err != nil {
				return err
			}
			if rec.TaskID != "" && other.TaskID == rec.TaskID {
				return errs.E("batch.create", errs.Conflict, fmt.Sprintf(
					"batch job %d (source payer %d) is already working on Task/%s (%s); stop it or wait for it to end before starting another for the same request", id, server, rec.TaskID, other.Status))
			}
			if server == rec.ServerID && other.SourcePatientID == rec.SourcePatientID && other.TargetPatientID == rec.TargetPatientID {
				return errs.E("batch.create", errs.Conflict, fmt.Sprintf(
					"batch job %d is already pulling this member's data from this source payer (%s); stop it or wait for it to end", id, other.Status))
			}
		}
		seq, err := tx.KV(jobsBucket).NextSequence()
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		rec.ID, rec.Created = int64(seq), now
		tx.AfterCommit(func() { r.enqueue(rec.ID) })
		return putJob(tx, rec, now)
	})
}

// coveredBy reports whether a problem of field f (like
// "sourcePayer.patientId") follows from one already reported for the
// object that holds it ("sourcePayer" of the wrong type).
func coveredBy(fields map[string]string, f string) bool {
	for i := strings.LastIndexByte(f, '.'); i > 0; i = strings.LastIndexByte(f[:i], '.') {
		if _, ok := fields[f[:i]]; ok {
			return true
		}
	}
	return false
}

// normalizeBase is the form of a fhirEndpoint jobs use: no trailing slash,
// scheme and host in lower case.
func normalizeBase(s string) string {
	s = strings.TrimRight(strings.TrimSpace(s), "/")
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return s
	}
	u.Scheme, u.Host = strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	return u.String()
}

// checkRequest reports every bad field of in and returns the absolute URL
// of the first page.
func checkRequest(in *CreateRequest, base string, fields map[string]string) string {
	line := func(field, v string, max int, required bool) bool {
		switch {
		case v == "" && required:
			fields[field] = "is required"
		case len(v) > max:
			fields[field] = fmt.Sprintf("must be at most %d bytes", max)
		case strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 && field != "targetPayer.organizationId":
			fields[field] = "must not contain spaces or control characters"
		case strings.IndexFunc(v, unicode.IsControl) >= 0:
			fields[field] = "must be a single line without control characters"
		default:
			return v != ""
		}
		return false
	}
	id := func(field, v string) {
		if line(field, v, 64, true) && !validID(v) {
			fields[field] = "must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
		}
	}
	if in.TaskID != "" {
		id("taskId", in.TaskID)
	}
	var first string
	if sp := in.SourcePayer; sp == nil {
		fields["sourcePayer"] = "is required"
	} else {
		hasAccess := line("sourcePayer.oidcToken", sp.OIDCToken, maxToken, false)
		hasRefresh := line("sourcePayer.oidcRefreshToken", sp.OIDCRefreshToken, maxToken, false)
		_, badAccess := fields["sourcePayer.oidcToken"]
		_, badRefresh := fields["sourcePayer.oidcRefreshToken"]
		if !hasAccess && !hasRefresh && !badAccess && !badRefresh {
			fields["sourcePayer.oidcToken"] = "is required (or an oidcRefreshToken to obtain one)"
		}
		id("sourcePayer.patientId", sp.PatientID)
		if line("sourcePayer.fhirBundleRequest", sp.FHIRBundleRequest, maxRequest, true) {
			var why string
			first, why = firstURL(base, sp.FHIRBundleRequest)
			if why != "" {
				fields["sourcePayer.fhirBundleRequest"] = why
			}
		}
	}
	if tp := in.TargetPayer; tp == nil {
		fields["targetPayer"] = "is required"
	} else {
		id("targetPayer.patientId", tp.PatientID)
		line("targetPayer.organizationId", tp.OrganizationID, maxShort, true)
	}
	return first
}

// firstURL resolves fhirBundleRequest against the source's FHIR base. It
// must be relative to it, or an absolute URL on its origin: a job never
// sends the member's token anywhere else.
func firstURL(base, req string) (string, string) {
	b, err := url.Parse(base)
	if err != nil || b.Host == "" {
		return "", "cannot be used: the definition's fhirEndpoint is not an absolute URL"
	}
	u, err := url.Parse(req)
	switch {
	case err != nil:
		return "", "must be a FHIR request such as Patient/123/$everything or ExplanationOfBenefit?patient=123"
	case u.Fragment != "" || strings.Contains(req, "#"):
		return "", "must not contain a fragment"
	case u.IsAbs():
		if u.Scheme != "http" && u.Scheme != "https" {
			return "", "must be an http(s) URL or relative to the fhirEndpoint"
		}
		if !sameOrigin(u, b) {
			return "", fmt.Sprintf("must be on the origin of the definition's fhirEndpoint (%s://%s), or relative to it", b.Scheme, b.Host)
		}
		return u.String(), ""
	case strings.HasPrefix(req, "/"):
		return "", "must be relative to the fhirEndpoint (no leading /), like Patient/123/$everything"
	}
	return base + "/" + req, ""
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := jobID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var rec *record
	if err := a.runner.st.View(r.Context(), func(tx *store.Tx) (err error) {
		rec, err = jobOf(tx, pid, id)
		return err
	}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, rec.view())
}

// jobOf reads job id of server pid: NotFound for a job of another server.
func jobOf(tx *store.Tx, pid, id int64) (*record, error) {
	rec, err := getJob(tx, id)
	if err == errNoJob || (err == nil && (rec.ServerID != pid || rec.Kind != "")) {
		return nil, errs.E("batch.api", errs.NotFound, fmt.Sprintf("no batch job %d for OIDC server definition %d", id, pid))
	}
	return rec, err
}

// JobList is a page of a server's jobs, newest first. Next, when set, is
// the URL of the following page.
type JobList struct {
	BatchJobs []Job  `json:"batchJobs"`
	Next      string `json:"next,omitempty"`
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	q := r.URL.Query()
	fields := map[string]string{}
	count := 20
	if v := q.Get("count"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 100 {
			fields["count"] = "must be a whole number from 1 to 100"
		} else {
			count = n
		}
	}
	var before int64
	if v := q.Get("before"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err != nil || n < 1 {
			fields["before"] = "must be a batch job id"
		} else {
			before = n
		}
	}
	var status Status
	if v := q.Get("status"); v != "" {
		switch s := Status(strings.ToUpper(v)); s {
		case Starting, Started, Completed, Failed, Stopping, Stopped:
			status = s
		default:
			fields["status"] = "must be one of STARTING, STARTED, COMPLETED, FAILED, STOPPING, STOPPED"
		}
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	if _, err := a.runner.defs.Get(r.Context(), pid); err != nil && errs.Is(err, errs.NotFound) {
		httpapi.WriteError(w, err)
		return
	}
	out := JobList{BatchJobs: []Job{}}
	var last int64
	more := false
	err = a.runner.st.View(r.Context(), func(tx *store.Tx) error {
		return jobsOf(tx, pid, before, func(id int64, rec *record) (bool, error) {
			if (status != "" && rec.Status != status) || rec.Kind != "" {
				return true, nil
			}
			if len(out.BatchJobs) == count {
				more = true
				return false, nil
			}
			out.BatchJobs = append(out.BatchJobs, rec.view())
			last = id
			return true, nil
		})
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if more {
		next := url.Values{"before": {strconv.FormatInt(last, 10)}, "count": {strconv.Itoa(count)}}
		if status != "" {
			next.Set("status", string(status))
		}
		out.Next = r.URL.Path + "?" + next.Encode()
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (a *API) stop(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	id, err := jobID(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var rec *record
	err = a.runner.st.Write(r.Context(), func(tx *store.Tx) (err error) {
		rec, err = jobOf(tx, pid, id)
		if err != nil {
			return err
		}
		switch rec.Status {
		case Stopping:
			return nil
		case Starting, Started:
			rec.Status = Stopping
			tx.AfterCommit(func() { a.runner.requestStop(id) })
			return putJob(tx, rec, time.Now().UTC())
		}
		return errs.E("batch.stop", errs.Conflict, fmt.Sprintf("batch job %d has already ended (%s)", id, rec.Status))
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	role, _ := httpapi.RoleFromContext(r.Context())
	a.log.Info("batch: stop requested", "job", id, "server", pid, "role", role)
	httpapi.WriteJSON(w, http.StatusAccepted, rec.view())
}
