package batch

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// mountBulk registers the bulk exchange routes.
func (a *API) mountBulk(r chi.Router) {
	r.With(a.auth).Post("/oidc_servers/{id}/bulk_job", a.createBulk)
	r.With(a.auth).Get("/oidc_servers/{id}/bulk_job", a.listBulk)
	r.With(a.auth).Get("/oidc_servers/{id}/bulk_job/{bulkJobId}", a.getBulk)
	r.With(a.auth).Get("/oidc_servers/{id}/bulk_job/{bulkJobId}/members", a.bulkMembers)
	r.With(a.auth).Post("/oidc_servers/{id}/bulk_job/{bulkJobId}/stop", a.stopBulk)
	r.With(a.auth).Get("/oidc_servers/{id}/bulk_schedule", a.getSchedule)
	r.With(a.auth).Put("/oidc_servers/{id}/bulk_schedule", a.putSchedule)
}

// BulkRequest is the body of POST .../bulk_job: the members to bring over
// from the source payer, listed or as our Group, and optionally the
// _since of the export (an instant; default: five years back on a
// member's first pull, the last pull's transactionTime after that).
type BulkRequest struct {
	Members []BulkMemberRequest `json:"members,omitempty"`
	GroupID string              `json:"groupId,omitempty"`
	Since   string              `json:"since,omitempty"`
}

// BulkMemberRequest is one member of a BulkRequest: our Patient id, the
// member's Coverage at the source payer (HRex CoverageToMatch), our
// Coverage (CoverageToLink, optional), the member's HRex Consent, and the
// member's add-payer Task (optional).
type BulkMemberRequest struct {
	PatientID       string          `json:"patientId"`
	CoverageToMatch json.RawMessage `json:"coverageToMatch"`
	CoverageToLink  json.RawMessage `json:"coverageToLink,omitempty"`
	Consent         json.RawMessage `json:"consent"`
	TaskID          string          `json:"taskId,omitempty"`
}

// BulkJob is a bulk exchange job as the API shows it. Times are UTC with
// milliseconds; null until they happen.
type BulkJob struct {
	BulkJobID   int64  `json:"bulkJobId"`
	BatchStatus Status `json:"batchStatus"`
	// Phase is matching, exporting, downloading or done.
	Phase            string     `json:"phase"`
	Members          BulkCounts `json:"members"`
	FilesDone        int        `json:"filesDone"`
	ResourcesWritten int        `json:"resourcesWritten"`
	FailureReason    *string    `json:"failureReason"`
	StartTime        *string    `json:"startTime"`
	EndTime          *string    `json:"endTime"`
	LastUpdated      string     `json:"lastUpdated"`
	CreateTime       string     `json:"createTime"`

	JobConfigurationName string `json:"jobConfigurationName"`
	ServerID             int64  `json:"serverId"`
	SourceName           string `json:"sourceName"`
	GroupID              string `json:"groupId,omitempty"`
	// SourceGroup is the Group of the matched members at the source payer
	// (the $bulk-member-match result), the one exported.
	SourceGroup string `json:"sourceGroup,omitempty"`
	// Since is the _since sent with the export, TransactionTime the
	// export's (the next pull's _since).
	Since           *string      `json:"since"`
	TransactionTime *string      `json:"transactionTime"`
	Files           int          `json:"files"`
	Scheduled       bool         `json:"scheduled,omitempty"`
	Progress        BulkProgress `json:"progress"`
}

// BulkCounts are the members of a job by outcome so far.
type BulkCounts struct {
	Total              int `json:"total"`
	Matched            int `json:"matched"`
	NotMatched         int `json:"notMatched"`
	ConsentConstrained int `json:"consentConstrained"`
}

// BulkProgress is the detail of what a job did.
type BulkProgress struct {
	ResourcesByType    map[string]int `json:"resourcesByType"`
	VersionsWritten    int            `json:"versionsWritten"`
	ResourcesUnchanged int            `json:"resourcesUnchanged"`
	// ResourcesRejected were left out: not valid FHIR R4, of another type
	// than their file, not payer-to-payer data, or the data of a Patient
	// who is not a member matched with their consent (see bulkRun.refuse);
	// ErrorsReported are the OperationOutcomes of the error files;
	// ErrorNotes the first of both.
	ResourcesRejected int      `json:"resourcesRejected"`
	ErrorsReported    int      `json:"errorsReported"`
	ErrorNotes        []string `json:"errorNotes"`
	Chunks            int      `json:"chunks"`
	// File is the index in the manifest's files (error, then output) of
	// the file being downloaded; Line how many of its lines are ingested.
	File               int      `json:"file"`
	Line               int64    `json:"line"`
	ProvenanceIDs      []string `json:"provenanceIds"`
	ReferencesRelinked int      `json:"referencesRelinked"`
	ReferencesToSource int      `json:"referencesToSource"`
	// Retries counts requests tried again after the source did not
	// answer; TokenRefreshes system tokens renewed after a 401; Restarts
	// the times the source was asked again for what it no longer had.
	Retries        int `json:"retries"`
	TokenRefreshes int `json:"tokenRefreshes"`
	Restarts       int `json:"restarts"`
}

func (rec *record) bulkView() BulkJob {
	s := rec.Bulk
	j := BulkJob{
		BulkJobID: rec.ID, BatchStatus: rec.Status, Phase: s.Phase,
		Members:   BulkCounts{Total: s.Members, Matched: s.Matched, NotMatched: s.NotMatched, ConsentConstrained: s.ConsentConstrained},
		FilesDone: s.FilesDone, ResourcesWritten: rec.total(),
		StartTime: stamp(rec.Started), EndTime: stamp(rec.Ended), LastUpdated: rec.Updated.UTC().Format(timeLayout),
		CreateTime: rec.Created.UTC().Format(timeLayout), JobConfigurationName: BulkJobConfigurationName,
		ServerID: rec.ServerID, SourceName: rec.SourceName, GroupID: s.GroupID, SourceGroup: s.MatchedGroup,
		Since: stamp(s.ExportSince), TransactionTime: stamp(s.TransactionTime), Files: len(s.Files), Scheduled: s.Scheduled,
		Progress: BulkProgress{ResourcesByType: rec.Resources, VersionsWritten: rec.Versions, ResourcesUnchanged: rec.Unchanged,
			ResourcesRejected: s.Rejected, ErrorsReported: s.Errors, ErrorNotes: s.ErrorNotes, Chunks: s.Chunks, File: s.File, Line: s.Line,
			ProvenanceIDs: rec.ProvenanceIDs, ReferencesRelinked: rec.Relinked, ReferencesToSource: rec.ToSource,
			Retries: rec.Retries, TokenRefreshes: rec.TokenRefreshes, Restarts: rec.Restarts},
	}
	if rec.Reason != "" {
		reason := rec.Reason
		j.FailureReason = &reason
	}
	if j.Progress.ResourcesByType == nil {
		j.Progress.ResourcesByType = map[string]int{}
	}
	if j.Progress.ErrorNotes == nil {
		j.Progress.ErrorNotes = []string{}
	}
	if j.Progress.ProvenanceIDs == nil {
		j.Progress.ProvenanceIDs = []string{}
	}
	return j
}

// BulkMemberOutcome is one member of a job, as GET .../members pages them.
type BulkMemberOutcome struct {
	PatientID string `json:"patientId"`
	// Outcome is pending, matched, notMatched or consentConstrained.
	Outcome string `json:"outcome"`
	// SourcePatient is the member's Patient at the source payer
	// ("Patient/id"), MemberIdentifier the member identifier (system|value)
	// its Patient carries there.
	SourcePatient    string  `json:"sourcePatient,omitempty"`
	MemberIdentifier string  `json:"memberIdentifier,omitempty"`
	LinkedPatient    string  `json:"linkedPatient,omitempty"`
	ResourcesWritten int     `json:"resourcesWritten"`
	TaskID           *string `json:"taskId"`
	Note             string  `json:"note,omitempty"`
}

// BulkMemberPage is a page of a job's members in request order; Next,
// when set, is the URL of the following page.
type BulkMemberPage struct {
	Members []BulkMemberOutcome `json:"members"`
	Next    string              `json:"next,omitempty"`
}

// BulkJobList is a page of a definition's bulk exchange jobs, newest
// first.
type BulkJobList struct {
	BulkJobs []BulkJob `json:"bulkJobs"`
	Next     string    `json:"next,omitempty"`
}

func bulkJobOf(tx *store.Tx, pid, id int64) (*record, error) {
	rec, err := getJob(tx, id)
	if err == errNoJob || (err == nil && (rec.ServerID != pid || rec.Kind != KindBulk)) {
		return nil, errs.E("batch.api", errs.NotFound, fmt.Sprintf("no bulk job %d for OIDC server definition %d", id, pid))
	}
	return rec, err
}

func (a *API) createBulk(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var in BulkRequest
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
	if strings.TrimSpace(srv.SystemClientID) == "" {
		httpapi.WriteError(w, httpapi.Errorf(http.StatusConflict, httpapi.CodeConflict,
			"OIDC server definition %d has no systemClientId: a bulk exchange connects to the source payer as a system; set systemClientId and systemScopes (and check them with POST /api/oidc_servers/%d/system_token)", pid, pid))
		return
	}
	now := time.Now().UTC()
	rec := &record{ServerID: pid, Kind: KindBulk, Status: Starting, SourceBase: normalizeBase(srv.FHIREndpoint), SourceName: srv.Name,
		SourceOrganizationID: srv.OrganizationID, Bulk: &bulkState{Phase: PhaseMatching, GroupID: in.GroupID}}
	if rec.SourceBase == "" {
		fields["fhirEndpoint"] = "the OIDC server definition has no fhirEndpoint"
	}
	if in.Since != "" {
		t, err := time.Parse(time.RFC3339Nano, in.Since)
		switch {
		case err != nil:
			fields["since"] = "must be an instant such as 2024-01-31T00:00:00Z"
		case t.After(now):
			fields["since"] = "must not be in the future"
		default:
			rec.Bulk.Since = t.UTC()
		}
	}
	var members []*bulkMember
	err = a.runner.st.View(r.Context(), func(tx *store.Tx) error {
		switch {
		case len(in.Members) > 0 && in.GroupID != "":
			fields["groupId"] = "give either members or groupId, not both"
		case in.GroupID != "":
			members = groupMembersOf(tx, in.GroupID, srv, fields)
		case len(in.Members) == 0:
			if _, bad := fields["members"]; !bad {
				fields["members"] = "is required (or a groupId): the members to bring over"
			}
		default:
			members = checkMembers(tx, a.runner.st.Registry().Model(), in.Members, fields)
		}
		return nil
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if len(members) > MaxBulkMembers {
		fields["members"] = fmt.Sprintf("has %d members; a bulk job takes at most %d: send several jobs", len(members), MaxBulkMembers)
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	rec.Bulk.Members = len(members)
	if err := a.runner.createBulk(r.Context(), rec, members); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	role, _ := httpapi.RoleFromContext(r.Context())
	a.log.Info("batch: bulk exchange created", "job", rec.ID, "server", pid, "members", len(members), "role", role)
	w.Header().Set("Location", strings.TrimSuffix(r.URL.Path, "/")+"/"+strconv.FormatInt(rec.ID, 10))
	httpapi.WriteJSON(w, http.StatusAccepted, rec.bulkView())
}

// checkMembers checks the listed members and reports each problem under
// its field (members[i].patientId ...).
func checkMembers(tx *store.Tx, model *spec.Model, in []BulkMemberRequest, fields map[string]string) []*bulkMember {
	seen := map[string]int{}
	tasks := map[string]int{}
	var out []*bulkMember
	for i, m := range in {
		at := func(f string) string { return fmt.Sprintf("members[%d].%s", i, f) }
		switch {
		case !validID(m.PatientID):
			fields[at("patientId")] = "must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
		default:
			if j, dup := seen[m.PatientID]; dup {
				fields[at("patientId")] = fmt.Sprintf("Patient/%s is already members[%d]", m.PatientID, j)
			} else if _, err := tx.Read("Patient", m.PatientID); err != nil {
				fields[at("patientId")] = fmt.Sprintf("no Patient/%s on this server: create the member first", m.PatientID)
			}
			seen[m.PatientID] = i
		}
		if why := resourceOf(model, m.CoverageToMatch, "Coverage", true, m.PatientID); why != "" {
			fields[at("coverageToMatch")] = why
		}
		if why := resourceOf(model, m.CoverageToLink, "Coverage", false, m.PatientID); why != "" {
			fields[at("coverageToLink")] = why
		}
		if why := resourceOf(model, m.Consent, "Consent", true, m.PatientID); why != "" {
			fields[at("consent")] = why
		}
		if m.TaskID != "" {
			if !validID(m.TaskID) {
				fields[at("taskId")] = "must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
			} else if j, dup := tasks[m.TaskID]; dup {
				fields[at("taskId")] = fmt.Sprintf("Task/%s is already the Task of members[%d]", m.TaskID, j)
			} else if why := checkTask(tx, m.TaskID, m.PatientID); why != "" {
				fields[at("taskId")] = why
			}
			tasks[m.TaskID] = i
		}
		out = append(out, &bulkMember{PatientID: m.PatientID, TaskID: m.TaskID, CoverageToMatch: m.CoverageToMatch,
			CoverageToLink: m.CoverageToLink, Consent: m.Consent, Outcome: OutcomePending})
	}
	return out
}

// resourceOf says why raw is not a member's resource of type typ as
// $bulk-member-match takes it ("" when it is, or when it is absent and
// not required): a valid FHIR R4 resource of that type whose member
// (Coverage.beneficiary, Consent.patient), when it names one, is our
// Patient member, the MemberPatient sent with it (PDex STU 2.1
// pdex-parameters-multi-member-match-bundle-in).
func resourceOf(model *spec.Model, raw json.RawMessage, typ string, required bool, member string) string {
	if len(raw) == 0 || string(raw) == "null" {
		if required {
			return "is required: a " + typ + " resource"
		}
		return ""
	}
	var m map[string]any
	if json.Unmarshal(raw, &m) != nil || m["resourceType"] != typ {
		return "must be a " + typ + " resource (a JSON object with resourceType " + typ + ")"
	}
	if issues := model.Validate(m); len(issues) > 0 {
		return fmt.Sprintf("is not a valid FHIR R4 %s: %s: %s", typ, issues[0].Path, issues[0].Message)
	}
	field := map[string]string{"Coverage": "beneficiary", "Consent": "patient"}[typ]
	ref, _ := m[field].(map[string]any)
	if r, ok := ref["reference"].(string); ok && member != "" && r != "Patient/"+member {
		return fmt.Sprintf("names %s as its %s; it must be the member's own: Patient/%s", clip(r, 80), field, member)
	}
	return ""
}

// groupMembersOf reads the members of our Group id and, for each, its
// coverage at the source payer (the Coverage of the member whose payor
// names the source: its organizationId or its name), our own Coverage
// (the member's other active Coverage), and the member's active Consent
// (the latest).
func groupMembersOf(tx *store.Tx, id string, srv oidcservers.Server, fields map[string]string) []*bulkMember {
	if !validID(id) {
		fields["groupId"] = "must be a FHIR id"
		return nil
	}
	v, err := tx.Read("Group", id)
	if err != nil {
		fields["groupId"] = fmt.Sprintf("no Group/%s on this server", id)
		return nil
	}
	if owner, ok := authz.OwnerOf(v.JSON); ok {
		// A Group a payer's $bulk-member-match made here is that payer's
		// (PDex STU 2.1 §pdex-161), not a list of members to bring over.
		fields["groupId"] = fmt.Sprintf("Group/%s belongs to the client %s, not to this payer: give a Group of our members", id, clip(owner, 64))
		return nil
	}
	var g struct {
		Member []struct {
			Entity struct {
				Reference string `json:"reference"`
			} `json:"entity"`
			Inactive bool `json:"inactive"`
		} `json:"member"`
	}
	_ = json.Unmarshal(v.JSON, &g)
	var out []*bulkMember
	var missing []string
	seen := map[string]bool{}
	for _, e := range g.Member {
		pid, ok := strings.CutPrefix(e.Entity.Reference, "Patient/")
		if !ok || e.Inactive || !validID(pid) || seen[pid] {
			continue
		}
		seen[pid] = true
		m := &bulkMember{PatientID: pid, Outcome: OutcomePending}
		for _, cid := range tx.CompartmentIDs("Coverage", pid) {
			cv, err := tx.Read("Coverage", cid)
			if err != nil {
				continue
			}
			if paidBy(cv.JSON, srv) {
				m.CoverageToMatch = json.RawMessage(cv.JSON)
			} else if m.CoverageToLink == nil && active(cv.JSON) {
				m.CoverageToLink = json.RawMessage(cv.JSON)
			}
		}
		var latest string
		for _, cid := range tx.CompartmentIDs("Consent", pid) {
			cv, err := tx.Read("Consent", cid)
			if err != nil || !active(cv.JSON) {
				continue
			}
			if u := cv.LastUpdated.Format(time.RFC3339Nano); u > latest {
				latest, m.Consent = u, json.RawMessage(cv.JSON)
			}
		}
		if m.CoverageToMatch == nil || m.Consent == nil {
			missing = append(missing, pid)
			continue
		}
		out = append(out, m)
	}
	switch {
	case len(missing) > 0:
		sort.Strings(missing)
		if len(missing) > 10 {
			missing = append(missing[:10], "…")
		}
		fields["groupId"] = fmt.Sprintf("members of Group/%s lack a Coverage paid by %s or an active Consent: Patient/%s", id, srv.Name, strings.Join(missing, ", Patient/"))
	case len(out) == 0:
		fields["groupId"] = fmt.Sprintf("Group/%s has no active Patient members", id)
	}
	return out
}

// paidBy reports whether a Coverage's payor names the source payer, by
// its organizationId (identifier value) or its name (display).
func paidBy(raw []byte, srv oidcservers.Server) bool {
	var c struct {
		Payor []struct {
			Display    string `json:"display"`
			Identifier struct {
				Value string `json:"value"`
			} `json:"identifier"`
		} `json:"payor"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return false
	}
	for _, p := range c.Payor {
		if (srv.OrganizationID != "" && p.Identifier.Value == srv.OrganizationID) || (srv.Name != "" && strings.EqualFold(p.Display, srv.Name)) {
			return true
		}
	}
	return false
}

func active(raw []byte) bool {
	var r struct {
		Status string `json:"status"`
	}
	return json.Unmarshal(raw, &r) == nil && r.Status == "active"
}

// createBulk stores a new bulk exchange job with its members and hands it
// to the workers once committed. A member's add-payer Task is worked on
// by one job at a time.
func (r *Runner) createBulk(ctx context.Context, rec *record, members []*bulkMember) error {
	return r.st.Write(ctx, func(tx *store.Tx) error {
		active, err := activeJobs(tx)
		if err != nil {
			return err
		}
		tasks := map[string]bool{}
		for _, m := range members {
			if m.TaskID != "" {
				tasks[m.TaskID] = true
			}
		}
		for id := range active {
			other, err := getJob(tx, id)
			if err != nil {
				return err
			}
			if tasks[other.TaskID] {
				return errs.E("batch.create", errs.Conflict, fmt.Sprintf("batch job %d is already working on Task/%s; stop it or wait for it to end", id, other.TaskID))
			}
			if other.Kind != KindBulk || len(tasks) == 0 {
				continue
			}
			if err := eachMember(tx, id, 0, func(_ int, m *bulkMember) (bool, error) {
				if tasks[m.TaskID] {
					return false, errs.E("batch.create", errs.Conflict, fmt.Sprintf("bulk job %d is already working on Task/%s; stop it or wait for it to end", id, m.TaskID))
				}
				return true, nil
			}); err != nil {
				return err
			}
		}
		return r.insertBulk(tx, rec, members, time.Now().UTC())
	})
}

// insertBulk stores a new bulk job and its members in tx, and hands the
// job to the workers once tx commits.
func (r *Runner) insertBulk(tx *store.Tx, rec *record, members []*bulkMember, now time.Time) error {
	seq, err := tx.KV(jobsBucket).NextSequence()
	if err != nil {
		return err
	}
	rec.ID, rec.Created = int64(seq), now
	for i, m := range members {
		if err := putMember(tx, rec.ID, i, m); err != nil {
			return err
		}
	}
	tx.AfterCommit(func() { r.enqueue(rec.ID) })
	return putJob(tx, rec, now)
}

func (a *API) getBulk(w http.ResponseWriter, r *http.Request) {
	pid, id, ok := a.ids(w, r)
	if !ok {
		return
	}
	var rec *record
	if err := a.runner.st.View(r.Context(), func(tx *store.Tx) (err error) {
		rec, err = bulkJobOf(tx, pid, id)
		return err
	}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, rec.bulkView())
}

func (a *API) ids(w http.ResponseWriter, r *http.Request) (pid, id int64, ok bool) {
	pid, err := oidcservers.PIDParam(r)
	if err == nil {
		raw := chi.URLParam(r, "bulkJobId")
		if id, err = strconv.ParseInt(raw, 10, 64); err != nil || id <= 0 {
			err = errs.E("batch.api", errs.NotFound, fmt.Sprintf("no bulk job %q", clip(raw, 40)))
		}
	}
	if err != nil {
		httpapi.WriteError(w, err)
		return 0, 0, false
	}
	return pid, id, true
}

// pageArgs reads count (1-100, default def) and the named cursor (a
// positive number) of a paged list.
func pageArgs(r *http.Request, def int, cursor string, fields map[string]string) (count int, after int64) {
	q := r.URL.Query()
	count = def
	if v := q.Get("count"); v != "" {
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 100 {
			fields["count"] = "must be a whole number from 1 to 100"
		} else {
			count = n
		}
	}
	if v := q.Get(cursor); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err != nil || n < 0 {
			fields[cursor] = "must be a whole number from a next link"
		} else {
			after = n
		}
	}
	return count, after
}

func (a *API) bulkMembers(w http.ResponseWriter, r *http.Request) {
	pid, id, ok := a.ids(w, r)
	if !ok {
		return
	}
	fields := map[string]string{}
	count, from := pageArgs(r, 50, "from", fields)
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	out := BulkMemberPage{Members: []BulkMemberOutcome{}}
	next := -1
	err := a.runner.st.View(r.Context(), func(tx *store.Tx) error {
		if _, err := bulkJobOf(tx, pid, id); err != nil {
			return err
		}
		return eachMember(tx, id, int(min(from, int64(MaxBulkMembers))), func(i int, m *bulkMember) (bool, error) {
			if len(out.Members) == count {
				next = i
				return false, nil
			}
			o := BulkMemberOutcome{PatientID: m.PatientID, Outcome: m.Outcome, MemberIdentifier: m.MemberIdentifier,
				LinkedPatient: m.LinkedPatient, ResourcesWritten: m.Resources, Note: m.Note}
			if m.SourcePatient != "" {
				o.SourcePatient = "Patient/" + m.SourcePatient
			}
			if m.TaskID != "" {
				t := m.TaskID
				o.TaskID = &t
			}
			out.Members = append(out.Members, o)
			return true, nil
		})
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if next >= 0 {
		out.Next = r.URL.Path + "?" + url.Values{"from": {strconv.Itoa(next)}, "count": {strconv.Itoa(count)}}.Encode()
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (a *API) listBulk(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	fields := map[string]string{}
	count, before := pageArgs(r, 20, "before", fields)
	if _, bad := fields["before"]; bad || (r.URL.Query().Get("before") != "" && before < 1) {
		// As the paged list: a job id, from a next link (ids start at 1).
		fields["before"] = "must be a bulk job id"
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	if _, err := a.runner.defs.Get(r.Context(), pid); err != nil && errs.Is(err, errs.NotFound) {
		httpapi.WriteError(w, err)
		return
	}
	out := BulkJobList{BulkJobs: []BulkJob{}}
	var last int64
	more := false
	err = a.runner.st.View(r.Context(), func(tx *store.Tx) error {
		return jobsOf(tx, pid, before, func(id int64, rec *record) (bool, error) {
			if rec.Kind != KindBulk {
				return true, nil
			}
			if len(out.BulkJobs) == count {
				more = true
				return false, nil
			}
			out.BulkJobs = append(out.BulkJobs, rec.bulkView())
			last = id
			return true, nil
		})
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if more {
		out.Next = r.URL.Path + "?" + url.Values{"before": {strconv.FormatInt(last, 10)}, "count": {strconv.Itoa(count)}}.Encode()
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

func (a *API) stopBulk(w http.ResponseWriter, r *http.Request) {
	pid, id, ok := a.ids(w, r)
	if !ok {
		return
	}
	var rec *record
	err := a.runner.st.Write(r.Context(), func(tx *store.Tx) (err error) {
		rec, err = bulkJobOf(tx, pid, id)
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
		return errs.E("batch.stop", errs.Conflict, fmt.Sprintf("bulk job %d has already ended (%s)", id, rec.Status))
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	role, _ := httpapi.RoleFromContext(r.Context())
	a.log.Info("batch: bulk exchange stop requested", "job", id, "server", pid, "role", role)
	httpapi.WriteJSON(w, http.StatusAccepted, rec.bulkView())
}
