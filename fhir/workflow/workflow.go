// Package workflow keeps FHIR R4 Tasks honest: their status follows the
// Task state machine, lastModified says when the Task last changed, and
// authoredOn says when it was created. It registers itself as a validator
// for every Task written through the FHIR server (REST, transactions and
// fhir.Server.Put), so a batch job, a vendor facade and a portal are held
// to the same rules.
//
// The state machine is the one drawn in the R4 Task page
// (http://hl7.org/fhir/R4/task.html#statemachine), with the allowances the
// page itself makes ("not all states will be supported by all workflows"):
// a performer that does not distinguish acknowledging, accepting and
// starting may go straight from requested or received to in-progress, and
// a paused Task may end without being resumed first. The whole table is
// Transitions; the README prints it.
package workflow

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// The Task.status codes of R4 (http://hl7.org/fhir/task-status).
const (
	Draft          = "draft"
	Requested      = "requested"
	Received       = "received"
	Accepted       = "accepted"
	Rejected       = "rejected"
	Ready          = "ready"
	Cancelled      = "cancelled"
	InProgress     = "in-progress"
	OnHold         = "on-hold"
	Failed         = "failed"
	Completed      = "completed"
	EnteredInError = "entered-in-error"
)

// Transitions is the state machine: for each status, the statuses a Task
// may move to from it. A status absent from a list cannot be reached from
// the key; entered-in-error can be reached from every status (a record
// made by mistake can always be voided) and leads nowhere.
var Transitions = map[string][]string{
	Draft:     {Requested, Ready, Cancelled},
	Requested: {Received, Accepted, Rejected, Ready, InProgress, Failed, Cancelled},
	Received:  {Accepted, Rejected, Ready, InProgress, Failed, Cancelled},
	Accepted:  {Ready, InProgress, Failed, Cancelled},
	Ready:     {InProgress, Failed, Cancelled},
	// completed and failed only once work started: a Task nobody worked on
	// is rejected or cancelled, not completed.
	InProgress: {OnHold, Completed, Failed, Cancelled},
	OnHold:     {InProgress, Completed, Failed, Cancelled},
	// The ends. A finished Task is not reopened: a new request is a new Task.
	Rejected:       nil,
	Cancelled:      nil,
	Failed:         nil,
	Completed:      nil,
	EnteredInError: nil,
}

// Statuses returns every Task.status code, in the order of the value set.
func Statuses() []string {
	return []string{Draft, Requested, Received, Accepted, Rejected, Ready, Cancelled, InProgress, OnHold, Failed, Completed, EnteredInError}
}

// Known reports whether s is a Task.status code.
func Known(s string) bool {
	_, ok := Transitions[s]
	return ok
}

// Terminal reports whether a Task in status s is finished: no status but
// entered-in-error can follow.
func Terminal(s string) bool { return Known(s) && len(Transitions[s]) == 0 }

// Next returns the statuses a Task in status from may move to, including
// entered-in-error unless from is entered-in-error.
func Next(from string) []string {
	out := slices.Clone(Transitions[from])
	if Known(from) && from != EnteredInError {
		out = append(out, EnteredInError)
	}
	return out
}

// Allowed reports whether a Task may go from status from to status to.
// Staying in the same status is always allowed.
func Allowed(from, to string) bool {
	if from == to {
		return Known(to)
	}
	return slices.Contains(Next(from), to)
}

// CheckTransition returns nil when a Task may go from status from to
// status to, and otherwise an Unprocessable error (422) whose issue says
// which statuses may follow from.
func CheckTransition(from, to string) error {
	if Allowed(from, to) {
		return nil
	}
	var msg string
	switch next := Next(from); {
	case !Known(to):
		msg = fmt.Sprintf("%q is not a Task status", to)
	case !Known(from):
		msg = fmt.Sprintf("the Task's current status %q is not a Task status; it cannot change to %s", from, to)
	case len(next) == 0:
		msg = fmt.Sprintf("the Task is %s, which is final; its status cannot change any more", from)
	default:
		msg = fmt.Sprintf("a Task cannot go from %s to %s; from %s it can only go to %s", from, to, from, strings.Join(next, ", "))
	}
	return errs.E("workflow.transition", errs.Unprocessable, "the status change is not allowed",
		errs.Issue{Code: "business-rule", Path: "Task.status", Message: msg})
}

// Options tune Register.
type Options struct {
	// Now is the clock for lastModified and authoredOn; time.Now when nil.
	Now func() time.Time
}

// Register adds the Task validator to fs. On every write of a Task it:
//
//   - refuses a status change the state machine does not allow (422);
//   - refuses a change of authoredOn, which records when the Task was
//     created (422), and sets it on a create that has none;
//   - sets lastModified to the time of the write.
//
// A Task that is a copy of another server's record (meta.source is an
// absolute URL outside this server's FHIR base, as the P2P batch writes
// what it ingests) is stored as the source wrote it: its statuses and
// dates are the source's business, and refusing them would lose data.
func Register(fs *fhir.Server, opts Options) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	base := strings.TrimRight(fs.BaseURL(), "/")
	fs.AddValidator("Task", func(tx *store.Tx, doc *store.Doc, prev *store.Version) error {
		return validate(doc, prev, base, opts.Now().UTC())
	})
}

// TimeFormat is how the server writes lastModified and authoredOn: a FHIR
// dateTime in UTC with milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

func validate(doc *store.Doc, prev *store.Version, base string, now time.Time) error {
	if Mirrored(doc.Map, base) {
		return nil
	}
	status, _ := doc.Map["status"].(string)
	if prev != nil {
		var was struct {
			Status     string `json:"status"`
			AuthoredOn string `json:"authoredOn"`
		}
		if err := json.Unmarshal(prev.JSON, &was); err != nil {
			return errs.E("workflow.validate", errs.Internal, err)
		}
		if err := CheckTransition(was.Status, status); err != nil {
			return err
		}
		before := was.AuthoredOn
		after, _ := doc.Map["authoredOn"].(string)
		switch {
		case before != "" && after == "":
			// A client that does not know the element keeps it.
			if err := doc.Set("authoredOn", before); err != nil {
				return errs.E("workflow.validate", errs.Internal, err)
			}
		case before != after && before != "":
			return errs.E("workflow.validate", errs.Unprocessable, "authoredOn cannot change",
				errs.Issue{Code: "business-rule", Path: "Task.authoredOn",
					Message: fmt.Sprintf("authoredOn records when the Task was created (%s) and cannot be changed to %s", before, after)})
		}
	} else if _, ok := doc.Map["authoredOn"]; !ok {
		if err := doc.Set("authoredOn", now.Format(TimeFormat)); err != nil {
			return errs.E("workflow.validate", errs.Internal, err)
		}
	}
	if err := doc.Set("lastModified", now.Format(TimeFormat)); err != nil {
		return errs.E("workflow.validate", errs.Internal, err)
	}
	return nil
}

// Mirrored reports whether a resource is a copy of another server's
// record: its meta.source is an absolute http(s) URL that is not under
// base, this server's FHIR base URL.
func Mirrored(m map[string]any, base string) bool {
	meta, _ := m["meta"].(map[string]any)
	src, _ := meta["source"].(string)
	if !strings.HasPrefix(src, "http://") && !strings.HasPrefix(src, "https://") {
		return false
	}
	return base == "" || !(src == base || strings.HasPrefix(src, base+"/"))
}
