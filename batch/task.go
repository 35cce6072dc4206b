package batch

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// The add-payer Task a job may be linked to (P2P module guide, "Add payer
// request").
const (
	p2pCodeSystem = "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes"
	addPayerCode  = "p2p-request-add-provider-id"
)

// taskError is a failure to move the job's Task. The job goes on without
// it: the data matters more than the Task, and the problem is reported in
// the job's taskNote.
type taskError struct{ err error }

func (e *taskError) Error() string { return "move the add-payer Task: " + e.err.Error() }
func (e *taskError) Unwrap() error { return e.err }

// openTaskStatuses are the Task statuses a job may take a Task from: the
// request is not finished.
var openTaskStatuses = map[string]bool{
	"requested": true, "received": true, "accepted": true, "ready": true, "in-progress": true, "on-hold": true, "draft": true,
}

// checkTask tells why Task/id cannot be linked to a job for the member
// Patient/memberID, or "" when it can.
func checkTask(tx *store.Tx, id, memberID string) string {
	v, err := tx.Read("Task", id)
	if err != nil {
		return fmt.Sprintf("no Task/%s on this server", id)
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		return fmt.Sprintf("Task/%s cannot be read", id)
	}
	if !hasCoding(m["code"], p2pCodeSystem, addPayerCode) {
		return fmt.Sprintf("Task/%s is not an add-payer request (code %s)", id, addPayerCode)
	}
	if st, _ := m["status"].(string); !openTaskStatuses[st] {
		return fmt.Sprintf("Task/%s is %s; a job can only be linked to an open request", id, st)
	}
	if memberID != "" {
		req, _ := m["requester"].(map[string]any)
		if ref, _ := req["reference"].(string); ref != "Patient/"+memberID {
			return fmt.Sprintf("Task/%s was requested by %s, not by the member Patient/%s", id, orNone(ref), memberID)
		}
	}
	return ""
}

// taskEnded tells why a job linked to Task/id must not copy more of the
// member's data: the request has ended without it (the member cancelled
// it, the staff rejected, failed or completed it, or it was deleted). ""
// when the job has no Task or the request is still open.
func taskEnded(tx *store.Tx, id string) string {
	if id == "" {
		return ""
	}
	v, err := tx.Read("Task", id)
	if err != nil {
		return fmt.Sprintf("the add-payer request Task/%s is gone (deleted); nothing more was copied", id)
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		return ""
	}
	if st, _ := m["status"].(string); !openTaskStatuses[st] {
		return fmt.Sprintf("the add-payer request Task/%s was %s while the job ran; nothing more was copied", id, st)
	}
	return ""
}

func orNone(s string) string {
	if s == "" {
		return "nobody"
	}
	return s
}

func hasCoding(concept any, system, code string) bool {
	c, _ := concept.(map[string]any)
	codings, _ := c["coding"].([]any)
	for _, raw := range codings {
		cd, _ := raw.(map[string]any)
		if cd["system"] == system && cd["code"] == code {
			return true
		}
	}
	return false
}

// AttemptSystem and AttemptCode type the Task.output entry each job linked
// to an add-payer Task keeps there: the history of the attempts to bring
// the member's data over, one entry per job, whose valueString reads
// "batch job <id> (/api/oidc_servers/<pid>/batch_job/<id>): <STATUS> <time>"
// and, for a failure, the reason.
const (
	AttemptSystem = "http://payer-to-payer-exchange/CodeSystem/p2p-batch-job"
	AttemptCode   = "batch-job"
)

// taskChange is what a job writes to its Task: a new status ("" keeps
// it) with businessStatus and statusReason in words, and always its own
// line in Task.output.
type taskChange struct {
	status, business, reason string
}

// attempt is the job's line in its Task's output.
func (rec *record) attempt(now time.Time) string {
	s := fmt.Sprintf("batch job %d (/api/oidc_servers/%d/batch_job/%d): %s %s", rec.ID, rec.ServerID, rec.ID, rec.Status, now.UTC().Format(time.RFC3339))
	switch {
	case rec.Status == Completed:
		s += fmt.Sprintf(", %d records", rec.total())
	case rec.Reason != "":
		s += ": " + rec.Reason
	}
	return s
}

// moveTask writes ch to the job's Task, through the FHIR server so that
// the Task's validators run and its Subscription tells the member of a
// new status. A Task still requested or received is accepted first when
// the state machine does not allow the direct step to in-progress.
func (r *Runner) moveTask(tx *store.Tx, rec *record, ch taskChange, now time.Time) error {
	if rec.TaskID == "" {
		return nil
	}
	return r.moveTaskOf(tx, rec.TaskID, fmt.Sprintf("batch job %d (", rec.ID), rec.attempt(now), ch, now)
}

// moveTaskOf is moveTask for Task id, whose output line of the job starts
// with prefix and reads line.
func (r *Runner) moveTaskOf(tx *store.Tx, id, prefix, line string, ch taskChange, now time.Time) error {
	err := r.putTask(tx, id, prefix, ch, line, now)
	if err != nil && ch.status == "in-progress" {
		if cur := r.taskStatus(tx, id); cur == "requested" || cur == "received" {
			if r.putTask(tx, id, prefix, taskChange{status: "accepted", business: ch.business}, "", now) == nil {
				err = r.putTask(tx, id, prefix, ch, line, now)
			}
		}
	}
	if err != nil {
		return &taskError{err}
	}
	return nil
}

func (r *Runner) taskStatus(tx *store.Tx, id string) string {
	v, err := tx.Read("Task", id)
	if err != nil {
		return ""
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		return ""
	}
	s, _ := m["status"].(string)
	return s
}

// putTask applies ch and the job's output line (none when "") to the
// Task, unless nothing would change.
func (r *Runner) putTask(tx *store.Tx, id, prefix string, ch taskChange, line string, now time.Time) error {
	v, err := tx.Read("Task", id)
	if err != nil {
		return err
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		return errs.E("batch.task", errs.Internal, err)
	}
	doc := &store.Doc{Type: "Task", ID: id, Map: m, JSON: v.JSON}
	type set struct {
		key string
		val any
	}
	var sets []set
	if ch.status != "" {
		bs, _ := m["businessStatus"].(map[string]any)
		if m["status"] != ch.status || bs["text"] != ch.business {
			sets = append(sets, set{"status", ch.status}, set{"businessStatus", map[string]any{"text": ch.business}})
		}
		if ch.reason != "" {
			sets = append(sets, set{"statusReason", map[string]any{"text": ch.reason}})
		}
	}
	if line != "" {
		if out, changed := withAttempt(m["output"], prefix, line); changed {
			sets = append(sets, set{"output", out})
		}
	}
	if len(sets) == 0 {
		return nil
	}
	sets = append(sets, set{"lastModified", now.UTC().Format("2006-01-02T15:04:05.000Z07:00")})
	for _, s := range sets {
		if err := doc.Set(s.key, s.val); err != nil {
			return errs.E("batch.task", errs.Internal, err)
		}
	}
	_, err = r.fhir.Put(tx, doc, v.VersionID)
	return err
}

// withAttempt returns Task.output with the line of the job (the one that
// starts with prefix) set to line: its
// entry replaced, or appended; changed is false when it is there already.
func withAttempt(output any, prefix, line string) ([]any, bool) {
	list, _ := output.([]any)
	out := make([]any, 0, len(list)+1)
	found, changed := false, true
	for _, e := range list {
		em, _ := e.(map[string]any)
		if v, _ := em["valueString"].(string); !found && hasCoding(em["type"], AttemptSystem, AttemptCode) && strings.HasPrefix(v, prefix) {
			found, changed = true, v != line
			e = map[string]any{"type": em["type"], "valueString": line}
		}
		out = append(out, e)
	}
	if !found {
		out = append(out, map[string]any{
			"type":        map[string]any{"coding": []any{map[string]any{"system": AttemptSystem, "code": AttemptCode, "display": "P2P batch job"}}},
			"valueString": line,
		})
	}
	return out, changed
}

func decodeMap(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, fmt.Errorf("not a JSON object")
	}
	return m, nil
}

// jobWriteKey marks the context of the runner's own writes: only they may
// add or change the attempts in a Task's output.
type jobWriteKey struct{}

// jobWriting reports whether ctx is the context of the runner's writes.
func jobWriting(ctx context.Context) bool {
	v, _ := ctx.Value(jobWriteKey{}).(bool)
	return v
}

// keepAttempts is the Task validator that keeps the history of attempts:
// the Task.output entries typed AttemptSystem|AttemptCode are written by
// the server's batch jobs only. Any other write of a Task (a portal, a
// member cancelling their request, an admin, a transaction entry) keeps
// the stored ones: those it leaves out are put back, after the outputs it
// sends, and one it adds or changes is refused with 422, so that the
// history can neither be lost nor forged.
func keepAttempts(tx *store.Tx, doc *store.Doc, prev *store.Version) error {
	if jobWriting(tx.Context()) {
		return nil
	}
	var stored []map[string]any
	if prev != nil && bytes.Contains(prev.JSON, []byte(AttemptSystem)) {
		pm, err := decodeMap(prev.JSON)
		if err != nil {
			return errs.E("batch.task", errs.Internal, err)
		}
		for _, e := range listOfMaps(pm["output"]) {
			if isAttempt(e) {
				stored = append(stored, e)
			}
		}
	}
	sent, _ := doc.Map["output"].([]any)
	if len(stored) == 0 && !slices.ContainsFunc(sent, isAttempt) {
		return nil
	}
	used := make([]bool, len(stored))
	var issues []errs.Issue
	out := make([]any, 0, len(sent)+len(stored))
	for i, raw := range sent {
		e, _ := raw.(map[string]any)
		if !isAttempt(e) {
			out = append(out, raw)
			continue
		}
		v, _ := e["valueString"].(string)
		j := -1
		for k, s := range stored {
			if !used[k] && s["valueString"] == v {
				j = k
				break
			}
		}
		if j < 0 {
			issues = append(issues, errs.Issue{Code: "business-rule", Path: fmt.Sprintf("Task.output[%d]", i),
				Message: fmt.Sprintf("the outputs typed %s|%s are the history of the batch jobs of this request, written by the server only; this one (%q) is not one of them", AttemptSystem, AttemptCode, truncate(v, 120))})
			continue
		}
		used[j] = true
		out = append(out, stored[j])
	}
	if len(issues) > 0 {
		return errs.E("batch.task", errs.Unprocessable, "the attempts recorded in Task.output cannot be added or changed", issues)
	}
	for j, s := range stored {
		if !used[j] {
			out = append(out, s)
		}
	}
	if err := doc.Set("output", out); err != nil {
		return errs.E("batch.task", errs.Internal, err)
	}
	return nil
}

func isAttempt(e any) bool {
	m, _ := e.(map[string]any)
	return m != nil && hasCoding(m["type"], AttemptSystem, AttemptCode)
}

func listOfMaps(v any) []map[string]any {
	list, _ := v.([]any)
	out := make([]map[string]any, 0, len(list))
	for _, e := range list {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
