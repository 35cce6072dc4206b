package eligibility

import (
	"fmt"
	"sort"
	"strings"
)

// Task statuses a vendor status can lead to (FHIR Task.status codes).
const (
	TaskInProgress = "in-progress"
	TaskOnHold     = "on-hold"
	TaskCompleted  = "completed"
	TaskFailed     = "failed"
)

// StatusMapping is one row of the status table: how one vendor status is
// represented in FHIR. Rows with Outcome set end the check and write a
// CoverageEligibilityResponse; the others keep it waiting.
type StatusMapping struct {
	Vendor string
	// Status is the vendor's status word.
	Status string
	// Meaning is what the vendor documents it to mean.
	Meaning string
	// Task is the Task.status it leads to.
	Task string
	// Outcome is CoverageEligibilityResponse.outcome ("complete" or
	// "error"), empty while the check goes on.
	Outcome string
	// InForce is insurance.inforce: "true", "false", or "" (not stated).
	InForce string
	// Error is the error code written to CoverageEligibilityResponse.error
	// when Outcome is "error".
	Error *ErrorCode
	// Disposition is the sentence written to the response's disposition.
	Disposition string
}

// ErrorCode is an eligibility error as written in
// CoverageEligibilityResponse.error.code: a code of ErrorSystem, a display,
// and what the client should fix (a FHIRPath into the request's resources)
// or do.
type ErrorCode struct {
	Code    string
	Display string
	// Fix names the element to correct, e.g. "Patient.birthDate", or is
	// empty when nothing in the request is wrong.
	Fix string
	// Retry says that the same request may succeed later unchanged.
	Retry bool
}

// Code systems this package writes.
const (
	// ErrorSystem holds the error codes of ErrorCodes.
	ErrorSystem = "http://payer-to-payer-exchange/CodeSystem/eligibility-error"
	// TaskSystem holds the Task code and input/output types.
	TaskSystem = "http://payer-to-payer-exchange/CodeSystem/eligibility-task"
)

// The error codes. Each names what to fix, so a front desk can act on it.
var (
	ErrMemberID               = &ErrorCode{Code: "member-id", Display: "The payer did not recognise the member ID", Fix: "Coverage.subscriberId"}
	ErrMemberName             = &ErrorCode{Code: "member-name", Display: "The payer did not recognise the patient's name (check spelling, nicknames, name changes)", Fix: "Patient.name"}
	ErrMemberDOB              = &ErrorCode{Code: "member-dob", Display: "The payer did not recognise the patient's date of birth", Fix: "Patient.birthDate"}
	ErrMemberNotFound         = &ErrorCode{Code: "member-not-found", Display: "The payer found no member with these demographics and member ID", Fix: "Patient"}
	ErrProviderNPI            = &ErrorCode{Code: "provider-npi", Display: "The payer does not recognise the provider's NPI", Fix: "CoverageEligibilityRequest.provider"}
	ErrPayerUnavailable       = &ErrorCode{Code: "payer-unavailable", Display: "The payer has been unavailable; try again later", Retry: true}
	ErrPayerUnreachable       = &ErrorCode{Code: "payer-unreachable", Display: "The payer could not be reached through the eligibility vendor", Retry: true}
	ErrVendorCredentials      = &ErrorCode{Code: "vendor-credentials", Display: "The eligibility vendor refused this server's credentials; an administrator must renew them"}
	ErrDatasourceCredentials  = &ErrorCode{Code: "datasource-credentials", Display: "The payer portal refused the datasource connection's credentials; an administrator must update the connection"}
	ErrDatasourceDisconnected = &ErrorCode{Code: "datasource-disconnected", Display: "The payer-portal datasource connection is disconnected; an administrator must reconnect it"}
	ErrRequestRejected        = &ErrorCode{Code: "request-rejected", Display: "The eligibility vendor refused the request"}
	ErrMissingFields          = &ErrorCode{Code: "missing-fields", Display: "The payer requires fields the request does not have"}
	ErrUnmappedStatus         = &ErrorCode{Code: "unmapped-status", Display: "The vendor answered with a status this server does not know; see the server log"}
	ErrNoAnswer               = &ErrorCode{Code: "no-answer", Display: "The vendor gave no answer within the time allowed", Retry: true}
	ErrCancelled              = &ErrorCode{Code: "cancelled", Display: "The check was cancelled"}
	ErrInternal               = &ErrorCode{Code: "internal", Display: "The check failed inside this server; see the server log", Retry: true}
)

// ErrorCodes lists every error code, for the README and the tests.
func ErrorCodes() []*ErrorCode {
	return []*ErrorCode{ErrMemberID, ErrMemberName, ErrMemberDOB, ErrMemberNotFound, ErrProviderNPI,
		ErrPayerUnavailable, ErrPayerUnreachable, ErrVendorCredentials, ErrDatasourceCredentials,
		ErrDatasourceDisconnected, ErrRequestRejected, ErrMissingFields, ErrUnmappedStatus, ErrNoAnswer,
		ErrCancelled, ErrInternal}
}

// StatusTable is the one table of how vendor statuses map to FHIR: the
// rows of every connector, sorted by vendor then status. It refuses a row
// that contradicts itself (a final Task status without an outcome, an
// error outcome without an error code, a status given twice).
func StatusTable(conns ...Connector) ([]StatusMapping, error) {
	var rows []StatusMapping
	seen := map[string]bool{}
	for _, c := range conns {
		for _, m := range c.Statuses() {
			m.Vendor = c.Vendor()
			key := m.Vendor + "\x00" + m.Status
			if seen[key] {
				return nil, fmt.Errorf("eligibility: %s status %q is mapped twice", m.Vendor, m.Status)
			}
			seen[key] = true
			if err := m.check(); err != nil {
				return nil, err
			}
			rows = append(rows, m)
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Vendor < rows[j].Vendor })
	return rows, nil
}

func (m StatusMapping) check() error {
	final := m.Task == TaskCompleted || m.Task == TaskFailed
	switch {
	case m.Task != TaskInProgress && m.Task != TaskOnHold && !final:
		return fmt.Errorf("eligibility: %s status %q maps to Task status %q, not one a check can have", m.Vendor, m.Status, m.Task)
	case final != (m.Outcome != ""):
		return fmt.Errorf("eligibility: %s status %q: a final Task status needs an outcome and only it", m.Vendor, m.Status)
	case m.Outcome != "" && m.Outcome != "complete" && m.Outcome != "error":
		return fmt.Errorf("eligibility: %s status %q: outcome %q", m.Vendor, m.Status, m.Outcome)
	case (m.Outcome == "error") != (m.Error != nil):
		return fmt.Errorf("eligibility: %s status %q: an error outcome needs an error code and only it", m.Vendor, m.Status)
	case m.Outcome == "complete" && m.InForce == "":
		return fmt.Errorf("eligibility: %s status %q: a complete outcome must say whether coverage is in force", m.Vendor, m.Status)
	case m.Task == TaskCompleted && m.Outcome != "complete", m.Task == TaskFailed && m.Outcome != "error":
		return fmt.Errorf("eligibility: %s status %q: Task %s does not fit outcome %s", m.Vendor, m.Status, m.Task, m.Outcome)
	}
	return nil
}

// Markdown renders the table for the README.
func Markdown(rows []StatusMapping) string {
	var b strings.Builder
	b.WriteString("| vendor | vendor status | meaning | Task.status | outcome | insurance.inforce | error code (fix) |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- | --- |\n")
	for _, r := range rows {
		errCode := ""
		if r.Error != nil {
			errCode = "`" + r.Error.Code + "`"
			if r.Error.Fix != "" {
				errCode += " (" + r.Error.Fix + ")"
			}
			if r.Error.Retry {
				errCode += " retry later"
			}
		}
		outcome := r.Outcome
		if outcome == "" {
			outcome = "(none yet)"
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s | %s | %s |\n", r.Vendor, r.Status, r.Meaning, r.Task, outcome, r.InForce, errCode)
	}
	return b.String()
}
