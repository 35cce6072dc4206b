package batch

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/bulk"
	"github.com/p2pserver/p2pserver/fhir/fhirjson"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/provenance"
)

// bulkRun is what a bulk exchange job holds in this process between its
// steps: the connection to the source payer and the file download in
// progress.
type bulkRun struct {
	client *bulk.Client
	dl     *download
	// bySource maps a matched member's Patient id at the source to the
	// member's index; byLocal the local id of the ingested copy of that
	// Patient to the same index; patients our member ids by index.
	bySource map[string]int
	byLocal  map[string]int
	patients map[int]string
	attempts int

	// What the last chunks wrote, for the chunks prepared ahead to check
	// against; seq counts the chunks written.
	mu     sync.Mutex
	seq    int64
	recent []map[string]bool
}

// download is a file being streamed: its lines arrive in chunks.
type download struct {
	file   int
	chunks chan *chunk
	cancel context.CancelFunc
	done   chan struct{}
}

// chunk is up to Config.BulkChunk lines of a file: lines first+1 to
// first+len(lines). The last message of a download has end set, and err
// when the download broke off.
type chunk struct {
	first int64
	lines [][]byte
	end   bool
	err   error
	// prep is the chunk prepared ahead (data files).
	prep *preparedChunk
}

// advanceBulk does one step of a bulk exchange job.
func (r *Runner) advanceBulk(rn *run, rec *record) (time.Duration, bool) {
	switch rec.Status {
	case Stopping:
		return r.endBulk(rn, rec, Stopped, "stopped on request before it finished")
	case Starting:
		if err := r.beginBulk(rec); err != nil {
			return r.writeFailed(rn, err)
		}
		return 0, false
	}
	if rn.bulk == nil {
		if reason := r.openBulk(rn, rec); reason != "" {
			return r.endBulk(rn, rec, Failed, reason)
		}
	}
	switch rec.Bulk.Phase {
	case PhaseMatching:
		return r.bulkMatch(rn, rec)
	case PhaseExporting:
		return r.bulkExport(rn, rec)
	case PhaseDownloading:
		return r.bulkDownload(rn, rec)
	}
	return r.endBulk(rn, rec, Completed, "")
}

// openBulk connects a job to its source payer with this server's system
// token (SMART Backend Services); it returns why it cannot.
func (r *Runner) openBulk(rn *run, rec *record) string {
	srv, err := r.defs.Get(rn.ctx, rec.ServerID)
	if err != nil {
		if errs.Is(err, errs.NotFound) {
			return fmt.Sprintf("the OIDC server definition %d no longer exists", rec.ServerID)
		}
		msg, _ := errs.Public(err)
		return fmt.Sprintf("the OIDC server definition %d cannot be read: %s", rec.ServerID, msg)
	}
	ts, err := oidcservers.NewSystemTokenSource(srv, r.cfg.Signer, r.client)
	if err != nil {
		msg, _ := errs.Public(err)
		return fmt.Sprintf("the OIDC server definition %d has no usable system access: %s", rec.ServerID, msg)
	}
	var secrets []string
	if srv.ClientSecret != "" {
		secrets = append(secrets, srv.ClientSecret, url.QueryEscape(srv.ClientSecret),
			base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(srv.SystemClientID)+":"+url.QueryEscape(srv.ClientSecret))))
	}
	rn.bulk = &bulkRun{client: &bulk.Client{HTTP: r.bulkHTTP, Tokens: &countedTokens{ts: ts, r: r, job: rec.ID, secrets: secrets},
		MinPoll: r.cfg.BulkMinPoll, MaxPoll: r.cfg.BulkMaxPoll}}
	return ""
}

// countedTokens counts the system token's renewals after a 401 in the
// job's tokenRefreshes, and tells why the source payer's token endpoint
// gave no token only through tokenError.
type countedTokens struct {
	ts  *oidcservers.SystemTokenSource
	r   *Runner
	job int64
	// secrets are the definition's client secret as it is sent (plain,
	// form-encoded, and in the Basic credentials).
	secrets []string
}

func (c *countedTokens) Token(ctx context.Context) (oidcservers.SystemToken, error) {
	tok, err := c.ts.Token(ctx)
	if err != nil {
		return tok, tokenError(err, c.secrets)
	}
	return tok, nil
}

// tokenError is err, from the source payer's token endpoint, as a job may
// show and log it: its message with every credential the answer may echo
// (the client assertion, the client secret, whole or cut short where the
// endpoint's error_description was clipped) replaced (bulk.Redact), at
// most 500 bytes, of the same kind and Retry-After. The cause, which holds
// the endpoint's whole answer, is left out.
func tokenError(err error, secrets []string) error {
	msg, _ := errs.Public(err)
	msg = bulk.Redact(msg, secrets...)
	for _, sec := range secrets {
		// A secret cut short by a clip ends in "…".
		for k := len(sec) - 1; k >= 6; k-- {
			msg = strings.ReplaceAll(msg, sec[:k]+"…", "[redacted]…")
		}
	}
	return errs.E("batch.system_token", errs.KindOf(err), clip(msg, 500), errs.RetryAfterOf(err))
}

func (c *countedTokens) Invalidate(tok string) {
	c.ts.Invalidate(tok)
	c.r.update(c.job, func(rec *record) { rec.TokenRefreshes++ })
}

// beginBulk marks a job STARTED and the members' Tasks in progress.
func (r *Runner) beginBulk(rec *record) error {
	now := time.Now().UTC()
	if err := r.eachMemberTask(rec, func(tx *store.Tx, m *bulkMember) error {
		return r.moveTaskOf(tx, m.TaskID, bulkPrefix(rec.ID), bulkAttempt(rec, m, Started, "", now), taskChange{status: "in-progress",
			business: fmt.Sprintf("Your data is being copied from %s.", rec.SourceName)}, now)
	}); err != nil {
		return err
	}
	return r.st.Write(r.ctx, func(tx *store.Tx) error {
		if err := r.checkLease(tx, rec.ID); err != nil {
			return err
		}
		cur, err := getJob(tx, rec.ID)
		if err != nil || cur.Status != Starting {
			return err
		}
		cur.Status, cur.Started = Started, now
		r.log.Info("batch: bulk exchange started", "job", rec.ID, "server", rec.ServerID, "members", cur.Bulk.Members)
		return putJob(tx, cur, now)
	})
}

// eachMemberTask calls f for every member with an add-payer Task, each in
// a transaction of its own; a Task that cannot be moved is noted on its
// member and the others go on.
func (r *Runner) eachMemberTask(rec *record, f func(tx *store.Tx, m *bulkMember) error) error {
	var todo []int
	if err := r.st.View(r.ctx, func(tx *store.Tx) error {
		return eachMember(tx, rec.ID, 0, func(i int, m *bulkMember) (bool, error) {
			if m.TaskID != "" {
				todo = append(todo, i)
			}
			return true, nil
		})
	}); err != nil {
		return err
	}
	for _, i := range todo {
		var te *taskError
		err := r.st.Write(r.ctx, func(tx *store.Tx) error {
			if err := r.checkLease(tx, rec.ID); err != nil {
				return err
			}
			m, err := getMember(tx, rec.ID, i)
			if err != nil {
				return err
			}
			return f(tx, m)
		})
		if errors.As(err, &te) {
			r.log.Warn("batch: a member's add-payer Task could not be moved", "job", rec.ID, "err", te.err)
			err = r.st.Write(r.ctx, func(tx *store.Tx) error {
				m, err := getMember(tx, rec.ID, i)
				if err != nil {
					return err
				}
				m.Note = "the add-payer Task could not be moved: " + publicText(te.err)
				return putMember(tx, rec.ID, i, m)
			})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func bulkPrefix(id int64) string { return fmt.Sprintf("bulk job %d (", id) }

// bulkAttempt is a bulk job's line in a member's Task output.
func bulkAttempt(rec *record, m *bulkMember, status Status, reason string, now time.Time) string {
	s := fmt.Sprintf("bulk job %d (/api/oidc_servers/%d/bulk_job/%d): %s %s", rec.ID, rec.ServerID, rec.ID, status, now.UTC().Format(time.RFC3339))
	switch {
	case status == Completed && m.Outcome == OutcomeMatched:
		s += fmt.Sprintf(", %d records", m.Resources)
	case status == Completed:
		s += ": " + m.Outcome
	case reason != "":
		s += ": " + reason
	}
	return s
}

// bulkUpdate changes a bulk job's record in a transaction of its own; it
// reports whether the job is still active.
func (r *Runner) bulkUpdate(id int64, change func(tx *store.Tx, rec *record) error) (bool, error) {
	active := false
	err := r.st.Write(r.ctx, func(tx *store.Tx) error {
		if err := r.checkLease(tx, id); err != nil {
			return err
		}
		rec, err := getJob(tx, id)
		if err != nil || !rec.Status.Active() || rec.Status == Stopping {
			return err
		}
		active = true
		if err := change(tx, rec); err != nil {
			return err
		}
		return putJob(tx, rec, time.Now().UTC())
	})
	return active, err
}

// answered records that the source payer answered: its downtime ends.
func answered(rec *record) {
	rec.Bulk.DownSince = time.Time{}
}

// sourceFault decides what a failed request to the source payer means for
// the job: a source that does not answer (or answers 429, 5xx) is tried
// again with backoff for up to Config.BulkRetryFor since it stopped
// answering; anything else fails the job with the reason.
func (r *Runner) sourceFault(rn *run, rec *record, what string, err error) (time.Duration, bool) {
	if rn.ctx.Err() != nil {
		return 0, false // stop request or shutdown
	}
	msg, _ := errs.Public(err)
	if msg == "" {
		msg = err.Error()
	}
	switch errs.KindOf(err) {
	case errs.Transient, errs.Timeout:
		now := time.Now().UTC()
		down := rec.Bulk.DownSince
		if down.IsZero() {
			down = now
		}
		if now.Sub(down) >= r.cfg.BulkRetryFor {
			return r.endBulk(rn, rec, Failed, fmt.Sprintf("%s: the source payer has not answered for %s, the longest a bulk exchange waits (-bulk-retry-for): %s",
				what, r.cfg.BulkRetryFor, clip(msg, 500)))
		}
		rn.bulk.attempts++
		d := r.backoff(rn.bulk.attempts, errs.RetryAfterOf(err))
		if _, err := r.bulkUpdate(rec.ID, func(_ *store.Tx, rec *record) error {
			rec.Retries++
			if rec.Bulk.DownSince.IsZero() {
				rec.Bulk.DownSince = down
			}
			return nil
		}); err != nil {
			return r.writeFailed(rn, err)
		}
		r.log.Warn("batch: bulk exchange: the source payer did not answer; retrying", "job", rec.ID, "in", d, "reason", msg)
		return d, false
	case errs.Permission:
		return r.endBulk(rn, rec, Failed, fmt.Sprintf("%s: the source payer refused this server's system access: %s", what, clip(msg, 500)))
	}
	return r.endBulk(rn, rec, Failed, fmt.Sprintf("%s: %s", what, clip(msg, 500)))
}

// pollDelay is the wait before the next poll of a status URL: its
// Retry-After within Config.BulkMinPoll and BulkMaxPoll.
func (r *Runner) pollDelay(ra time.Duration) time.Duration {
	return min(max(ra, r.cfg.BulkMinPoll), r.cfg.BulkMaxPoll)
}

// restartable reports whether the job may ask the source again for what
// it no longer holds (a cancelled or expired status URL, a file gone).
func restartable(rec *record) bool { return rec.Restarts < 2 }

// asyncRequest is one of a bulk job's asynchronous requests at the
// source (Bulk Data Access STU 2, "Bulk Data Kick-off Request" and "Bulk
// Data Status Request"): $bulk-member-match or $davinci-data-export.
type asyncRequest struct {
	// op names the operation in failure reasons: "$bulk-member-match".
	op string
	// status and asked are where the job keeps the request's status URL
	// and when the source was first found still working on it.
	status func(s *bulkState) *string
	asked  func(s *bulkState) *time.Time
	// kickOff builds the request, and what the job records with the
	// status URL once the source has accepted it (record may be nil).
	kickOff func() (k kickOff, err error)
}

// kickOff is an asynchronous request to make: method, URL and body, and
// what to record with its status URL.
type kickOff struct {
	method, url string
	body        []byte
	record      func(s *bulkState)
}

// awaitAsync is a step of a phase waiting for the source's asynchronous
// request a: kick it off (202 with Content-Location, the status URL kept
// in the job) when the job has no status URL yet, else poll the status
// URL, the next poll due as its Retry-After asks (see stillWorking). A
// status URL the source no longer has (404) has the request made again
// (see askAgain). ok reports that the request is complete, with its
// status st; else the step ends with wait and end.
func (r *Runner) awaitAsync(rn *run, rec *record, a asyncRequest) (st bulk.Status, ok bool, wait time.Duration, end bool) {
	b := rn.bulk
	statusURL := *a.status(rec.Bulk)
	if statusURL == "" {
		k, err := a.kickOff()
		if err != nil {
			wait, end = r.writeFailed(rn, err)
			return st, false, wait, end
		}
		status, err := b.client.KickOff(rn.ctx, k.method, k.url, k.body)
		if err != nil {
			wait, end = r.sourceFault(rn, rec, "the "+a.op+" request", err)
			return st, false, wait, end
		}
		if why := r.sameSource(rec, status); why != "" {
			wait, end = r.endBulk(rn, rec, Failed, "the "+a.op+" status URL "+why)
			return st, false, wait, end
		}
		b.attempts = 0
		if _, err := r.bulkUpdate(rec.ID, func(_ *store.Tx, rec *record) error {
			answered(rec)
			*a.status(rec.Bulk) = status
			if k.record != nil {
				k.record(rec.Bulk)
			}
			return nil
		}); err != nil {
			wait, end = r.writeFailed(rn, err)
			return st, false, wait, end
		}
		return st, false, r.pollDelay(0), false
	}
	st, err := b.client.Poll(rn.ctx, statusURL)
	if errs.KindOf(err) == errs.NotFound {
		wait, end = r.askAgain(rn, rec, "the source payer no longer has the "+a.op+" request (cancelled or expired)", func(s *bulkState) {
			*a.status(s), *a.asked(s) = "", time.Time{}
		}, err)
		return st, false, wait, end
	}
	if err != nil {
		wait, end = r.sourceFault(rn, rec, "the "+a.op+" status", err)
		return st, false, wait, end
	}
	b.attempts = 0
	if !st.Done {
		wait, end = r.stillWorking(rn, rec, a.op, statusURL, st, a.asked)
		return st, false, wait, end
	}
	return st, true, 0, false
}

// bulkMatch is a step of the matching phase: kick off
// Group/$bulk-member-match (PDex STU 2.1), or poll it.
func (r *Runner) bulkMatch(rn *run, rec *record) (time.Duration, bool) {
	st, ok, wait, end := r.awaitAsync(rn, rec, asyncRequest{
		op:     "$bulk-member-match",
		status: func(s *bulkState) *string { return &s.MatchStatus },
		asked:  func(s *bulkState) *time.Time { return &s.MatchAsked },
		kickOff: func() (kickOff, error) {
			body, err := r.matchRequest(rec)
			return kickOff{method: "POST", url: rec.SourceBase + "/Group/$bulk-member-match", body: body}, err
		},
	})
	if !ok {
		return wait, end
	}
	groups, err := r.matchResult(rn, rec, st)
	if err != nil {
		return r.sourceFault(rn, rec, "the $bulk-member-match result", err)
	}
	if err := r.recordMatch(rec, groups); err != nil {
		var pe *pageError
		if errors.As(err, &pe) {
			return r.endBulk(rn, rec, Failed, pe.Reason)
		}
		return r.writeFailed(rn, err)
	}
	return 0, false
}

// stillWorking handles a poll that found the source still working on a
// request (202) at statusURL: the next poll is due as its Retry-After
// asks; but past Config.BulkWaitFor since the source was first found
// working on it (asked), the request is cancelled there (Bulk Data
// Access STU 2, "Delete a Bulk Data Request") and the job fails.
func (r *Runner) stillWorking(rn *run, rec *record, what, statusURL string, st bulk.Status, asked func(*bulkState) *time.Time) (time.Duration, bool) {
	now := time.Now().UTC()
	if since := *asked(rec.Bulk); !since.IsZero() && now.Sub(since) >= r.cfg.BulkWaitFor {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 10*time.Second)
		_ = rn.bulk.client.Cancel(ctx, statusURL)
		cancel()
		progress := ""
		if st.Progress != "" {
			progress = "; its last progress: " + clip(bulk.Redact(st.Progress), 200)
		}
		return r.endBulk(rn, rec, Failed, fmt.Sprintf("the source payer's %s was still in progress after %s, the longest a bulk exchange waits for it (-bulk-wait-for), and was cancelled there%s",
			what, r.cfg.BulkWaitFor, progress))
	}
	if _, err := r.bulkUpdate(rec.ID, func(_ *store.Tx, rec *record) error {
		answered(rec)
		if t := asked(rec.Bulk); t.IsZero() {
			*t = now
		}
		return nil
	}); err != nil {
		return r.writeFailed(rn, err)
	}
	return r.pollDelay(st.RetryAfter), false
}

// askAgain handles a status URL or file the source no longer has: the
// request is made again (twice at most in a job), else the job fails.
func (r *Runner) askAgain(rn *run, rec *record, reason string, reset func(*bulkState), err error) (time.Duration, bool) {
	msg, _ := errs.Public(err)
	if !restartable(rec) {
		return r.endBulk(rn, rec, Failed, fmt.Sprintf("%s, for the third time in this job: %s", reason, clip(msg, 300)))
	}
	r.closeDownload(rn)
	if _, err := r.bulkUpdate(rec.ID, func(_ *store.Tx, rec *record) error {
		answered(rec)
		rec.Restarts++
		reset(rec.Bulk)
		return nil
	}); err != nil {
		return r.writeFailed(rn, err)
	}
	r.log.Warn("batch: bulk exchange: asking the source payer again", "job", rec.ID, "reason", reason)
	return 0, false
}

// sameSource says why a status or file URL the source gave may not be
// used with this server's token, "" when it may: it must be on the origin
// of the source's fhirEndpoint.
func (r *Runner) sameSource(rec *record, raw string) string {
	u, err1 := url.Parse(raw)
	b, err2 := url.Parse(rec.SourceBase)
	if err1 != nil || err2 != nil || !sameOrigin(u, b) {
		return fmt.Sprintf("%s is not on the origin of the source payer's fhirEndpoint (%s); this server's token is only sent there", clip(raw, 300), rec.SourceBase)
	}
	return ""
}

// matchRequest builds the multi-member-match Parameters (PDex STU 2.1
// pdex-parameters-multi-member-match-bundle-in): one MemberBundle per
// member with our Patient (its id is how the result names the member
// again), the coverage to match, the coverage to link and the consent.
func (r *Runner) matchRequest(rec *record) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(`{"resourceType":"Parameters","parameter":[`)
	n := 0
	err := r.st.View(r.ctx, func(tx *store.Tx) error {
		return eachMember(tx, rec.ID, 0, func(_ int, m *bulkMember) (bool, error) {
			if m.Outcome != OutcomePending {
				return true, nil
			}
			patient, err := memberPatient(tx, m.PatientID)
			if err != nil {
				return false, err
			}
			parts := []map[string]any{{"name": "MemberPatient", "resource": patient}}
			add := func(name string, raw json.RawMessage) {
				if len(raw) > 0 {
					parts = append(parts, map[string]any{"name": name, "resource": raw})
				}
			}
			add("CoverageToMatch", m.CoverageToMatch)
			add("CoverageToLink", m.CoverageToLink)
			add("Consent", m.Consent)
			if n > 0 {
				buf.WriteByte(',')
			}
			// The resources go as they are (json.Marshal would escape
			// <, > and & in their strings).
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			if err := enc.Encode(map[string]any{"name": "MemberBundle", "part": parts}); err != nil {
				return false, err
			}
			buf.Truncate(buf.Len() - 1) // Encode's newline
			n++
			return true, nil
		})
	})
	buf.WriteString("]}")
	return buf.Bytes(), err
}

// memberPatient is our member's Patient as sent in a MemberBundle: the
// demographics the source matches on, under our id, without our meta,
// text and link; the rest is the stored JSON as written (member order,
// decimals, string escapes).
func memberPatient(tx *store.Tx, id string) (json.RawMessage, error) {
	v, err := tx.Read("Patient", id)
	if err != nil {
		// Gone since the job was made: sent with the id only, it matches
		// nothing at the source.
		return json.Marshal(map[string]any{"resourceType": "Patient", "id": id})
	}
	return fhirjson.EditObject(v.JSON, func(name string, val []byte) ([]byte, error) {
		if name == "meta" || name == "text" || name == "link" {
			return nil, nil
		}
		return val, nil
	})
}

// matchGroup is one Group of a $bulk-member-match result.
type matchGroup struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Code         struct {
		Coding []struct {
			System string `json:"system"`
			Code   string `json:"code"`
		} `json:"coding"`
	} `json:"code"`
	Contained []struct {
		ResourceType string `json:"resourceType"`
		ID           string `json:"id"`
	} `json:"contained"`
	Member []struct {
		Entity struct {
			Reference string `json:"reference"`
			Extension []struct {
				URL            string `json:"url"`
				ValueReference struct {
					Reference string `json:"reference"`
				} `json:"valueReference"`
			} `json:"extension"`
		} `json:"entity"`
	} `json:"member"`
}

// outcome is the PDex result code of g: match, nomatch or consentconstraint.
func (g *matchGroup) outcome() string {
	for _, c := range g.Code.Coding {
		if c.System == bulk.MatchResultSystem {
			return c.Code
		}
	}
	return ""
}

// matchResult reads the Groups of a complete $bulk-member-match: from the
// Parameters of the completed status body, or from the manifest's files
// (a Parameters file holding them, as the reference implementation
// answers, else the Group file).
func (r *Runner) matchResult(rn *run, rec *record, st bulk.Status) ([]matchGroup, error) {
	const op = "batch.bulk-member-match"
	if st.Parameters != nil {
		return groupsOfParameters(st.Parameters)
	}
	m := st.Manifest
	var file *bulk.ManifestOutput
	for i := range m.Output {
		if m.Output[i].Type == "Parameters" {
			file = &m.Output[i]
			break
		}
	}
	if file == nil {
		for i := range m.Output {
			if m.Output[i].Type == "Group" {
				file = &m.Output[i]
				break
			}
		}
	}
	if file == nil {
		return nil, errs.E(op, errs.Unprocessable, "the complete $bulk-member-match names neither a Parameters nor a Group file")
	}
	if why := r.sameSource(rec, file.URL); why != "" && m.RequiresAccessToken {
		return nil, errs.E(op, errs.Unprocessable, "the result file "+why)
	}
	var groups []matchGroup
	_, err := rn.bulk.client.Download(rn.ctx, file.URL, m.RequiresAccessToken, 0, func(line []byte) error {
		if file.Type == "Parameters" {
			gs, err := groupsOfParameters(line)
			groups = append(groups, gs...)
			return err
		}
		var g matchGroup
		if err := json.Unmarshal(line, &g); err != nil || g.ResourceType != "Group" {
			return errs.E(op, errs.Unprocessable, "a line of the $bulk-member-match Group file is not a Group")
		}
		groups = append(groups, g)
		return nil
	})
	return groups, err
}

// groupsOfParameters reads the Groups of a multi-member-match result
// Parameters (MatchedMembers, NonMatchedMembers, ConsentConstrainedMembers).
func groupsOfParameters(raw []byte) ([]matchGroup, error) {
	var p struct {
		ResourceType string `json:"resourceType"`
		Parameter    []struct {
			Name     string          `json:"name"`
			Resource json.RawMessage `json:"resource"`
		} `json:"parameter"`
	}
	if err := json.Unmarshal(raw, &p); err != nil || p.ResourceType != "Parameters" {
		return nil, errs.E("batch.bulk-member-match", errs.Unprocessable, "the $bulk-member-match result is not a Parameters resource")
	}
	var out []matchGroup
	for _, pa := range p.Parameter {
		var g matchGroup
		if json.Unmarshal(pa.Resource, &g) == nil && g.ResourceType == "Group" {
			out = append(out, g)
		}
	}
	return out, nil
}

// recordMatch records each member's outcome from the result Groups: a
// member is found again through the contained Patient the Group names
// for it (base-ext-match-parameters), whose id is our Patient id; a
// member the result does not name is not matched.
func (r *Runner) recordMatch(rec *record, groups []matchGroup) error {
	type result struct {
		outcome, source string
	}
	byPatient := map[string]result{}
	matchedGroup := ""
	for _, g := range groups {
		var outcome string
		switch g.outcome() {
		case "match":
			outcome, matchedGroup = OutcomeMatched, g.ID
		case "nomatch":
			outcome = OutcomeNotMatched
		case "consentconstraint":
			outcome = OutcomeConsentConstrained
		default:
			continue
		}
		contained := map[string]bool{}
		for _, c := range g.Contained {
			contained[c.ID] = true
		}
		for _, m := range g.Member {
			submitted := ""
			for _, ext := range m.Entity.Extension {
				if ext.URL == bulk.MatchParametersExtension {
					submitted = strings.TrimPrefix(ext.ValueReference.Reference, "#")
				}
			}
			if submitted == "" && strings.HasPrefix(m.Entity.Reference, "#") {
				submitted = strings.TrimPrefix(m.Entity.Reference, "#")
			}
			if submitted == "" || !contained[submitted] {
				continue
			}
			res := result{outcome: outcome}
			if outcome == OutcomeMatched {
				src, ok := strings.CutPrefix(m.Entity.Reference, "Patient/")
				if !ok || !validID(src) {
					continue
				}
				res.source = src
			}
			byPatient[submitted] = res
		}
	}
	// One Patient at the source for several of our members: whose data
	// it is cannot be told, so none of them is matched (and refuse keeps
	// that Patient's data out).
	claimed := map[string][]string{}
	for p, res := range byPatient {
		if res.outcome == OutcomeMatched {
			claimed[res.source] = append(claimed[res.source], p)
		}
	}
	shared := map[string]string{}
	for src, ps := range claimed {
		if len(ps) > 1 {
			sort.Strings(ps)
			for _, p := range ps {
				shared[p] = fmt.Sprintf("the source payer's $bulk-member-match result names the same Patient (Patient/%s) for members Patient/%s: whose data it is cannot be told", clip(src, 64), strings.Join(ps, ", Patient/"))
			}
		}
	}
	now := time.Now().UTC()
	_, err := r.bulkUpdate(rec.ID, func(tx *store.Tx, rec *record) error {
		s := rec.Bulk
		s.Matched, s.NotMatched, s.ConsentConstrained = 0, 0, 0
		var changed []int
		var members []*bulkMember
		if err := eachMember(tx, rec.ID, 0, func(i int, m *bulkMember) (bool, error) {
			res, ok := byPatient[m.PatientID]
			switch {
			case !ok:
				m.Outcome, m.Note = OutcomeNotMatched, "the source payer's $bulk-member-match result does not name this member"
			case shared[m.PatientID] != "":
				m.Outcome, m.Note = OutcomeNotMatched, clip(shared[m.PatientID], 500)
			default:
				m.Outcome, m.SourcePatient = res.outcome, res.source
			}
			switch m.Outcome {
			case OutcomeMatched:
				s.Matched++
			case OutcomeNotMatched:
				s.NotMatched++
			case OutcomeConsentConstrained:
				s.ConsentConstrained++
			}
			changed, members = append(changed, i), append(members, m)
			return true, nil
		}); err != nil {
			return err
		}
		for k, i := range changed {
			if err := putMember(tx, rec.ID, i, members[k]); err != nil {
				return err
			}
		}
		answered(rec)
		s.MatchedGroup = matchedGroup
		s.Phase = PhaseExporting
		if s.Matched == 0 {
			s.Phase = PhaseDone
		} else if matchedGroup == "" {
			return pageErrorf("the source payer's $bulk-member-match result matched %d members but has no matched Group to export", s.Matched)
		}
		r.log.Info("batch: bulk exchange: members matched", "job", rec.ID, "matched", s.Matched, "not_matched", s.NotMatched,
			"consent_constrained", s.ConsentConstrained, "group", matchedGroup, "at", now)
		return nil
	})
	return err
}

// FiveYears is how far back the first payer-to-payer pull of a member
// asks for data (PDex STU 2.1: data of service since 2016-01-01, at most
// the last five years).
const FiveYears = 5 * 365 * 24 * time.Hour

// exportSince is the _since of a job's export: the one asked for; else
// the earliest last transactionTime of its matched members at this source
// (each later pull asks only for what changed, PDex STU 2.1 concurrent
// coverage); five years back when one of them was never pulled.
func (r *Runner) exportSince(tx *store.Tx, rec *record, now time.Time) (time.Time, error) {
	if !rec.Bulk.Since.IsZero() {
		return rec.Bulk.Since, nil
	}
	var since time.Time
	first := false
	err := eachMember(tx, rec.ID, 0, func(_ int, m *bulkMember) (bool, error) {
		if m.Outcome != OutcomeMatched {
			return true, nil
		}
		p, ok := getPull(tx, rec.ServerID, m.PatientID)
		if !ok {
			first = true
			return false, nil
		}
		if since.IsZero() || p.TransactionTime.Before(since) {
			since = p.TransactionTime
		}
		return true, nil
	})
	if first || since.IsZero() {
		return now.Add(-FiveYears), err
	}
	return since, err
}

// bulkExport is a step of the exporting phase: kick off
// Group/{matched}/$davinci-data-export with exportType payer-to-payer,
// or poll it.
func (r *Runner) bulkExport(rn *run, rec *record) (time.Duration, bool) {
	st, ok, wait, end := r.awaitAsync(rn, rec, asyncRequest{
		op:     "$davinci-data-export",
		status: func(s *bulkState) *string { return &s.ExportStatus },
		asked:  func(s *bulkState) *time.Time { return &s.ExportAsked },
		kickOff: func() (kickOff, error) {
			var since time.Time
			if err := r.st.View(r.ctx, func(tx *store.Tx) (err error) {
				since, err = r.exportSince(tx, rec, time.Now().UTC())
				return err
			}); err != nil {
				return kickOff{}, err
			}
			q := url.Values{"exportType": {bulk.PayerToPayer}, "_since": {since.UTC().Format(time.RFC3339)}}
			u := rec.SourceBase + "/Group/" + url.PathEscape(rec.Bulk.MatchedGroup) + "/$davinci-data-export?" + q.Encode()
			// Taken before the request: the source's transactionTime is
			// never earlier (see below).
			at := time.Now().UTC()
			return kickOff{method: "GET", url: u, record: func(s *bulkState) { s.ExportSince, s.ExportKickOff = since, at }}, nil
		},
	})
	if !ok {
		return wait, end
	}
	if st.Manifest == nil {
		return r.endBulk(rn, rec, Failed, "the source payer completed the $davinci-data-export without a manifest")
	}
	m := st.Manifest
	tt, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		return r.endBulk(rn, rec, Failed, fmt.Sprintf("the source payer's export manifest has no usable transactionTime (%q)", clip(m.TransactionTime, 60)))
	}
	if k := rec.Bulk.ExportKickOff; !k.IsZero() && tt.After(k) {
		// transactionTime is the source's time when the export ran, and
		// the next pull's _since: a clock (or manifest) ahead of ours
		// would make later pulls miss what changes until then. Our own
		// time of the kick-off is never later than that moment (an
		// earlier _since only asks again for what is unchanged here).
		if tt.Sub(k) > time.Minute {
			r.log.Warn("batch: bulk exchange: the export's transactionTime is later than its kick-off here; the kick-off's time is kept", "job", rec.ID,
				"transaction_time", clip(m.TransactionTime, 60), "kick_off", k)
		}
		tt = k
	}
	var files []bulkFile
	for _, list := range []struct {
		out []bulk.ManifestOutput
		err bool
	}{{m.Error, true}, {m.Output, false}} {
		for _, o := range list.out {
			if why := r.sameSource(rec, o.URL); why != "" && m.RequiresAccessToken {
				return r.endBulk(rn, rec, Failed, "the export manifest's file "+why)
			}
			files = append(files, bulkFile{Type: o.Type, URL: o.URL, Count: o.Count, Error: list.err})
		}
	}
	if _, err := r.bulkUpdate(rec.ID, func(_ *store.Tx, rec *record) error {
		answered(rec)
		s := rec.Bulk
		s.TransactionTime, s.RequiresToken, s.Files = tt.UTC(), m.RequiresAccessToken, files
		s.File, s.Line, s.FilesDone, s.Phase = 0, 0, 0, PhaseDownloading
		return nil
	}); err != nil {
		return r.writeFailed(rn, err)
	}
	r.log.Info("batch: bulk exchange: export complete at the source", "job", rec.ID, "files", len(files))
	return 0, false
}

// closeDownload ends the run's download in progress, if any, and waits
// for its goroutine.
func (r *Runner) closeDownload(rn *run) {
	if rn.bulk == nil || rn.bulk.dl == nil {
		return
	}
	rn.bulk.dl.cancel()
	<-rn.bulk.dl.done
	rn.bulk.dl = nil
}

// bulkChunkBytes ends a chunk before Config.BulkChunk lines when its
// lines reach that size: memory holds about three chunks, also when an
// old payer's lines are large (bulk.MaxLine each).
const bulkChunkBytes = 8 << 20

// openDownload starts streaming file i of the job from line skip on, in
// a goroutine that hands over chunks of Config.BulkChunk lines (fewer
// when they reach bulkChunkBytes): at most two chunks are held while one
// is written.
func (r *Runner) openDownload(rn *run, rec *record, i int, skip int64) *download {
	ctx, cancel := context.WithCancel(rn.ctx)
	d := &download{file: i, chunks: make(chan *chunk), cancel: cancel, done: make(chan struct{})}
	f := rec.Bulk.Files[i]
	client, withToken, size := rn.bulk.client, rec.Bulk.RequiresToken, r.cfg.BulkChunk
	b, base := rn.bulk, rec.SourceBase
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(d.done)
		send := func(c *chunk) bool {
			if !f.Error && len(c.lines) > 0 {
				c.prep = r.prepareChunk(b, base, f, c)
			}
			select {
			case d.chunks <- c:
				return true
			case <-ctx.Done():
				return false
			}
		}
		cur := &chunk{first: skip}
		held := 0
		n, err := client.Download(ctx, f.URL, withToken, skip, func(line []byte) error {
			cur.lines = append(cur.lines, bytes.Clone(line))
			held += len(line)
			if len(cur.lines) == size || held >= bulkChunkBytes {
				if !send(cur) {
					return ctx.Err()
				}
				cur, held = &chunk{first: cur.first + int64(len(cur.lines))}, 0
			}
			return nil
		})
		if err == nil && n < skip {
			err = errs.E("batch.bulk-download", errs.Unprocessable, fmt.Sprintf("the file %s has %d lines, fewer than the %d already ingested from it", f.URL, n, skip))
		}
		if len(cur.lines) > 0 && err == nil {
			if !send(cur) {
				return
			}
			cur = &chunk{first: cur.first + int64(len(cur.lines))}
		}
		cur.lines, cur.end, cur.err = nil, true, err
		send(cur)
	}()
	return d
}

// bulkStepBudget is how long a step of a download goes on before it lets
// the other jobs have the worker.
const bulkStepBudget = 2 * time.Second

// bulkDownload is a step of the downloading phase: ingest the chunks of
// the current file as they arrive, for up to bulkStepBudget.
func (r *Runner) bulkDownload(rn *run, rec *record) (time.Duration, bool) {
	b := rn.bulk
	s := rec.Bulk
	if s.File >= len(s.Files) {
		r.closeDownload(rn)
		return r.endBulk(rn, rec, Completed, "")
	}
	if b.dl != nil && b.dl.file != s.File {
		r.closeDownload(rn)
	}
	if b.bySource == nil {
		if err := r.loadMatched(rn, rec); err != nil {
			return r.writeFailed(rn, err)
		}
	}
	if b.dl == nil {
		b.dl = r.openDownload(rn, rec, s.File, s.Line)
	}
	began := time.Now()
	for time.Since(began) < bulkStepBudget {
		var c *chunk
		select {
		case c = <-b.dl.chunks:
		case <-rn.ctx.Done():
			return 0, false
		}
		f := s.Files[s.File]
		if c.end {
			r.closeDownload(rn)
			if c.err != nil {
				if errs.KindOf(c.err) == errs.NotFound {
					return r.askAgain(rn, rec, fmt.Sprintf("the source payer no longer has the export's file %s", clip(f.URL, 300)),
						func(s *bulkState) {
							s.ExportStatus, s.ExportAsked, s.Files, s.File, s.Line, s.Phase = "", time.Time{}, nil, 0, 0, PhaseExporting
						}, c.err)
				}
				return r.sourceFault(rn, rec, fmt.Sprintf("the download of %s (from line %d)", clip(f.URL, 300), s.Line+1), c.err)
			}
			b.attempts = 0
			_, err := r.bulkUpdate(rec.ID, func(_ *store.Tx, rec *record) error {
				answered(rec)
				rec.Bulk.File++
				rec.Bulk.Line = 0
				rec.Bulk.FilesDone++
				return nil
			})
			if err != nil {
				return r.writeFailed(rn, err)
			}
			return 0, false
		}
		var err error
		if f.Error {
			err = r.errorChunk(rn, rec, c)
		} else {
			err = r.ingestChunk(rn, rec, f, c)
		}
		var pe *pageError
		switch {
		case errors.As(err, &pe):
			r.closeDownload(rn)
			return r.endBulk(rn, rec, Failed, pe.Reason)
		case errors.Is(err, errJobEnded):
			r.closeDownload(rn)
			return 0, false // stopped meanwhile: the next step ends it
		case err != nil:
			r.closeDownload(rn)
			return r.writeFailed(rn, err)
		}
		b.attempts = 0
		s.Line = c.first + int64(len(c.lines))
	}
	return 0, false
}

// loadMatched reads the matched members' source Patient ids, to link and
// count what each chunk brings for them.
func (r *Runner) loadMatched(rn *run, rec *record) error {
	b := rn.bulk
	b.bySource, b.byLocal, b.patients = map[string]int{}, map[string]int{}, map[int]string{}
	return r.st.View(r.ctx, func(tx *store.Tx) error {
		return eachMember(tx, rec.ID, 0, func(i int, m *bulkMember) (bool, error) {
			if m.Outcome == OutcomeMatched && m.SourcePatient != "" {
				b.bySource[m.SourcePatient] = i
				b.byLocal["Patient/"+localID(rec.SourceBase, "Patient", m.SourcePatient)] = i
				b.patients[i] = m.PatientID
			}
			return true, nil
		})
	})
}

// preparedChunk is a chunk of a data file decoded, validated and
// rewritten for the store, ready to be written: its resources (pg), the
// member each is the data of (owner, -1 for none), the members' source
// Patients (members), the lines left out (rejected, notes).
type preparedChunk struct {
	pg              *preparedPage
	owner           []int
	members         map[*pageResource]int
	rejected        int
	notes           []string
	seq             int64 // chunks written when it was prepared
	began, prepared time.Time
	err             error
	written         map[string]bool // set once written: the local refs it wrote
}

// remember keeps what a chunk wrote, for the chunks prepared before it
// was written to check against (conflicts).
func (b *bulkRun) remember(written map[string]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	b.recent = append(b.recent, written)
	if len(b.recent) > 4 {
		b.recent = b.recent[1:]
	}
}

// conflicts reports whether a chunk written after cp was prepared wrote
// what cp's preparation read: a resource of cp, or one its references
// name (which would then be here, and local).
func (b *bulkRun) conflicts(cp *preparedChunk) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	since := int(b.seq - cp.seq)
	if since == 0 {
		return false
	}
	if since > len(b.recent) {
		return true
	}
	for _, written := range b.recent[len(b.recent)-since:] {
		for _, res := range cp.pg.resources {
			if written[res.localRef()] {
				return true
			}
		}
		for _, p := range cp.pg.pending {
			if written[p.target] {
				return true
			}
		}
	}
	return false
}

// prepareChunk does all the work of a chunk that needs no writer:
// decoding and validating each line (a line that is not a valid FHIR R4
// resource is left out and noted), finding whose data each resource is,
// and rewriting them for the store against what it holds now. It runs
// ahead, in the download's goroutine, while the chunk before is written.
func (r *Runner) prepareChunk(b *bulkRun, base string, f bulkFile, c *chunk) *preparedChunk {
	b.mu.Lock()
	cp := &preparedChunk{seq: b.seq, began: time.Now()}
	b.mu.Unlock()
	pp := &preparer{model: r.st.Registry().Model(), base: base, workers: r.cfg.PrepWorkers}
	src := fmt.Sprintf("%s (lines %d-%d)", f.URL, c.first+1, c.first+int64(len(c.lines)))
	pg := &preparedPage{url: src, skipped: map[string]int{}}
	res := make([]*pageResource, len(c.lines))
	bad := make([]error, len(c.lines))
	pp.parallel(len(c.lines), func(i int) {
		res[i], bad[i] = pp.decode(i, "", c.lines[i])
		if bad[i] == nil {
			if why := b.refuse(r.st.Registry(), f, res[i]); why != "" {
				res[i], bad[i] = nil, fmt.Errorf("entry %d %s", i, why)
			}
		}
	})
	for i, err := range bad {
		if err != nil {
			cp.rejected++
			if len(cp.notes) < 3 {
				cp.notes = append(cp.notes, fmt.Sprintf("line %d of %s: %s", c.first+int64(i)+1, clip(f.URL, 200), strings.TrimPrefix(err.Error(), fmt.Sprintf("entry %d ", i))))
			}
		}
	}
	pp.collect(pg, res)
	cp.owner = make([]int, len(pg.resources))
	cp.members = map[*pageResource]int{}
	for k, res := range pg.resources {
		cp.owner[k] = -1
		if res.typ == "Patient" {
			if i, ok := b.bySource[res.srcID]; ok {
				cp.owner[k], cp.members[res] = i, i
				continue
			}
		}
		for _, t := range res.refs {
			if i, ok := b.byLocal[t]; ok {
				cp.owner[k] = i
				break
			}
		}
	}
	present, current, err := r.lookup(pg, base)
	if err != nil {
		cp.err = err
		return cp
	}
	var amend func(*pageResource)
	if r.linker.Enabled() && len(cp.members) > 0 {
		amend = func(res *pageResource) {
			if i, ok := cp.members[res]; ok {
				_, _ = r.linker.LinkIngested(res.doc, b.patients[i])
			}
		}
	}
	pp.finish(pg, present, current, r.st, amend)
	cp.pg, cp.prepared = pg, time.Now()
	return cp
}

// ingestChunk writes one chunk of a data file in one transaction, by the
// ingest rules of every job (local ids, no duplicates on a re-run,
// references rewritten, MDM link of each member's source Patient), with
// one Provenance naming the source payer and the checkpoint (the line
// after the chunk). A resource that is not valid FHIR R4 is left out and
// counted; the rest of the chunk is written.
func (r *Runner) ingestChunk(rn *run, rec *record, f bulkFile, c *chunk) error {
	b := rn.bulk
	cp := c.prep
	if cp == nil || cp.err != nil || b.conflicts(cp) {
		// Not prepared ahead, or prepared against what a chunk written
		// since has changed: prepared again now.
		cp = r.prepareChunk(b, rec.SourceBase, f, c)
	}
	if cp.err != nil {
		return cp.err
	}
	c.prep = nil
	pg, owner, members, rejected, notes := cp.pg, cp.owner, cp.members, cp.rejected, cp.notes
	began, prepared := cp.began, cp.prepared
	defer func() {
		if cp.written != nil {
			b.remember(cp.written)
		}
	}()
	by := mdm.Assigner{Name: rec.SourceName, OrganizationID: rec.SourceOrganizationID}
	writing := time.Now()
	defer func() {
		r.log.Debug("batch: bulk exchange: chunk written", "job", rec.ID, "file", f.Type, "first", c.first, "lines", len(c.lines),
			"prepared", prepared.Sub(began).Round(time.Millisecond), "waited", writing.Sub(prepared).Round(time.Millisecond),
			"written", time.Since(writing).Round(time.Millisecond))
	}()
	return r.st.Write(r.ctx, func(tx *store.Tx) error {
		now := time.Now().UTC()
		if err := r.checkLease(tx, rec.ID); err != nil {
			return err
		}
		cur, err := getJob(tx, rec.ID)
		if err != nil {
			return err
		}
		if !cur.Status.Active() || cur.Status == Stopping {
			return errJobEnded
		}
		s := cur.Bulk
		if s.File != rec.Bulk.File || s.Line != c.first {
			return fmt.Errorf("batch: bulk job %d: the checkpoint moved (file %d line %d) under chunk at line %d", rec.ID, s.File, s.Line, c.first)
		}
		w, err := r.writeResources(tx, cur.ID, pg)
		if err != nil {
			return err
		}
		counts := map[int]int{}
		for k := range pg.resources {
			if owner[k] >= 0 {
				counts[owner[k]]++
			}
		}
		links := map[int]memberLink{}
		linked := map[int]string{} // the local id of each member's source Patient
		if r.linker.Enabled() {
			for res, i := range members {
				l, err := r.linkTo(tx, b.patients[i], by, res)
				if err != nil {
					return &mdmError{err}
				}
				links[i], linked[i] = l, res.localID
				if _, ok := counts[i]; !ok {
					counts[i] = 0
				}
			}
		}
		for i, n := range counts {
			m, err := getMember(tx, cur.ID, i)
			if err != nil {
				return err
			}
			m.Resources += n
			if l, ok := links[i]; ok {
				if l.linked {
					m.LinkedPatient = "Patient/" + linked[i]
				}
				if l.ident != "" {
					m.MemberIdentifier = l.ident
				}
				if l.note != "" {
					m.Note = l.note
				}
			}
			if err := putMember(tx, cur.ID, i, m); err != nil {
				return err
			}
		}
		s.Chunks++
		if err := r.recordWritten(tx, cur, provenance.IngestedPage{
			ID:          fmt.Sprintf("bulk-%d-chunk-%d", cur.ID, s.Chunks),
			Recorded:    now,
			PageURL:     f.URL,
			Description: fmt.Sprintf("lines %d-%d of the %s file of bulk exchange job %d", c.first+1, c.first+int64(len(c.lines)), f.Type, cur.ID),
		}, pg, w); err != nil {
			return err
		}
		cp.written = make(map[string]bool, len(w.written))
		for _, res := range w.written {
			cp.written[res.Type+"/"+res.ID] = true
		}
		s.Rejected += rejected
		for _, n := range notes {
			if len(s.ErrorNotes) < maxErrorNotes {
				s.ErrorNotes = append(s.ErrorNotes, n)
			}
		}
		s.Line = c.first + int64(len(c.lines))
		answered(cur)
		return putJob(tx, cur, now)
	})
}

// errorChunk reads a chunk of an error file (OperationOutcome NDJSON): a
// member the source left out of the export (its consent no longer holds,
// PDex STU 2.1 §pdex-154) is consent-constrained, and what the data
// files hold of them is refused (the error files are read first); every
// other issue is counted and the first ones kept.
func (r *Runner) errorChunk(rn *run, rec *record, c *chunk) error {
	b := rn.bulk
	type issue struct {
		Diagnostics string   `json:"diagnostics"`
		Expression  []string `json:"expression"`
		Code        string   `json:"code"`
	}
	excluded := map[int]string{}
	var notes []string
	for _, line := range c.lines {
		var oo struct {
			ResourceType string  `json:"resourceType"`
			Issue        []issue `json:"issue"`
		}
		if json.Unmarshal(line, &oo) != nil || oo.ResourceType != "OperationOutcome" {
			notes = append(notes, "a line of the error file is not an OperationOutcome")
			continue
		}
		for _, is := range oo.Issue {
			member := -1
			for _, e := range is.Expression {
				if id, ok := strings.CutPrefix(e, "Patient/"); ok {
					if i, ok := b.bySource[id]; ok {
						member = i
					}
				}
			}
			diagnostics := bulk.Redact(is.Diagnostics)
			if member >= 0 && is.Code == "suppressed" {
				excluded[member] = clip(diagnostics, 300)
				continue
			}
			notes = append(notes, clip(strings.TrimSpace(is.Code+": "+diagnostics), 300))
		}
	}
	err := r.st.Write(r.ctx, func(tx *store.Tx) error {
		if err := r.checkLease(tx, rec.ID); err != nil {
			return err
		}
		cur, err := getJob(tx, rec.ID)
		if err != nil {
			return err
		}
		if !cur.Status.Active() || cur.Status == Stopping {
			return errJobEnded
		}
		s := cur.Bulk
		for i, why := range excluded {
			m, err := getMember(tx, cur.ID, i)
			if err != nil {
				return err
			}
			if m.Outcome == OutcomeMatched {
				m.Outcome = OutcomeConsentConstrained
				s.Matched--
				s.ConsentConstrained++
			}
			m.Note = "the source payer left this member out of the export: " + why
			if err := putMember(tx, cur.ID, i, m); err != nil {
				return err
			}
		}
		s.Errors += len(notes)
		for _, n := range notes {
			if len(s.ErrorNotes) < maxErrorNotes {
				s.ErrorNotes = append(s.ErrorNotes, n)
			}
		}
		s.Line = c.first + int64(len(c.lines))
		answered(cur)
		return putJob(tx, cur, time.Now().UTC())
	})
	if err == nil {
		// The data files come after the error files: what they hold of an
		// excluded member is refused (refuse).
		for i := range excluded {
			for src, j := range b.bySource {
				if j == i {
					delete(b.bySource, src)
				}
			}
			for ref, j := range b.byLocal {
				if j == i {
					delete(b.byLocal, ref)
				}
			}
		}
	}
	return err
}

// endBulk ends a bulk exchange job: the references still waiting are
// settled, a complete pull is remembered for each member (its
// transactionTime is the next pull's _since), each member's Task moves
// (completed with the records copied; failed, in words the member
// understands, when the source did not find them or could not honour
// their consent; left open with the attempt noted when the job failed or
// was stopped), and the source's export is cancelled when the job did
// not complete.
func (r *Runner) endBulk(rn *run, rec *record, status Status, reason string) (time.Duration, bool) {
	r.closeDownload(rn)
	if status == Stopped && rn.bulk != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 10*time.Second)
		for _, u := range []string{rec.Bulk.ExportStatus, rec.Bulk.MatchStatus} {
			if u != "" {
				_ = rn.bulk.client.Cancel(ctx, u)
			}
		}
		cancel()
	}
	now := time.Now().UTC()
	err := r.eachMemberTask(rec, func(tx *store.Tx, m *bulkMember) error {
		line := bulkAttempt(rec, m, status, reason, now)
		var ch taskChange
		if status == Completed {
			switch m.Outcome {
			case OutcomeMatched:
				ch = taskChange{status: "completed", business: fmt.Sprintf("Your data from %s has been copied (%d records).", rec.SourceName, m.Resources)}
			case OutcomeConsentConstrained:
				ch = taskChange{status: "failed", reason: "the source payer could not accept the member's consent",
					business: fmt.Sprintf("We could not copy your data from %s: it could not accept the permission you gave for it to share your data with us. Please check the dates and the plans named in your permission, then make a new request.", rec.SourceName)}
			default:
				ch = taskChange{status: "failed", reason: "the source payer did not find the member",
					business: fmt.Sprintf("We could not copy your data from %s: it did not find you among its members with the coverage details you gave. Please check the member id and plan of your old coverage, then make a new request.", rec.SourceName)}
			}
		}
		return r.moveTaskOf(tx, m.TaskID, bulkPrefix(rec.ID), line, ch, now)
	})
	if err != nil {
		return r.writeFailed(rn, err)
	}
	var cur *record
	err = r.st.Write(r.ctx, func(tx *store.Tx) (err error) {
		var ok bool
		if cur, ok, err = r.jobToEnd(tx, rec.ID, status); !ok {
			return err
		}
		toSource, relinked, err := r.settle(tx, cur.ID)
		if err != nil {
			return err
		}
		cur.ToSource += toSource
		cur.Relinked += relinked
		if status == Completed {
			cur.Bulk.Phase = PhaseDone
			if err := eachMember(tx, cur.ID, 0, func(_ int, m *bulkMember) (bool, error) {
				if m.Outcome != OutcomeMatched {
					return true, nil
				}
				return true, putPull(tx, cur.ServerID, m.PatientID, &bulkPull{TransactionTime: cur.Bulk.TransactionTime, Job: cur.ID,
					CoverageToMatch: m.CoverageToMatch, CoverageToLink: m.CoverageToLink, Consent: m.Consent, TaskID: m.TaskID})
			}); err != nil {
				return err
			}
			if cur.Bulk.Matched > 0 {
				if err := scheduleAfterPull(tx, cur.ServerID, now); err != nil {
					return err
				}
			}
		}
		cur.Status, cur.Ended, cur.Reason = status, now, reason
		if l := r.heldLease(cur.ID); l != nil {
			if err := l.ReleaseTx(tx); err != nil {
				return err
			}
		}
		return putJob(tx, cur, now)
	})
	if err != nil {
		return r.writeFailed(rn, err)
	}
	if cur != nil && !cur.Status.Active() {
		args := []any{"job", cur.ID, "status", cur.Status, "matched", cur.Bulk.Matched, "resources", cur.total(), "chunks", cur.Bulk.Chunks}
		if cur.Status == Failed {
			r.log.Warn("batch: bulk exchange failed", append(args, "reason", cur.Reason)...)
		} else {
			r.log.Info("batch: bulk exchange ended", args...)
		}
	}
	return 0, true
}

// bulkIngestTypes are the types a bulk exchange ingests: what a
// payer-to-payer export carries (bulk.P2PTypes: the member's Patient and
// Coverage, the US Core clinical types, claims and encounters without
// financial data, Provenance) and the resources these refer to that are
// no one's record (US Core Organization, Practitioner, PractitionerRole,
// Location, Medication). A line of any other type (a Task, a Consent, a
// Group, a Subscription...) is refused: it is not the member's data, and
// some would act here (an add-payer Task starts this payer's workflow and
// its emails).
var bulkIngestTypes = func() map[string]bool {
	m := map[string]bool{"Organization": true, "Practitioner": true, "PractitionerRole": true, "Location": true, "Medication": true}
	for _, t := range bulk.P2PTypes {
		m[t] = true
	}
	return m
}()

// refuse says why a resource of file f is not ingested ("" when it is):
// a file holds resources of its type only (Bulk Data Access STU 2,
// "Complete Status": "Each file item SHALL contain resources of only one
// type"); the type must be one a payer-to-payer exchange carries
// (bulkIngestTypes); a Patient must be the source Patient of a member
// matched with their consent in force; and a resource of the Patient
// compartment may name no other Patient at the source than those (PDex
// STU 2.1: the data of the members who opted in, and of them only,
// whatever the source's files hold).
func (b *bulkRun) refuse(reg *search.Registry, f bulkFile, res *pageResource) string {
	switch {
	case res.typ != f.Type:
		return fmt.Sprintf("is a %s in the %s file, which holds resources of that type only", res.typ, clip(f.Type, 64))
	case !bulkIngestTypes[res.typ]:
		return fmt.Sprintf("is a %s, which is not payer-to-payer data", res.typ)
	case res.typ == "Patient":
		if _, ok := b.bySource[res.srcID]; !ok {
			return fmt.Sprintf("(Patient/%s) is not the Patient of a member matched with their consent", clip(res.srcID, 64))
		}
	case reg.InPatientCompartment(res.typ):
		for _, t := range res.refs {
			if _, ok := b.byLocal[t]; !ok && strings.HasPrefix(t, "Patient/") {
				return fmt.Sprintf("(%s/%s) is the data of a Patient at the source who is not a member matched with their consent", res.typ, clip(res.srcID, 64))
			}
		}
	}
	return ""
}
