package batch

import (
	"bytes"
	"encoding/json"
	"fmt"
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
	line := rec.attempt(now)
	err := r.putTask(tx, rec, ch, line, now)
	if err != nil && ch.status == "in-progress" {
		if cur := r.taskStatus(tx, rec.TaskID); cur == "requested" || cur == "received" {
			if r.putTask(tx, rec, taskChange{status: "accepted", business: ch.business}, "", now) == nil {
				err = r.putTask(tx, rec, ch, line, now)
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
func (r *Runner) putTask(tx *store.Tx, rec *record, ch taskChange, line string, now time.Time) error {
	id := rec.TaskID
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
		if out, changed := withAttempt(m["output"], rec.ID, line); changed {
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

// withAttempt returns Task.output with job id's line set to line: its
// entry replaced, or appended; changed is false when it is there already.
func withAttempt(output any, id int64, line string) ([]any, bool) {
	list, _ := output.([]any)
	out := make([]any, 0, len(list)+1)
	prefix := fmt.Sprintf("batch job %d (", id)
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
