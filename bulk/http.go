package bulk

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// The paths below the FHIR base of the status and file URLs.
const (
	statusPath = "/bulkstatus"
	filesPath  = "/bulkfiles"
)

// NDJSON is the media type of the output files.
const NDJSON = "application/fhir+ndjson"

// Register adds the kick-off operations to srv (and so to its
// CapabilityStatement, with their canonical definitions), and the status
// and file URLs below its base.
func (e *Exporter) Register() {
	get := []string{http.MethodGet, http.MethodPost}
	e.srv.AddOperation(&fhir.Operation{Name: "export", System: true, Methods: get, Definition: ExportDefinition,
		Documentation: "Bulk Data export of every resource the client's scopes allow (Bulk Data Access STU 2).",
		Handler:       e.kickoff("system")})
	e.srv.AddOperation(&fhir.Operation{Name: "export", Types: []string{"Patient"}, Type: true, Methods: get, Definition: PatientExportDefinition,
		Documentation: "Bulk Data export of every Patient's compartment.", Handler: e.kickoff("patient")})
	e.srv.AddOperation(&fhir.Operation{Name: "export", Types: []string{"Group"}, Instance: true, Methods: get, Definition: GroupExportDefinition,
		Documentation: "Bulk Data export of the compartments of the Group's members.", Handler: e.kickoff("group")})
	e.srv.AddOperation(&fhir.Operation{Name: "davinci-data-export", Types: []string{"Group"}, Instance: true, Methods: get, Definition: DataExportDefinition,
		Documentation: "With exportType=" + PayerToPayer + ": the PDex payer-to-payer data of the Group's members whose consent holds, as PDex STU 2.1 scopes it (five years of service dates, claims without financial data, current prior authorizations, Provenance).",
		Handler:       e.kickoff("davinci")})
	if e.match != nil {
		e.srv.AddOperation(&fhir.Operation{Name: "bulk-member-match", Types: []string{"Group"}, Type: true,
			Methods: []string{http.MethodPost}, Definition: BulkMemberMatchDefinition,
			Documentation: "Asynchronous (Prefer: respond-async): matches many members at once with the $member-match rules and evaluates each one's consent; the result is the matched, non-matched and consent-constrained Groups, owned by the requesting client, as Group and Parameters NDJSON files.",
			Handler:       e.matchKickoff})
	}
	e.srv.Route(statusPath+"/{job}", http.HandlerFunc(e.status))
	// Bulk Data's file request: "Accept (string, optional, defaults to
	// application/fhir+ndjson)".
	e.srv.RouteProducing(filesPath+"/{job}/{file}", http.HandlerFunc(e.file), NDJSON, "application/ndjson")
}

// Owner names the client a request comes from, to which the jobs it starts
// belong: a registered backend client (SMART Backend Services) by its
// clientId, another token by its issuer and client (or subject), an admin
// token as "admin"; "" on an open server for a request without a token
// (anyone may then follow the job, as anyone may read everything).
func Owner(ctx context.Context) string {
	if t := smart.FromContext(ctx); t != nil {
		return t.Owner()
	}
	if smart.IsAdmin(ctx) {
		return "admin"
	}
	return ""
}

// requireAsync checks the Bulk Data kick-off headers: Prefer: respond-async.
func requireAsync(r *http.Request, op string) error {
	for _, p := range r.Header.Values("Prefer") {
		for _, part := range strings.Split(p, ",") {
			if strings.EqualFold(strings.TrimSpace(part), "respond-async") {
				return nil
			}
		}
	}
	return errs.E(op, errs.Invalid, "this operation runs asynchronously: send the header Prefer: respond-async (Bulk Data Access STU 2, kick-off request)")
}

// kickoff serves the export operations at one level.
func (e *Exporter) kickoff(level string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		const op = "bulk.kickoff"
		if err := requireAsync(r, op); err != nil {
			fhir.WriteError(w, r, err)
			return
		}
		p := fhir.AccessFrom(r.Context())
		if p.Member() {
			fhir.WriteError(w, r, errs.E(op, errs.Permission, "a Bulk Data export reads many members' data: it needs a system token, not one bound to a patient"))
			return
		}
		params, err := e.readParams(r)
		if err != nil {
			fhir.WriteError(w, r, err)
			return
		}
		spec, err := e.parseSpec(r.Context(), level, chi.URLParam(r, "id"), params, p)
		if err != nil {
			fhir.WriteError(w, r, err)
			return
		}
		owner := Owner(r.Context())
		requester := ""
		if p != nil {
			requester = p.Subject
		}
		j := &Job{ID: fhir.NewID(), Kind: KindExport, Owner: owner, Requester: requester, Request: e.requestURL(r),
			TransactionTime: e.now(), State: StateAccepted, Export: spec}
		if err := e.accept(r.Context(), j); err != nil {
			fhir.WriteError(w, r, err)
			return
		}
		e.log.InfoContext(r.Context(), "bulk: export accepted", "job", j.ID, "level", spec.Level, "group", spec.GroupID,
			"types", len(spec.Types), "payer_to_payer", spec.PayerToPayer, "owner", owner)
		e.accepted(w, j)
	}
}

// accept stores a new job, unless its client has too many unfinished
// ones (429).
func (e *Exporter) accept(ctx context.Context, j *Job) error {
	err := e.st.Write(ctx, func(tx *store.Tx) error {
		jobs, err := allJobs(tx)
		if err != nil {
			return err
		}
		n := 0
		for _, o := range jobs {
			if o.active() && o.Owner == j.Owner {
				n++
			}
		}
		if n >= e.cfg.PerClient {
			return errs.E("bulk.kickoff", errs.TooMany, 30*time.Second, fmt.Sprintf(
				"this client already has %d Bulk Data jobs under way, the most allowed at once; try again when one has finished (or cancel one with DELETE on its status URL)", n))
		}
		return putJob(tx, j)
	})
	if err != nil {
		return err
	}
	e.enqueue(j.ID)
	return nil
}

// accepted answers 202 with the status URL (Content-Location).
func (e *Exporter) accepted(w http.ResponseWriter, j *Job) {
	w.Header().Set("Content-Location", e.srv.BaseURL()+statusPath+"/"+j.ID)
	w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
	w.WriteHeader(http.StatusAccepted)
	oo := fhir.Info(fmt.Sprintf("%s accepted; poll %s", j.Kind, e.srv.BaseURL()+statusPath+"/"+j.ID))
	_ = json.NewEncoder(w).Encode(oo)
}

// requestURL is the kick-off URL as the manifest repeats it.
func (e *Exporter) requestURL(r *http.Request) string {
	u := e.srv.BaseURL()
	if b, err := url.Parse(u); err == nil {
		u = b.Scheme + "://" + b.Host + r.URL.EscapedPath()
	}
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	return u
}

// readParams reads the kick-off parameters: the query string of a GET, or
// the Parameters resource of a POST (Bulk Data STU 2), as name -> values.
func (e *Exporter) readParams(r *http.Request) (url.Values, error) {
	const op = "bulk.kickoff"
	if r.Method == http.MethodGet {
		return r.URL.Query(), nil
	}
	out := url.Values{}
	for k, v := range r.URL.Query() {
		out[k] = v
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil {
		return nil, errs.E(op, errs.Invalid, "the request body could not be read", err)
	}
	if len(body) > 1<<20 {
		return nil, errs.E(op, errs.TooLarge, "the kick-off Parameters may be at most 1 MiB")
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return out, nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/fhir+json" && mt != "application/json") {
			return nil, errs.E(op, errs.UnsupportedMedia, "send the kick-off parameters as a Parameters resource in application/fhir+json")
		}
	}
	var pr struct {
		ResourceType string `json:"resourceType"`
		Parameter    []struct {
			Name           string                      `json:"name"`
			ValueString    *string                     `json:"valueString"`
			ValueInstant   *string                     `json:"valueInstant"`
			ValueDateTime  *string                     `json:"valueDateTime"`
			ValueCode      *string                     `json:"valueCode"`
			ValueURI       *string                     `json:"valueUri"`
			ValueCanonical *string                     `json:"valueCanonical"`
			ValueBoolean   *bool                       `json:"valueBoolean"`
			ValueReference *struct{ Reference string } `json:"valueReference"`
		} `json:"parameter"`
	}
	if err := json.Unmarshal(body, &pr); err != nil || pr.ResourceType != "Parameters" {
		return nil, errs.E(op, errs.Invalid, "the body of a POST kick-off must be a Parameters resource (Bulk Data Access STU 2)")
	}
	for i, p := range pr.Parameter {
		var v string
		switch {
		case p.ValueString != nil:
			v = *p.ValueString
		case p.ValueInstant != nil:
			v = *p.ValueInstant
		case p.ValueDateTime != nil:
			v = *p.ValueDateTime
		case p.ValueCode != nil:
			v = *p.ValueCode
		case p.ValueURI != nil:
			v = *p.ValueURI
		case p.ValueCanonical != nil:
			v = *p.ValueCanonical
		case p.ValueBoolean != nil:
			v = strconv.FormatBool(*p.ValueBoolean)
		case p.ValueReference != nil:
			v = p.ValueReference.Reference
		default:
			return nil, errs.E(op, errs.Invalid, fmt.Sprintf("Parameters.parameter[%d] (%s) has no value this operation reads", i, p.Name))
		}
		out.Add(p.Name, v)
	}
	return out, nil
}

// status serves the status URL: GET polls, DELETE cancels.
func (e *Exporter) status(w http.ResponseWriter, r *http.Request) {
	const op = "bulk.status"
	id := chi.URLParam(r, "job")
	j, err := e.ownJob(r, id)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	switch r.Method {
	case http.MethodDelete:
		if err := e.remove(r.Context(), id); err != nil {
			fhir.WriteError(w, r, err)
			return
		}
		e.log.InfoContext(r.Context(), "bulk: job cancelled and deleted", "job", id, "kind", j.Kind)
		w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(fhir.Info("the job is cancelled and its files are deleted"))
		return
	case http.MethodGet, http.MethodHead:
	default:
		fhir.WriteError(w, r, errs.E(op, errs.MethodNotAllowed, "the status URL takes GET (poll) and DELETE (cancel)"))
		return
	}
	switch j.State {
	case StateAccepted, StateRunning:
		w.Header().Set("X-Progress", progress(j))
		w.Header().Set("Retry-After", strconv.Itoa(int((e.cfg.RetryAfter+time.Second-1)/time.Second)))
		w.WriteHeader(http.StatusAccepted)
	case StateFailed:
		// The job failed: a final answer, so its issue code is not one of
		// IssueType's transient codes (transient, exception, timeout...),
		// which tell a client that the poll failed and to retry (Bulk
		// Data export, "Response - Error Status").
		fhir.WriteError(w, r, errs.E(op, errs.Internal, j.Failure, errs.Issue{Code: "processing", Message: j.Failure}))
	case StateComplete:
		w.Header().Set("Expires", j.Expires.UTC().Format(http.TimeFormat))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(e.manifest(j))
	}
}

// progress is the X-Progress of an unfinished job.
func progress(j *Job) string {
	switch {
	case j.Kind == KindMatch && j.Match != nil:
		return fmt.Sprintf("matching: %d of %d members done", j.Match.Matched+j.Match.NotMatched+j.Match.ConsentConstrained, j.Members)
	case j.State == StateAccepted || j.Cursor.Step == 0:
		return "queued"
	case j.Export != nil && j.Cursor.Type < len(j.Export.Types):
		return fmt.Sprintf("exporting %s (type %d of %d): %d resources written", j.Export.Types[j.Cursor.Type], j.Cursor.Type+1, len(j.Export.Types), j.Written)
	}
	return fmt.Sprintf("%d resources written", j.Written)
}

// Manifest is the Bulk Data complete-status body.
type Manifest struct {
	TransactionTime     string           `json:"transactionTime"`
	Request             string           `json:"request"`
	RequiresAccessToken bool             `json:"requiresAccessToken"`
	Output              []ManifestOutput `json:"output"`
	Error               []ManifestOutput `json:"error"`
}

// ManifestOutput is one file of a manifest.
type ManifestOutput struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int64  `json:"count,omitempty"`
}

func (e *Exporter) manifest(j *Job) *Manifest {
	m := &Manifest{TransactionTime: j.TransactionTime.Format(time.RFC3339Nano), Request: j.Request,
		RequiresAccessToken: true, Output: []ManifestOutput{}, Error: []ManifestOutput{}}
	for _, f := range j.Files {
		if f.Count > 0 {
			m.Output = append(m.Output, ManifestOutput{Type: f.Type, URL: e.fileURL(j.ID, f.Name), Count: f.Count})
		}
	}
	for _, f := range j.Errors {
		if f.Count > 0 {
			m.Error = append(m.Error, ManifestOutput{Type: f.Type, URL: e.fileURL(j.ID, f.Name), Count: f.Count})
		}
	}
	return m
}

func (e *Exporter) fileURL(job, name string) string {
	return e.srv.BaseURL() + filesPath + "/" + job + "/" + name
}

// ownJob returns job id if the request's client owns it; NotFound
// otherwise, in the same words, so that another client learns nothing.
func (e *Exporter) ownJob(r *http.Request, id string) (*Job, error) {
	var j *Job
	if err := e.st.View(r.Context(), func(tx *store.Tx) (err error) {
		j, err = getJob(tx, id)
		return err
	}); err != nil {
		return nil, err
	}
	if j == nil || j.Owner != Owner(r.Context()) {
		return nil, errs.E("bulk.status", errs.NotFound, "there is no Bulk Data job at this URL (it may have been cancelled or have expired)")
	}
	return j, nil
}

// file serves an output or error file of a complete job, to its owner.
func (e *Exporter) file(w http.ResponseWriter, r *http.Request) {
	const op = "bulk.file"
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		fhir.WriteError(w, r, errs.E(op, errs.MethodNotAllowed, "output files are read with GET"))
		return
	}
	j, err := e.ownJob(r, chi.URLParam(r, "job"))
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	name := chi.URLParam(r, "file")
	idx := slices.IndexFunc(append(slices.Clone(j.Files), j.Errors...), func(f File) bool { return f.Name == name })
	if j.State != StateComplete || idx < 0 {
		fhir.WriteError(w, r, errs.E(op, errs.NotFound, "there is no such file in this job's manifest"))
		return
	}
	f, err := os.Open(filepath.Join(e.jobDir(j.ID), name))
	if err != nil {
		fhir.WriteError(w, r, errs.E(op, errs.NotFound, "the file is no longer available", err))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", NDJSON)
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// checkReadable refuses a principal whose scopes do not read typ.
func checkReadable(p *authz.Principal, typ string) error {
	if p.CanRead(typ) {
		return nil
	}
	return errs.E("bulk.kickoff", errs.Permission, fmt.Sprintf("the token's scopes do not allow reading %s resources (system/%s.rs)", typ, typ))
}
