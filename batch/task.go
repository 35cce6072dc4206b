package batch

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// moveTask sets the status of the job's Task, with businessStatus (and for
// a failure statusReason) in words, through the FHIR server so that the
// Task's validators run and its Subscription tells the member. A Task
// still requested or received is accepted first when the state machine
// does not allow the direct step.
func (r *Runner) moveTask(tx *store.Tx, rec *record, status, business, reason string, now time.Time) error {
	if rec.TaskID == "" {
		return nil
	}
	err := r.putTask(tx, rec.TaskID, status, business, reason, now)
	if err != nil && status == "in-progress" {
		if cur := r.taskStatus(tx, rec.TaskID); cur == "requested" || cur == "received" {
			if r.putTask(tx, rec.TaskID, "accepted", business, "", now) == nil {
				err = r.putTask(tx, rec.TaskID, status, business, reason, now)
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

func (r *Runner) putTask(tx *store.Tx, id, status, business, reason string, now time.Time) error {
	v, err := tx.Read("Task", id)
	if err != nil {
		return err
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		return errs.E("batch.task", errs.Internal, err)
	}
	doc := &store.Doc{Type: "Task", ID: id, Map: m, JSON: v.JSON}
	if m["status"] == status {
		bs, _ := m["businessStatus"].(map[string]any)
		if bs["text"] == business {
			return nil
		}
	}
	sets := []struct {
		key string
		val any
	}{
		{"status", status},
		{"businessStatus", map[string]any{"text": business}},
		{"lastModified", now.UTC().Format("2006-01-02T15:04:05.000Z07:00")},
	}
	if reason != "" {
		sets = append(sets, struct {
			key string
			val any
		}{"statusReason", map[string]any{"text": reason}})
	}
	for _, s := range sets {
		if err := doc.Set(s.key, s.val); err != nil {
			return errs.E("batch.task", errs.Internal, err)
		}
	}
	_, err = r.fhir.Put(tx, doc, v.VersionID)
	return err
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
