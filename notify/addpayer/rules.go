// Package addpayer holds the rules of the "add payer" Task a member portal
// creates when a member asks to bring their data over from another payer
// (P2P module guide, "Add payer request"), the emails about it, and the
// default Subscription that sends them.
//
// The Task is recognised by its code (CodeSystem|Code). Register checks its
// shape on every write, listing every problem in one OperationOutcome
// (422); the generic Task state machine and lastModified upkeep are
// fhir/workflow's.
package addpayer

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/workflow"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/notify"
)

// The codes of the add-payer Task.
const (
	// CodeSystem is the system of the Task code, the input types and the
	// identifier.
	CodeSystem = "http://payer-to-payer-exchange/CodeSystem/p2p-internal-codes"
	// Code is Task.code of an add-payer request.
	Code = "p2p-request-add-provider-id"

	InputFirstName = "requester-first-name"
	InputLastName  = "requester-last-name"
	InputPayerName = "new-payer-name"
	InputEmail     = "requester-email"
	InputPhone     = "requester-phone"
)

// inputs are the required inputs, in the order of the seed.
var inputs = []string{InputFirstName, InputLastName, InputPayerName, InputEmail, InputPhone}

// intents a member's request may have: the seed's original-order, or order.
var intents = map[string]bool{"original-order": true, "order": true}

// maxText bounds each input value: names, a payer name, an address.
const maxText = 200

// Is reports whether a decoded Task is an add-payer request.
func Is(m map[string]any) bool {
	return hasCoding(m["code"], CodeSystem, Code)
}

// Input returns the valueString of the input of type code, "" if absent.
func Input(m map[string]any, code string) string {
	for _, in := range list(m["input"]) {
		im, _ := in.(map[string]any)
		if hasCoding(im["type"], CodeSystem, code) {
			s, _ := im["valueString"].(string)
			return strings.TrimSpace(s)
		}
	}
	return ""
}

// Check returns every problem of an add-payer Task's shape, each as its
// own issue: identifier <Patient_ID>-<Organization_ID>-<date-time> (system
// CodeSystem), status, intent, requester a Patient reference, owner an
// Organization reference, and the five inputs, each once, with a valid
// requester-email and requester-phone.
func Check(m map[string]any) []errs.Issue {
	var issues []errs.Issue
	add := func(code, path, format string, args ...any) {
		issues = append(issues, errs.Issue{Code: code, Path: path, Message: fmt.Sprintf(format, args...)})
	}
	if s, _ := m["status"].(string); s == "" {
		add("required", "Task.status", "status is required (requested for a new request)")
	}
	switch intent, _ := m["intent"].(string); {
	case intent == "":
		add("required", "Task.intent", "intent is required: original-order")
	case !intents[intent]:
		add("value", "Task.intent", "intent must be original-order (or order) for an add-payer request, not %s", intent)
	}
	patient := reference(m, "requester", "Patient", &issues)
	org := reference(m, "owner", "Organization", &issues)
	checkIdentifier(m, patient, org, &issues)
	seen := map[string]int{}
	for i, in := range list(m["input"]) {
		im, _ := in.(map[string]any)
		path := fmt.Sprintf("Task.input[%d]", i)
		code := ""
		for _, want := range inputs {
			if hasCoding(im["type"], CodeSystem, want) {
				code = want
			}
		}
		if code == "" {
			continue // other inputs are the portal's business
		}
		seen[code]++
		if seen[code] > 1 {
			add("business-rule", path, "the input %s is given more than once", code)
			continue
		}
		v, ok := im["valueString"].(string)
		v = strings.TrimSpace(v)
		switch {
		case !ok:
			add("required", path+".valueString", "the input %s needs its value in valueString", code)
			continue
		case v == "":
			add("required", path+".valueString", "the input %s is empty", code)
			continue
		case len(v) > maxText:
			add("value", path+".valueString", "the input %s is longer than %d characters", code, maxText)
			continue
		case strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }):
			add("value", path+".valueString", "the input %s must be one line of text, without control characters", code)
			continue
		}
		switch code {
		case InputEmail:
			if notify.CheckAddress(v) != nil {
				add("value", path+".valueString", "requester-email %q is not a valid email address (like name@example.org)", v)
			}
		case InputPhone:
			if msg := checkPhone(v); msg != "" {
				add("value", path+".valueString", "requester-phone %q %s", v, msg)
			}
		}
	}
	for _, code := range inputs {
		if seen[code] == 0 {
			add("required", "Task.input", "the input %s is missing (type.coding %s|%s, valueString)", code, CodeSystem, code)
		}
	}
	return issues
}

// reference checks m[field] is a reference "Type/id" to want and returns
// the id ("" when it is not).
func reference(m map[string]any, field, want string, issues *[]errs.Issue) string {
	path := "Task." + field
	ref, _ := m[field].(map[string]any)
	if ref == nil {
		*issues = append(*issues, errs.Issue{Code: "required", Path: path,
			Message: fmt.Sprintf("%s is required: a reference to the %s, as {\"reference\": \"%s/<id>\"}", field, strings.ToLower(want), want)})
		return ""
	}
	r, _ := ref["reference"].(string)
	typ, id, ok := strings.Cut(r, "/")
	if !ok || typ != want || !idPattern.MatchString(id) {
		*issues = append(*issues, errs.Issue{Code: "value", Path: path + ".reference",
			Message: fmt.Sprintf("%s must reference a %s as %s/<id>, not %q", field, want, want, r)})
		return ""
	}
	if t, ok := ref["type"].(string); ok && t != want {
		*issues = append(*issues, errs.Issue{Code: "value", Path: path + ".type",
			Message: fmt.Sprintf("%s.type is %s but must be %s", field, t, want)})
	}
	return id
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

// checkIdentifier checks the identifier <Patient_ID>-<Organization_ID>-<date-time>.
func checkIdentifier(m map[string]any, patient, org string, issues *[]errs.Issue) {
	var value string
	found := -1
	for i, id := range list(m["identifier"]) {
		im, _ := id.(map[string]any)
		if im["system"] == CodeSystem {
			value, _ = im["value"].(string)
			found = i
			break
		}
	}
	if found < 0 {
		*issues = append(*issues, errs.Issue{Code: "required", Path: "Task.identifier",
			Message: fmt.Sprintf("an identifier with system %s and value <Patient_ID>-<Organization_ID>-<date-time> is required", CodeSystem)})
		return
	}
	path := fmt.Sprintf("Task.identifier[%d].value", found)
	if patient == "" || org == "" {
		// The references are reported already; the value cannot be checked
		// against them.
		if value == "" {
			*issues = append(*issues, errs.Issue{Code: "required", Path: path, Message: "the identifier has no value"})
		}
		return
	}
	prefix := patient + "-" + org + "-"
	rest, ok := strings.CutPrefix(value, prefix)
	if !ok {
		*issues = append(*issues, errs.Issue{Code: "value", Path: path,
			Message: fmt.Sprintf("the identifier %q must be <Patient_ID>-<Organization_ID>-<date-time>, starting with %q for this requester and owner", value, prefix)})
		return
	}
	if !dateTime(rest) {
		*issues = append(*issues, errs.Issue{Code: "value", Path: path,
			Message: fmt.Sprintf("the identifier %q must end with the date-time the request was made, such as 2024-05-09T20:36:18Z or 20240509203618, not %q", value, rest)})
	}
}

// dateTime accepts the creation date-time of an identifier: a FHIR
// dateTime with a time and zone (2024-05-09T20:36:18Z, with optional
// fraction or offset) or the compact 20240509203618.
func dateTime(s string) bool {
	if len(s) == 14 && strings.Trim(s, "0123456789") == "" {
		_, err := time.Parse("20060102150405", s)
		return err == nil
	}
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

// checkPhone returns what is wrong with a phone number, "" when it is
// fine: digits with the usual separators, 7 to 15 digits (E.164 allows 15).
func checkPhone(v string) string {
	digits := 0
	for i, r := range v {
		switch {
		case r >= '0' && r <= '9':
			digits++
		case r == '+' && i == 0:
		case strings.ContainsRune(" -().", r):
		default:
			return "must hold only digits, spaces and + - ( ) ."
		}
	}
	if digits < 7 || digits > 15 {
		return fmt.Sprintf("has %d digits; a phone number has 7 to 15", digits)
	}
	return ""
}

// Register adds the add-payer rules to fs as a Task validator. Besides the
// shape (Check), it enforces:
//
//   - a new request is draft or requested;
//   - status changes follow the Task state machine even for a copy of
//     another server's Task (fhir/workflow exempts those; an add-payer
//     request is always this server's);
//   - a member (a request confined to a Patient compartment) may only
//     submit a draft or cancel a request; accepting, rejecting, starting
//     and finishing are the payer's (403);
//   - rejected and failed carry the reason in words (statusReason.text or
//     businessStatus.text);
//   - the code and the requester of a request cannot change;
//   - for is the requester: set to it when absent, so that the request
//     is in the member's Patient compartment.
func Register(fs *fhir.Server) {
	fs.AddValidator("Task", validate)
}

func validate(tx *store.Tx, doc *store.Doc, prev *store.Version) error {
	const op = "addpayer.validate"
	var pm map[string]any
	if prev != nil {
		var err error
		if pm, err = decode(prev.JSON); err != nil {
			return errs.E(op, errs.Internal, err)
		}
	}
	now, was := Is(doc.Map), pm != nil && Is(pm)
	if !now && !was {
		return nil
	}
	if was && !now {
		return errs.E(op, errs.Unprocessable, "an add-payer request stays one",
			errs.Issue{Code: "business-rule", Path: "Task.code",
				Message: fmt.Sprintf("the code %s|%s of an add-payer request cannot be removed or changed", CodeSystem, Code)})
	}
	issues := Check(doc.Map)
	status, _ := doc.Map["status"].(string)
	member := ""
	if a := fhir.AccessFrom(tx.Context()); a != nil {
		member = a.Patient
	}
	if pm == nil {
		if status != "" && status != workflow.Draft && status != workflow.Requested {
			issues = append(issues, errs.Issue{Code: "business-rule", Path: "Task.status",
				Message: fmt.Sprintf("a new add-payer request is requested (or draft), not %s", status)})
		}
	} else {
		before, _ := pm["status"].(string)
		if status != before && status != "" {
			if err := workflow.CheckTransition(before, status); err != nil {
				_, is := errs.Public(err)
				issues = append(issues, is...)
			} else if member != "" && !memberMay(before, status) {
				return errs.E(op, errs.Permission, fmt.Sprintf(
					"a member may submit a draft request or cancel a request; moving it from %s to %s is for the payer's staff", before, status))
			}
			if (status == workflow.Rejected || status == workflow.Failed) && conceptText(doc.Map["statusReason"]) == "" && conceptText(doc.Map["businessStatus"]) == "" {
				issues = append(issues, errs.Issue{Code: "required", Path: "Task.statusReason",
					Message: fmt.Sprintf("a request that is %s must say why in words, in statusReason.text (or businessStatus.text)", status)})
			}
		}
		if a, b := refOf(pm["requester"]), refOf(doc.Map["requester"]); a != "" && a != b {
			issues = append(issues, errs.Issue{Code: "business-rule", Path: "Task.requester",
				Message: fmt.Sprintf("the requester of a request (%s) cannot change", a)})
		}
	}
	req := refOf(doc.Map["requester"])
	switch f := refOf(doc.Map["for"]); {
	case f == "" && doc.Map["for"] == nil && len(issues) == 0:
		// The request is for the member who made it: with for set, it
		// belongs to their Patient compartment, so their token can read and
		// cancel it.
		if err := doc.Set("for", map[string]any{"reference": req}); err != nil {
			return errs.E(op, errs.Internal, err)
		}
	case doc.Map["for"] != nil && f != req:
		issues = append(issues, errs.Issue{Code: "business-rule", Path: "Task.for",
			Message: fmt.Sprintf("for must be the member who asked (%s), not %q", req, f)})
	}
	if len(issues) > 0 {
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the add-payer request is not valid (%d problems)", len(issues)), issues)
	}
	return nil
}

// memberMay reports whether the member who made a request may move it
// from one status to another.
func memberMay(from, to string) bool {
	return (from == workflow.Draft && to == workflow.Requested) || to == workflow.Cancelled
}
